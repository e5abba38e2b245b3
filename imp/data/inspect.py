"""`imp data inspect`: what a mixture feeds the model, one row per task variant, and the
input pipeline's throughput."""

import time
from collections.abc import Callable, Sequence

import seqio

from imp.data import feeding
from imp.tasks.spec import TaskSpec


def mixture_rows(
    tasks: Sequence[TaskSpec], rates: Sequence[float], tokens: Callable[[TaskSpec], int]
) -> list[dict]:
    """Per task: sampling rate (normalised), examples, batch, feature shapes and dtypes (of
    one host's batch), encoder tokens per example (`tokens(spec)`, the model's count) and per
    global batch."""
    total = sum(rates)
    rows = []
    for spec, rate in zip(tasks, rates, strict=True):
        element = feeding.dataset(spec, "train", 0, train=True).element_spec
        per_example = tokens(spec)
        rows.append(
            {
                "task": spec.name,
                "variant": spec.variant,
                "objective": spec.objective,
                "rate": rate / total,
                "examples": spec.num_examples,
                "batch": spec.batch_size,
                "features": {k: [list(v.shape), v.dtype.name] for k, v in sorted(element.items())},
                "tokens_per_example": per_example,
                "tokens_per_batch": per_example * spec.batch_size,
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


def show_examples(tasks: Sequence[TaskSpec], count: int) -> list[str]:
    """The captions, labels and objects of the first `count` evaluation examples of each
    data set of `tasks`, decoded back to text."""
    lines, seen = [], set()
    for spec in tasks:
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
            if "object_labels" in batch:  # detection: each object's class and box centre
                labels, boxes = batch["object_labels"][i], batch["object_boxes"][i]
                objects = [
                    f"'{spec.class_names[label]}' at ({box[0]:.2f}, {box[1]:.2f})"
                    for label, box in zip(labels, boxes, strict=True)
                    if label >= 0
                ]
                parts.append(f"{len(objects)} objects: " + ", ".join(objects))
            if "captions" in batch:
                captions = [vocabulary.decode(row.tolist()) for row in batch["captions"][i]]
                parts.append(" | ".join(c for c in captions if c))
            lines.append(f"  [{i}] " + "; ".join(p for p in parts if p))
    return lines


def throughput(spec: TaskSpec, batches: int = 20, prefetch: bool = True) -> float:
    """Training examples per second of the task's input pipeline on this host, after one
    warm-up batch."""
    iterator = feeding.batches(spec, "train", 0, train=True, prefetch=prefetch)
    next(iterator)
    start = time.perf_counter()
    examples = sum(len(next(iter(next(iterator).values()))) for _ in range(batches))
    return examples / (time.perf_counter() - start)
