"""Host-side batches for one task: seqio Task -> padded, batched numpy arrays.

Each process reads only its shard of the files (`seqio.ShardInfo`: file i goes to process
i mod count) and batches its slice of the global batch. Streams are deterministic given the
seed, so the position in a stream (batches consumed) is enough to resume it exactly. A data
error (no files, a corrupt record, a missing or malformed feature) stops the stream with an
`ImpError` naming the task, the file and the feature.
"""

import collections
import functools
import re
from collections.abc import Callable, Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from imp.errors import ImpError
from imp.partitioning.partitioner import Partitioner
from imp.tasks.registry import CHECK_MARK
from imp.tasks.spec import DETECTION, GENERATION, TaskSpec


def _select_and_pad(keep: tuple[str, ...], length: int):
    def pad(example):
        example = {k: v for k, v in example.items() if k in keep}
        if "text" in example:
            text = example["text"][:length]
            example = {**example, "text": tf.pad(text, [[0, length - tf.shape(text)[0]]])}
            example["text"] = tf.ensure_shape(example["text"], [length])
        return example

    return pad


def _labels_kept(spec: TaskSpec, with_labels: bool) -> tuple[str, ...]:
    if spec.objective == DETECTION:
        return ("object_labels", "object_boxes")
    if spec.objective == GENERATION:  # the sequence (training); the question, class (evaluation)
        return ("decoder_tokens", "prompt_length", "text", "label")
    if spec.objective == "bce":
        return ("labels", "label") if with_labels else ("labels",)
    return ("label",) if with_labels or spec.objective == "softmax" else ()


def task_name(spec: TaskSpec, train: bool) -> str:
    """The seqio Task behind a stream: the task's own in training, its data set's evaluation
    Task otherwise."""
    return spec.name if train else (spec.eval_task or spec.name)


def dataset(
    spec: TaskSpec,
    split: str,
    seed: int,
    *,
    train: bool,
    skip_batches: int = 0,
    batch_size: int | None = None,
    with_labels: bool = False,
    with_captions: bool = False,
    shard: tuple[int, int] | None = None,
    prefetch: bool = True,
) -> tf.data.Dataset:
    """Batches of this process's slice of the global batch: the task's inputs, its labels for
    classification tasks or when `with_labels`, and every caption when `with_captions`.

    Training streams shuffle and repeat forever and drop partial batches; evaluation streams
    read the split once, in order, keeping the last partial batch. Each host reads its share:
    files i mod count, or (evaluation with fewer files than hosts) examples i mod count.
    `shard` = (index, count) overrides the process index and count. A task that mixes
    others inside its batches (`TaskSpec.members`, `Experiment.mix_in_batch`) draws each
    training example from one of them, by their weights.
    """
    index, count = shard or (jax.process_index(), jax.process_count())
    global_batch = batch_size or spec.batch_size
    if global_batch % count:
        raise ImpError(
            f"task '{spec.name}': batch {global_batch} does not split over {count} hosts"
        )
    read = functools.partial(
        _examples,
        split=split,
        seed=seed,
        train=train,
        shard=(index, count),
        with_labels=with_labels,
        with_captions=with_captions,
    )
    if spec.members:  # tasks mixed inside each batch, each example drawn by the weights
        if not train:
            raise ImpError(f"task '{spec.name}' mixes tasks in training; evaluate its members")
        streams = [read(member) for member in spec.members]
        ds = tf.data.Dataset.sample_from_datasets(
            streams, weights=list(spec.member_weights), seed=seed
        )
    else:
        ds = read(spec)
    ds = ds.batch(global_batch // count, drop_remainder=train)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def _examples(
    spec: TaskSpec,
    split: str,
    seed: int,
    train: bool,
    shard: tuple[int, int],
    with_labels: bool,
    with_captions: bool,
) -> tf.data.Dataset:
    """This host's examples of one task, unbatched: its inputs and what its objective reads."""
    index, count = shard
    name = task_name(spec, train)
    task = seqio.get_mixture_or_task(name)
    _check_files(spec, task, split, count if train else 1)
    ds = task.get_dataset(
        sequence_length={"text": spec.text_length},
        split=split,
        shuffle=train,
        seed=seed if train else None,
        shard_info=seqio.ShardInfo(index, count) if count > 1 else None,
        num_epochs=None if train else 1,
        try_in_mem_cache=False,  # stream from files: memory stays flat whatever the data set
    )
    keep = (
        *spec.modalities,
        *_labels_kept(spec, with_labels),
        *(("captions",) if with_captions else ()),
    )
    return ds.map(_select_and_pad(keep, spec.text_length), num_parallel_calls=tf.data.AUTOTUNE)


