"""`imp data inspect`: what a mixture feeds the model, one row per task variant, and the
input pipeline's throughput."""

import time

import seqio

from imp.data import feeding
from imp.modeling.model import ImpModel
from imp.tasks import registry


def mixture_rows(name: str, model: ImpModel) -> list[dict]:
    """Per task: sampling rate (normalised), examples, batch, feature shapes and dtypes (of
    one host's batch), encoder tokens per example and per global batch."""
    tasks = registry.resolve(name)
    total = sum(rate for _, rate in tasks)
    rows = []
    for spec, rate in tasks:
        element = feeding.dataset(spec, "train", 0, train=True).element_spec
        tokens = spec.tokens_per_example(
            model.vision_patch, model.waveform_patch, model.spectrogram_patch
        )
        rows.append(
            {
                "task": spec.name,
                "variant": spec.variant,
                "objective": spec.objective,
                "rate": rate / total,
                "examples": spec.num_examples,
                "batch": spec.batch_size,
                "features": {k: [list(v.shape), v.dtype.name] for k, v in sorted(element.items())},
                "tokens_per_example": sum(tokens.values()),
                "tokens_per_batch": sum(tokens.values()) * spec.batch_size,
            }
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    header = (
        f"{'task':34} {'rate':>6} {'examples':>9} {'batch':>6} {'tok/ex':>7} {'tok/batch':>9}"
        "  features"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        features = ", ".join(
            f"{k} {'x'.join(map(str, shape[1:])) or 'scalar'} {dtype}"
            for k, (shape, dtype) in r["features"].items()
        )
        lines.append(
            f"{r['task']:34} {r['rate']:6.3f} {r['examples']:9d} {r['batch']:6d} "
            f"{r['tokens_per_example']:7d} {r['tokens_per_batch']:9d}  {features}"
        )
    return "\n".join(lines)


def show_examples(name: str, count: int) -> list[str]:
    """The captions and labels of the first `count` evaluation examples of each data set
    in the mixture, decoded back to text."""
    lines, seen = [], set()
    for spec, _ in registry.resolve(name):
        if spec.dataset in seen:
            continue
        seen.add(spec.dataset)
        task = seqio.get_mixture_or_task(feeding.task_name(spec, train=False))
        vocabulary = task.output_features["text"].vocabulary
        batch = next(
            feeding.batches(
                spec,
                spec.eval_split,
                0,
                train=False,
                batch_size=count,
                with_labels=bool(spec.class_names),
                with_captions=True,
            )
        )
        lines.append(f"{spec.dataset} ({spec.eval_split}):")
        for i in range(len(next(iter(batch.values())))):
            parts = []
            if "label" in batch:
                label = int(batch["label"][i])
                parts.append(f"label {label} '{spec.class_names[label]}'" if label >= 0 else "")
            if "captions" in batch:
                captions = [vocabulary.decode(row.tolist()) for row in batch["captions"][i]]
                parts.append(" | ".join(c for c in captions if c))
            lines.append(f"  [{i}] " + "; ".join(p for p in parts if p))
    return lines


def throughput(spec: registry.TaskSpec, batches: int = 20, prefetch: bool = True) -> float:
    """Training examples per second of the task's input pipeline on this host, after one
    warm-up batch."""
    iterator = feeding.batches(spec, "train", 0, train=True, prefetch=prefetch)
    next(iterator)
    start = time.perf_counter()
    examples = sum(len(next(iter(next(iterator).values()))) for _ in range(batches))
    return examples / (time.perf_counter() - start)
