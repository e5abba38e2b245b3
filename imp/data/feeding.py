"""Host-side batches for one task: seqio Task -> padded, batched numpy arrays.

Each process reads only its shard of the files (`seqio.ShardInfo`) and batches its slice of
the global batch. Streams are deterministic given the seed, so the position in a stream
(batches consumed) is enough to resume it exactly.
"""

from collections.abc import Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from imp.tasks.registry import TaskSpec


def _select_and_pad(keep: tuple[str, ...], length: int):
    def pad(example):
        example = {k: v for k, v in example.items() if k in keep}
        if "text" in example:
            text = example["text"][:length]
            example = {**example, "text": tf.pad(text, [[0, length - tf.shape(text)[0]]])}
            example["text"] = tf.ensure_shape(example["text"], [length])
        return example

    return pad


def dataset(
    spec: TaskSpec,
    split: str,
    seed: int,
    *,
    train: bool,
    skip_batches: int = 0,
    batch_size: int | None = None,
    with_labels: bool = False,
) -> tf.data.Dataset:
    """Batches of this process's slice of the global batch: the task's modalities, and its
    labels for softmax tasks or when `with_labels` (evaluation).

    Training streams shuffle and repeat forever and drop partial batches; evaluation streams
    read the split once, in order, keeping the last partial batch.
    """
    global_batch = batch_size or spec.batch_size
    if global_batch % jax.process_count():
        raise ValueError(f"batch {global_batch} of task {spec.name} does not split over processes")
    task = seqio.get_mixture_or_task(spec.name)
    ds = task.get_dataset(
        sequence_length={"text": spec.text_length},
        split=split,
        shuffle=train,
        seed=seed if train else None,
        shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
        num_epochs=None if train else 1,
    )
    keep = (*spec.modalities, *(("label",) if with_labels or spec.objective == "softmax" else ()))
    ds = ds.map(_select_and_pad(keep, spec.text_length), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(global_batch // jax.process_count(), drop_remainder=train)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def batches(spec: TaskSpec, split: str, seed: int, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """`dataset(...)` as numpy dicts."""
    return dataset(spec, split, seed, **kwargs).as_numpy_iterator()