def _check_files(spec: TaskSpec, task: seqio.Task, split: str, hosts: int) -> None:
    """The split's files exist, are not empty, and are at least one per host (in training;
    evaluation reads a split with fewer files than hosts example by example)."""
    if split not in task.splits:
        raise ImpError(f"task '{spec.name}': no split '{split}' (has {sorted(task.splits)})")
    if not isinstance(task.source, seqio.FileDataSource):
        return  # e.g. TFDS, which checks its own files
    files = task.source.list_shards(split)
    pattern = task.source._split_to_filepattern[split]  # noqa: SLF001 (for the message)
    if not files:
        raise ImpError(f"task '{spec.name}': no files match {pattern} (split '{split}')")
    if len(files) < hosts:
        raise ImpError(
            f"task '{spec.name}': {len(files)} files for split '{split}' cannot be shared by "
            f"{hosts} hosts; write at least {hosts} shards ({pattern})"
        )
    empty = [f for f in files if tf.io.gfile.stat(f).length == 0]
    if empty:
        raise ImpError(f"task '{spec.name}': empty file {empty[0]} (split '{split}')")


def batches(spec: TaskSpec, split: str, seed: int, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """`dataset(...)` as numpy dicts; data errors surface as `ImpError`s."""
    ds = dataset(spec, split, seed, **kwargs)
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            shard = kwargs.get("shard") or (jax.process_index(), jax.process_count())
            raise _explain(error, spec, split, task_name(spec, kwargs["train"]), shard) from None
        yield batch


def _explain(error: tf.errors.OpError, spec: TaskSpec, split: str, name: str, shard) -> ImpError:
    where = f"task '{spec.name}' (split '{split}')"
    message = error.message
    if CHECK_MARK in message:
        detail = re.search(re.escape(CHECK_MARK) + r"(.*?)\] \[(.*?)\]", message)
        if detail:
            return ImpError(f"{where}: {detail.group(1)} {detail.group(2)}")
    if isinstance(error, tf.errors.DataLossError):
        culprit = _find_corrupt_file(seqio.get_mixture_or_task(name), split, shard)
        return ImpError(f"{where}: corrupt record in {culprit or 'one of its files'}")
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return ImpError(f"{where}: cannot read an example: {first_line}")


def _find_corrupt_file(task: seqio.Task, split: str, shard: tuple[int, int]) -> str | None:
    """The first of this host's files whose records do not read back (run only on error)."""
    files = task.source.list_shards(split)[shard[0] :: shard[1]]
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.DataLossError:
            return path
    return None


def prefetch_to_device(
    iterator: Iterator[dict], put: Callable[[dict], dict], size: int = 2
) -> Iterator[dict]:
    """Keeps `size` batches already handed to `put` (e.g. `Partitioner.shard_batch`): device
    transfers are asynchronous, so the next batches copy while the current step runs."""
    queue = collections.deque()

    def fill(n):
        for batch in iterator:
            queue.append(put(batch))
            if len(queue) >= n:
                return

    fill(size)
    while queue:
        yield queue.popleft()
        fill(1)


class TrainStreams:
    """Each task's training batches, opened on first use at the position a checkpoint recorded
    (batches consumed per task) and kept two batches ahead on the devices."""

    def __init__(
        self, specs: dict[str, TaskSpec], seed: int, positions: dict, partitioner: Partitioner
    ):
        self.specs, self.seed, self.partitioner = specs, seed, partitioner
        self.positions = dict.fromkeys(specs, 0) | positions
        self.iterators = {}

    def next(self, name: str) -> dict:
        if name not in self.iterators:
            self.iterators[name] = prefetch_to_device(
                batches(
                    self.specs[name],
                    "train",
                    self.seed,
                    train=True,
                    skip_batches=self.positions[name],
                ),
                self.partitioner.shard_batch,
            )
        self.positions[name] += 1
        return next(self.iterators[name])

    def abstract(self, name: str) -> dict:
        """The global batch of a task as `jax.ShapeDtypeStruct`s (for precompiling)."""
        element = dataset(self.specs[name], "train", self.seed, train=True).element_spec
        sharding = self.partitioner.batch_sharding()
        return {
            k: jax.ShapeDtypeStruct(
                (v.shape[0] * jax.process_count(), *v.shape[1:]),
                v.dtype.as_numpy_dtype,
                sharding=sharding,
            )
            for k, v in element.items()
        }
