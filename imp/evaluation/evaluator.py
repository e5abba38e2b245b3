"""The evaluations of `imp eval` and of training (seed 004 Table 1 and §4; seed 000's linear
probes).

Per data set of the run's mixture, on its evaluation Task (central crops; several clips
and spatial crops averaged when `Dataset.eval_clips` x `eval_crops` > 1; every caption):

* `classification`: top-1 / top-5 of each trained classifier head;
* `zero_shot`: top-1 / top-5 against class-name prompts embedded by the text tower, with
  prompt ensembling (the normalised prompt embeddings of a class, averaged);
* `retrieval`: text-to-X and X-to-text for every non-text input X, R@1/5/10 and median rank,
  over the distinct caption texts, a text being right for every item that has it;
* `linear_probe`: a ridge-regression classifier on frozen pooled features of training
  examples (regularisation picked on a held-out part), top-1 on the evaluation split;
* `detection`: COCO's box AP, AP50 and AP75 (pycocotools) of a detection task's last decoder
  layer (UniT, seed 002), with a figure of predicted and true boxes on a few held-out images
  when a folder for figures is given. A decoded classifier (UniT's VQA) reports top-1 under
  `classification`;
* `generation`: a generation task's answers, decoded as seed 003 §5.8 does (beam search for
  captions, greedy otherwise; `imp.generation`): exact match against the class name, or
  BLEU-4 and CIDEr (pycocoevalcap) against the captions.

Every metric comes with its chance level. Each process encodes its share of the examples on
the experiment's mesh (inputs sharded over the batch axes, as in training); the encoded
examples of all processes are gathered, in an order that does not depend on how the split was
shared, before any metric is computed, and a metric refuses scores that are not finite. (The
linear probe fits up to 2000 training examples, the first of each process's share: for larger
training splits, which ones depends on the number of processes.)
"""

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
import seqio
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from imp import generation
from imp.data import feeding
from imp.errors import ImpError, did_you_mean
from imp.evaluation import figures, metrics
from imp.tasks.spec import CLASSIFICATION, DETECTION, GENERATION, TaskSpec
from imp.training.graph_table import signature

if TYPE_CHECKING:
    from imp.experiment import Experiment

EVALUATIONS = (
    "classification",
    "zero_shot",
    "retrieval",
    "linear_probe",
    "detection",
    "generation",
)
PROBE_EXAMPLES = 2000  # training examples the linear probe fits
_OUTPUTS = ("embedding/", "pooled/", "logits", "class_logits", "boxes")
_OBJECTS = ("object_labels", "object_boxes")
FIGURE_IMAGES = 8  # held-out images in a detection task's figure


def check_evaluations(names) -> None:
    for name in names:
        if name not in EVALUATIONS:
            hint = did_you_mean(name, EVALUATIONS) or f"; choose from {EVALUATIONS}"
            raise ImpError(f"unknown evaluation '{name}'{hint}")


def tasks_to_evaluate(tasks) -> dict[str, TaskSpec]:
    """Resolution variants of a task evaluate identically (on their data set's evaluation
    Task); the first of each, base variants first. Tasks mixed inside a batch evaluate each
    as itself."""
    kept = {}
    tasks = [member for s in tasks for member in (s.members or (s,))]
    for s in sorted(tasks, key=lambda s: s.variant != "base"):
        key = (s.eval_task or s.name, s.objective, s.modalities, s.prompt, s.text_source)
        kept.setdefault(key, s)
    return {s.name: s for s in kept.values()}


def _sources(spec: TaskSpec) -> list[str]:
    """The non-text inputs a contrastive task embeds (classifiers give logits instead)."""
    if spec.objective in (*CLASSIFICATION, GENERATION):
        return []
    return [m for m in spec.modalities if m != "text"]


