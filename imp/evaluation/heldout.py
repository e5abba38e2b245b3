"""Held-out evaluation of a task: classifier accuracy, or zero-shot classification through
the text tower with prompt ensembling (CLIP: average the normalised prompt embeddings)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from imp.data import feeding
from imp.modeling.model import ImpModel
from imp.tasks.registry import CLASSIFICATION, TaskSpec


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model: ImpModel, params, inputs: dict, head: str | None):
    return model.apply({"params": params}, inputs, head=head)


def class_embeddings(model: ImpModel, params, spec: TaskSpec) -> np.ndarray:
    """`[classes, embed_dim]`: each class's prompts embedded, averaged, re-normalised."""
    vocabulary = seqio.get_mixture_or_task(spec.name).output_features["text"].vocabulary
    prompts = [p for per_class in spec.class_prompts for p in per_class]
    ids = np.zeros((len(prompts), spec.text_length), np.int32)
    for row, prompt in enumerate(prompts):
        tokens = vocabulary.encode(prompt)[: spec.text_length]
        ids[row, : len(tokens)] = tokens
    text = np.asarray(_apply(model, params, {"text": jnp.asarray(ids)}, None)["embedding/text"])
    per_class = text.reshape(len(spec.class_prompts), -1, text.shape[-1]).mean(1)
    return per_class / np.linalg.norm(per_class, axis=-1, keepdims=True)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    return (
        np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])
        if len(x) < rows
        else x
    )


def evaluate(
    model: ImpModel, params, spec: TaskSpec, split: str | None = None, batch_size: int = 64
) -> dict[str, dict]:
    """`{metric name: {"value", "chance"}}` for the task on `split` (default: its data set's
    evaluation split). A multi-label classifier's top-1 hits when the top class is a label."""
    split = split or spec.eval_split
    classifier = spec.objective in CLASSIFICATION
    prototypes = None if classifier else class_embeddings(model, params, spec)
    correct: dict[str, int] = {}
    total = 0
    for batch in feeding.batches(
        spec, split, 0, train=False, batch_size=batch_size, with_labels=True
    ):
        labels = batch.pop("label")
        multi_hot = batch.pop("labels", None)
        total += len(labels)
        batch = {k: _pad_rows(v, batch_size) for k, v in batch.items()}  # one compiled shape
        inputs = {m: batch[m] for m in spec.modalities if m != "text"}
        head = spec.head if classifier else None
        out = _apply(model, params, inputs, head)
        real = {  # the rows of real examples in the batch-shaped outputs
            k: np.asarray(v)[: len(labels)]
            for k, v in out.items()
            if k == "logits" or k.startswith("embedding/")
        }
        if multi_hot is not None:
            top = real["logits"].argmax(-1)
            hits = {"top1": multi_hot[np.arange(len(top)), top] > 0}
        elif classifier:
            hits = {"top1": real["logits"].argmax(-1) == labels}
        else:
            hits = {
                f"zero_shot_top1/{m}_to_text": (real[f"embedding/{m}"] @ prototypes.T).argmax(-1)
                == labels
                for m in inputs
            }
        for name, h in hits.items():
            correct[name] = correct.get(name, 0) + int(h.sum())
    chance = 1.0 / spec.num_classes
    return {
        name: {"value": c / total, "chance": chance, "examples": total}
        for name, c in correct.items()
    }
