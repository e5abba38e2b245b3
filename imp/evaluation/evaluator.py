"""The evaluations of `imp eval` (seed 004 Table 1 and §4; seed 000's linear probes).

Per data set of the run's mixture, on its evaluation Task (central crops; several clips
averaged when `eval_clips` > 1; every caption):

* `classification`: top-1 / top-5 of each trained classifier head;
* `zero_shot`: top-1 / top-5 against class-name prompts embedded by the text tower, with
  prompt ensembling (the normalised prompt embeddings of a class, averaged);
* `retrieval`: text-to-X and X-to-text for every non-text input X, R@1/5/10 and median rank,
  over the distinct caption texts, a text being right for every item that has it;
* `linear_probe`: a ridge-regression classifier on frozen pooled features of training
  examples (regularisation picked on a held-out part), top-1 on the evaluation split.

Every metric comes with its chance level.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from imp.data import feeding
from imp.evaluation import metrics
from imp.modeling.model import ImpModel
from imp.tasks.registry import CLASSIFICATION, TaskSpec

EVALUATIONS = ("classification", "zero_shot", "retrieval", "linear_probe")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model: ImpModel, params, inputs: dict, head: str | None):
    return model.apply({"params": params}, inputs, head=head)


def class_embeddings(model: ImpModel, params, spec: TaskSpec) -> np.ndarray:
    """`[classes, embed_dim]`: each class's prompts embedded, averaged, re-normalised (CLIP's
    prompt ensembling)."""
    vocabulary = seqio.get_mixture_or_task(spec.name).output_features["text"].vocabulary
    prompts = [p for per_class in spec.class_prompts for p in per_class]
    ids = np.zeros((len(prompts), spec.text_length), np.int32)
    for row, prompt in enumerate(prompts):
        tokens = vocabulary.encode(prompt)[: spec.text_length]
        ids[row, : len(tokens)] = tokens
    text = _forward(model, params, {"text": ids}, None, 64)["embedding/text"]
    per_class = text.reshape(len(spec.class_prompts), -1, text.shape[-1]).mean(1)
    return metrics.normalise(per_class)


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def _forward(model, params, inputs: dict, head, batch_size: int) -> dict[str, np.ndarray]:
    """The model on `inputs` in fixed-size chunks (one compiled shape), outputs as numpy."""
    n = len(next(iter(inputs.values())))
    outs = []
    for start in range(0, n, batch_size):
        chunk = {k: _pad(v[start : start + batch_size], batch_size) for k, v in inputs.items()}
        out = _apply(model, params, {k: jnp.asarray(v) for k, v in chunk.items()}, head)
        rows = min(batch_size, n - start)
        outs.append(
            {k: np.asarray(v)[:rows] for k, v in out.items() if v.ndim and v.shape[0] == batch_size}
        )
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def encode_split(
    model: ImpModel,
    params,
    spec: TaskSpec,
    split: str,
    batch_size: int = 64,
    max_examples: int | None = None,
) -> dict[str, np.ndarray]:
    """Embeddings (`embedding/m`), pooled features (`pooled/m`) and classifier logits of every
    example of `split`, averaged over clips; plus `label`, and `captions` embedded
    (`caption_embedding` `[N, K, D]` with `caption_valid` `[N, K]`)."""
    collected: dict[str, list] = {}
    seen = 0
    for batch in feeding.batches(
        spec,
        split,
        0,
        train=False,
        batch_size=batch_size,
        with_labels=bool(spec.class_names),
        with_captions="text" in spec.modalities,
    ):
        if max_examples is not None and seen >= max_examples:
            break
        seen += len(next(iter(batch.values())))
        for key, value in _encode_batch(model, params, spec, batch, batch_size).items():
            collected.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in collected.items()}


def _encode_batch(model, params, spec: TaskSpec, batch: dict, batch_size: int) -> dict:
    out = {k: batch[k] for k in ("label", "labels") if k in batch}
    inputs = {m: batch[m] for m in spec.modalities if m != "text"}
    n = len(next(iter(batch.values())))
    clips = 1
    if "vision" in inputs and inputs["vision"].ndim == 6:  # [batch, clips, T, H, W, 3]
        clips = inputs["vision"].shape[1]
    flat = {k: v.reshape(n * clips, *v.shape[2:]) if clips > 1 else v for k, v in inputs.items()}
    head = spec.head if spec.objective in CLASSIFICATION else None
    results = _forward(model, params, flat, head, batch_size)
    for key, value in results.items():
        if key.startswith(("embedding/", "pooled/")) or key == "logits":
            value = value.reshape(n, clips, *value.shape[1:]).mean(1)
            out[key] = metrics.normalise(value) if key.startswith("embedding/") else value
    if "captions" in batch:
        captions = batch["captions"]  # [batch, K, L]
        k = captions.shape[1]
        embedded = _forward(model, params, {"text": captions.reshape(n * k, -1)}, None, batch_size)[
            "embedding/text"
        ]
        out["caption_embedding"] = embedded.reshape(n, k, -1)
        out["caption_tokens"] = captions
    return out


def input_shapes(spec: TaskSpec) -> dict[str, list[int]]:
    """Per-example shapes of the model inputs of the task's evaluation split (clips first
    when several are averaged): the resolution and clip count the metrics were taken at."""
    batch = next(feeding.batches(spec, spec.eval_split, 0, train=False, batch_size=1))
    return {m: list(batch[m].shape[1:]) for m in spec.modalities if m in batch}


def evaluate_task(
    model: ImpModel,
    params,
    spec: TaskSpec,
    evaluations=EVALUATIONS,
    batch_size: int = 64,
    probe_examples: int = 2000,
) -> dict[str, dict]:
    """`{metric: {"value", "chance"}}` for one task on its data set's evaluation split."""
    data = encode_split(model, params, spec, spec.eval_split, batch_size)
    results = {}
    labelled = "label" in data and spec.class_names and np.all(data["label"] >= 0)
    num_classes = spec.num_classes
    if "classification" in evaluations and "logits" in data and labelled:
        for name, value in metrics.topk_accuracy(data["logits"], data["label"]).items():
            results[name] = {
                "value": value,
                "chance": min(int(name[3:]), num_classes) / num_classes,
            }
    sources = [m for m in spec.modalities if m != "text" and f"embedding/{m}" in data]
    if "zero_shot" in evaluations and spec.class_prompts and labelled and sources:
        prototypes = class_embeddings(model, params, spec)
        for m in sources:
            scores = data[f"embedding/{m}"] @ prototypes.T
            for name, value in metrics.topk_accuracy(scores, data["label"]).items():
                chance = min(int(name[3:]), num_classes) / num_classes
                results[f"zero_shot_{name}/{m}"] = {"value": value, "chance": chance}
    if "retrieval" in evaluations and "caption_embedding" in data and sources:
        results.update(_retrieval(data, sources))
    if "linear_probe" in evaluations and labelled and spec.objective != "bce":
        results.update(_probe(model, params, spec, data, batch_size, probe_examples))
    return results


def _retrieval(data: dict, sources: list[str]) -> dict[str, dict]:
    texts, text_to_item = metrics.distinct_captions(data["caption_tokens"])
    embedded = data["caption_embedding"]
    captions = embedded.reshape(-1, embedded.shape[-1])[texts]
    out = {}
    for m in sources:
        items = data[f"embedding/{m}"]
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


def _probe(model, params, spec: TaskSpec, data: dict, batch_size: int, examples: int) -> dict:
    source = next((m for m in spec.modalities if m != "text" and f"pooled/{m}" in data), None)
    if source is None:
        return {}
    train = encode_split(model, params, spec, "train", batch_size, max_examples=examples)
    result = metrics.linear_probe(
        train[f"pooled/{source}"][:examples],
        train["label"][:examples],
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