def metric_names(spec: TaskSpec, evaluations) -> list[str]:
    """The metrics `evaluate_task` reports for `spec` (with labelled evaluation data)."""
    check_evaluations(evaluations)
    ks = [k for k in (1, 5) if k <= spec.num_classes]
    names = []
    if "classification" in evaluations and spec.objective in CLASSIFICATION:
        names += [f"top{k}" for k in ks]
    if "zero_shot" in evaluations and spec.class_prompts and spec.class_names:
        names += [f"zero_shot_top{k}/{m}" for m in _sources(spec) for k in ks]
    if "retrieval" in evaluations and spec.has_captions:
        for m in _sources(spec):
            for direction in (f"text_to_{m}", f"{m}_to_text"):
                names += [
                    f"retrieval/{direction}/{n}" for n in ("R@1", "R@5", "R@10", "median_rank")
                ]
    probe = next((m for m in spec.modalities if m != "text"), None)
    linear = spec.class_names and spec.objective != "bce" and not spec.decoded and probe
    if "linear_probe" in evaluations and linear:
        names.append(f"linear_probe_top1/{probe}")
    if "detection" in evaluations and spec.objective == DETECTION:
        names += ["AP", "AP50", "AP75"]
    if "generation" in evaluations and spec.objective == GENERATION:
        names += ["BLEU-4", "CIDEr"] if spec.text_source == "captions" else ["exact_match"]
    return names


def input_shapes(spec: TaskSpec) -> dict[str, list[int]]:
    """Per-example shapes of the task's evaluation inputs (views first when several are
    averaged): the resolution and view count the metrics were taken at."""
    views = [spec.eval_views] if spec.eval_views > 1 else []
    return {
        m: (views if m != "text" else []) + list(shape)
        for m, shape in spec.input_shapes(train=False).items()
    }


class Encoder:
    """The experiment's model applied to this process's rows on the mesh: inputs sharded over
    the batch axes like training batches, one compiled function per input signature. Every
    process calls it the same number of times (it is a collective)."""

    def __init__(self, experiment: "Experiment", params):
        self.model, self.params = experiment.model, params
        self.partitioner = experiment.partitioner
        self.param_shardings = experiment.shardings["params"]
        self.batch_size = experiment.eval_batch_size  # rows of one call, all processes
        self.rows = self.batch_size // jax.process_count()  # this process's
        self.compiled = experiment.compiled_forwards

    def __call__(
        self,
        inputs: dict[str, np.ndarray],
        head: str | None = None,
        decoded: bool = False,
        strategy: generation.Strategy | None = None,
    ) -> dict:
        """Embeddings, pooled features and logits of this process's `inputs` rows; with
        `decoded`, the query decoder's outputs for `head` (detection: its last layer's); with
        a decoding `strategy`, the text decoder's sequences (`generate`)."""
        n = len(next(iter(inputs.values())))
        calls = _max_over_processes(-(-n // self.rows))
        outs = []
        for c in range(calls):
            start = c * self.rows
            chunk = {k: _pad(v[start : start + self.rows], self.rows) for k, v in inputs.items()}
            out = self._apply(chunk, head, decoded, strategy)
            outs.append({k: v[: max(0, min(self.rows, n - start))] for k, v in out.items()})
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} if outs else {}

    def generate(self, inputs: dict[str, np.ndarray], strategy: generation.Strategy) -> np.ndarray:
        """The text decoder's sequences `[rows, decoder_length]` for this process's `inputs`
        rows, which hold the prompts (`prompt_ids`, `prompt_lengths`)."""
        return self(inputs, strategy=strategy)["generated"]

    def _apply(
        self,
        chunk: dict[str, np.ndarray],
        head: str | None,
        decoded: bool,
        strategy: generation.Strategy | None = None,
    ) -> dict[str, np.ndarray]:
        batch = self.partitioner.shard_batch(chunk)
        key = (head, decoded, strategy, signature(batch))
        if key not in self.compiled:
            method = type(self.model).decode if decoded else type(self.model).__call__

            def forward(params, inputs):
                if strategy is not None:
                    prompts = inputs.pop("prompt_ids"), inputs.pop("prompt_lengths")
                    text = generation.generate(self.model, params, inputs, *prompts, strategy)
                    return {"generated": text}
                out = self.model.apply({"params": params}, inputs, head=head, method=method)
                last = {k: out[k][-1] for k in ("class_logits", "boxes") if k in out}
                return {k: v for k, v in (out | last).items() if k.startswith(_OUTPUTS)}

            shardings = jax.tree.map(lambda x: x.sharding, batch)
            self.compiled[key] = self.partitioner.compile(
                forward,
                (self.params, batch),
                (self.param_shardings, shardings),
                self.partitioner.batch_sharding(),
            )
        out = self.compiled[key](self.params, batch)
        local = multihost_utils.global_array_to_host_local_array(
            out, self.partitioner.mesh, PartitionSpec(("expert", "data"))
        )
        return jax.tree.map(np.asarray, local)


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def _max_over_processes(value: int) -> int:
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def _gather(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's rows, in process order (the same result on every process)."""
    if jax.process_count() == 1 or not local:
        return local
    counts = multihost_utils.process_allgather(np.int32(len(next(iter(local.values())))))
    size = int(counts.max())
    gathered = multihost_utils.process_allgather({k: _pad(v, size) for k, v in local.items()})
    return {
        k: np.concatenate([g[p, : counts[p]] for p in range(len(counts))])
        for k, g in gathered.items()
    }


def class_embeddings(encoder: Encoder, spec: TaskSpec) -> dict[str, np.ndarray]:
    """Per non-text input m of the task, `[classes, embed_dim]`: each class's prompts embedded
    for comparison with m, averaged, re-normalised (CLIP's prompt ensembling). Each process
    embeds its share of the prompts."""
    vocabulary = seqio.get_mixture_or_task(spec.name).output_features["text"].vocabulary
    prompts = [p for per_class in spec.class_prompts for p in per_class]
    ids = np.zeros((len(prompts), spec.text_length), np.int32)
    for row, prompt in enumerate(prompts):
        tokens = vocabulary.encode(prompt)[: spec.text_length]
        ids[row, : len(tokens)] = tokens
    share = -(-len(ids) // jax.process_count())
    mine = ids[jax.process_index() * share : (jax.process_index() + 1) * share]
    embedded = _gather(encoder({"text": mine}))
    prototypes = {}
    for m in _sources(spec):
        text = embedded[f"embedding/text/{m}"]
        per_class = text.reshape(len(spec.class_prompts), -1, text.shape[-1]).mean(1)
        prototypes[m] = metrics.normalise(per_class)
    return prototypes


def encode_split(
    encoder: Encoder, spec: TaskSpec, split: str, max_examples: int | None = None
) -> dict[str, np.ndarray]:
    """Embeddings (`embedding/m/target`), pooled features (`pooled/m`) and classifier logits of
    every example of `split` (of every process), averaged over clips; plus `label`, and
    captions embedded for comparison with each non-text input m (`caption_embedding/m`
    `[N, K, D]`) with their tokens `caption_tokens`."""
    options = dict(
        batch_size=encoder.batch_size,
        with_labels=bool(spec.class_names),
        with_captions=spec.reads_captions,
    )
    stream = feeding.batches(spec, split, 0, train=False, **options)
    limit = None if max_examples is None else -(-max_examples // jax.process_count())
    empty = None
    collected: dict[str, list] = {}
    seen = 0
    while True:
        batch = next(stream, None) if limit is None or seen < limit else None
        if _max_over_processes(int(batch is not None)) == 0:
            break
        if batch is None:  # this process is done; it still joins the others' forward calls
            if empty is None:
                element = feeding.dataset(spec, split, 0, train=False, **options).element_spec
                empty = {
                    k: np.zeros((0, *v.shape[1:]), v.dtype.as_numpy_dtype)
                    for k, v in element.items()
                }
            batch = empty
        seen += len(next(iter(batch.values())))
        for key, value in _encode_batch(encoder, spec, batch).items():
            collected.setdefault(key, []).append(value)
    data = _gather({k: np.concatenate(v) for k, v in collected.items()})
    if not data:
        return data
    # A canonical order, whatever share of the split each process read: a split read whole
    # gives the same results on any number of processes (the linear probe's held-out part,
    # say). With `max_examples` each process reads only the start of its share, so which
    # examples are kept can depend on how the split was shared.
    order = np.argsort(data.pop("example_key"), kind="stable")
    return {k: v[order][:max_examples] for k, v in data.items()}


def _example_keys(batch: dict, modalities) -> np.ndarray:
    """`[batch]` int32 checksums of each example's inputs, captions and label (identical
    examples may share one: their order does not matter)."""
    keys = [k for k in (*modalities, "captions", "label") if k in batch]
    n = len(next(iter(batch.values())))
    sums = [
        zlib.crc32(b"".join(np.ascontiguousarray(batch[k][i]).tobytes() for k in keys))
        for i in range(n)
    ]
    return np.asarray(sums, np.uint32).view(np.int32)


def _encode_batch(encoder: Encoder, spec: TaskSpec, batch: dict) -> dict:
    out = {k: batch[k] for k in ("label", "labels", *_OBJECTS) if k in batch}
    out["example_key"] = _example_keys(batch, spec.modalities)
    # A decoded task reads all its inputs at once (a question with its image).
    inputs = {m: batch[m] for m in spec.modalities if m != "text" or spec.decoded}
    n = len(next(iter(batch.values())))
    views = spec.eval_views  # [batch, views, ...] inputs (every non-text one) when > 1
    flat = {k: v.reshape(n * views, *v.shape[2:]) if views > 1 else v for k, v in inputs.items()}
    for key, value in encoder(flat, spec.output_head, spec.decoded).items():
        value = value.reshape(n, views, *value.shape[1:]).mean(1)
        out[key] = metrics.normalise(value) if key.startswith("embedding/") else value
    if spec.objective == GENERATION:
        prompt_ids, lengths = generation.prompts(spec, batch.get("text"), n)
        rows = {**flat, "prompt_ids": prompt_ids, "prompt_lengths": lengths}
        out["generated"] = encoder.generate(rows, generation.Strategy.for_task(spec))
        out["prompt_length"] = lengths
    if "captions" in batch and spec.objective == GENERATION:
        out["caption_tokens"] = batch["captions"]
    elif "captions" in batch:
        captions = batch["captions"]  # [batch, K, L]; the batch may be empty
        _, k, length = captions.shape
        embedded = encoder({"text": captions.reshape(n * k, length)})
        for m in _sources(spec):
            text = embedded[f"embedding/text/{m}"]
            out[f"caption_embedding/{m}"] = text.reshape(n, k, text.shape[-1])
        out["caption_tokens"] = captions
    return out


def evaluate(
    experiment: "Experiment", params, evaluations=EVALUATIONS, figure_dir: Path | None = None
) -> dict[str, dict]:
    """`{task: {metric: {value, chance}}}` for every data set of the experiment; with
    `figure_dir`, each detection task's figure goes there (`detections_<task>.png`)."""
    check_evaluations(evaluations)
    encoder = Encoder(experiment, params)
    results = {}
    for name, spec in tasks_to_evaluate(experiment.tasks).items():
        results[name] = evaluate_task(encoder, spec, evaluations)
        if figure_dir is not None and "detection" in evaluations and spec.objective == DETECTION:
            _detection_figure(encoder, spec, figure_dir / f"detections_{name}.png")
    return results


def _detection_figure(encoder: Encoder, spec: TaskSpec, path: Path) -> None:
    """Predicted and true boxes on the first held-out images (collective; the first process
    draws its own rows)."""
    stream = feeding.batches(
        spec, spec.eval_split, 0, train=False, batch_size=encoder.batch_size, with_labels=True
    )
    batch = next(stream)
    rows = {k: v[:FIGURE_IMAGES] for k, v in batch.items()}
    out = encoder({"vision": rows["vision"]}, spec.head, decoded=True)
    if jax.process_index() == 0:
        figures.detections(
            rows["vision"][:, 0],
            out["class_logits"],
            out["boxes"],
            rows["object_labels"],
            rows["object_boxes"],
            spec.class_names,
            path,
        )


def evaluate_task(encoder: Encoder, spec: TaskSpec, evaluations=EVALUATIONS) -> dict[str, dict]:
    """`{metric: {"value", "chance"}}` for one task on its data set's evaluation split."""
    data = encode_split(encoder, spec, spec.eval_split)
    if not data:
        raise ImpError(f"task '{spec.name}': its evaluation split '{spec.eval_split}' is empty")
    try:
        return _metrics(encoder, spec, data, evaluations)
    except ImpError as error:  # e.g. scores that are not finite: name the task
        raise ImpError(f"task '{spec.name}': {error.message}") from None


def _metrics(encoder: Encoder, spec: TaskSpec, data: dict, evaluations) -> dict[str, dict]:
    results = {}
    labelled = "label" in data and spec.class_names and np.all(data["label"] >= 0)
    num_classes = spec.num_classes
    if "classification" in evaluations and "logits" in data and labelled:
        for name, value in metrics.topk_accuracy(data["logits"], data["label"]).items():
            results[name] = {
                "value": value,
                "chance": min(int(name[3:]), num_classes) / num_classes,
            }
    sources = [m for m in _sources(spec) if f"embedding/{m}/text" in data]
    if "zero_shot" in evaluations and spec.class_prompts and labelled and sources:
        prototypes = class_embeddings(encoder, spec)
        for m in sources:
            scores = data[f"embedding/{m}/text"] @ prototypes[m].T
            for name, value in metrics.topk_accuracy(scores, data["label"]).items():
                chance = min(int(name[3:]), num_classes) / num_classes
                results[f"zero_shot_{name}/{m}"] = {"value": value, "chance": chance}
    if "retrieval" in evaluations and "caption_tokens" in data and sources:
        results.update(_retrieval(data, sources))
    if "linear_probe" in evaluations and labelled and spec.objective != "bce":
        results.update(_probe(encoder, spec, data))
    if "detection" in evaluations and spec.objective == DETECTION:
        found = metrics.detection_ap(
            data["class_logits"],
            data["boxes"],
            data["object_labels"],
            data["object_boxes"],
            num_classes,
        )
        # AP has no chance level to speak of: a box must land on an object.
        results.update({name: {"value": value, "chance": None} for name, value in found.items()})
    if "generation" in evaluations and spec.objective == GENERATION:
        results.update(_generation(spec, data))
    return results


def _generation(spec: TaskSpec, data: dict) -> dict[str, dict]:
    """Exact match of class names and answers (chance: one class in `num_classes`), or
    caption scores (no chance level)."""
    vocab = generation.vocabulary(spec)
    answers = generation.texts(vocab, data["generated"], data["prompt_length"])
    if spec.text_source == "captions":
        references = generation.references(spec, vocab, {"captions": data["caption_tokens"]})
        found = metrics.caption_scores(answers, references)
        return {name: {"value": value, "chance": None} for name, value in found.items()}
    references = generation.references(spec, vocab, data)
    return {
        "exact_match": {
            "value": metrics.exact_match(answers, references),
            "chance": 1.0 / spec.num_classes,
        }
    }


def _retrieval(data: dict, sources: list[str]) -> dict[str, dict]:
    texts, text_to_item = metrics.distinct_captions(data["caption_tokens"])
    out = {}
    for m in sources:
        embedded = data[f"caption_embedding/{m}"]
        captions = embedded.reshape(-1, embedded.shape[-1])[texts]
        items = data[f"embedding/{m}/text"]
        for direction, (queries, gallery, positive) in {
            f"text_to_{m}": (captions, items, text_to_item),
            f"{m}_to_text": (items, captions, text_to_item.T),
        }.items():
            for name, value in metrics.retrieval(queries, gallery, positive).items():
                if name.startswith("R@"):
                    chance = metrics.retrieval_chance(positive, int(name[2:]))
                else:  # median rank of a random ranking
                    chance = (positive.shape[1] + 1) / 2
                out[f"retrieval/{direction}/{name}"] = {"value": value, "chance": chance}
    return out


def _probe(encoder: Encoder, spec: TaskSpec, data: dict) -> dict:
    source = next((m for m in spec.modalities if m != "text" and f"pooled/{m}" in data), None)
    if source is None:
        return {}
    train = encode_split(encoder, spec, "train", max_examples=PROBE_EXAMPLES)
    result = metrics.linear_probe(
        train[f"pooled/{source}"],
        train["label"],
        data[f"pooled/{source}"],
        data["label"],
        spec.num_classes,
    )
    return {
        f"linear_probe_top1/{source}": {
            "value": result["top1"],
            "chance": 1.0 / spec.num_classes,
            "regularisation": result["regularisation"],
        }
    }
