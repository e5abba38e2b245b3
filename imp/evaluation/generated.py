"""`imp generate`: a generation task's answers on the first held-out examples of its data
set, with their prompts and references, from a run's checkpoint."""

import jax

from imp import generation
from imp.data import feeding
from imp.errors import ImpError, did_you_mean
from imp.evaluation import metrics
from imp.evaluation.evaluator import Encoder, tasks_to_evaluate
from imp.tasks.spec import GENERATION, TaskSpec


def generation_task(experiment, name: str) -> TaskSpec:
    """The run's generation task `name`, or an error listing them."""
    writers = {
        s.name: s for s in tasks_to_evaluate(experiment.tasks).values() if s.objective == GENERATION
    }
    if name not in writers:
        hint = did_you_mean(name, list(writers)) or f"; the run's generation tasks: {list(writers)}"
        raise ImpError(f"--task {name}: not a generation task of the run{hint}")
    return writers[name]


def generate(experiment, params, spec: TaskSpec, num: int, strategy) -> list[dict]:
    """`[{id, prompt, answer, references}]` of the first `num` examples of the task's
    evaluation split (`id`: the example's place in it, on one process)."""
    if num < 1:
        raise ImpError(f"--num {num}: expected at least 1")
    if jax.process_count() > 1:
        raise ImpError("imp generate runs in one process")
    encoder = Encoder(experiment, params)
    stream = feeding.batches(
        spec,
        spec.eval_split,
        0,
        train=False,
        batch_size=min(num, encoder.batch_size),
        with_labels=True,
        with_captions=spec.reads_captions,
    )
    vocab = generation.vocabulary(spec)
    shown = []
    for batch in stream:
        rows = len(next(iter(batch.values())))
        prompt_ids, lengths = generation.prompts(spec, batch.get("text"), rows)
        inputs = {m: batch[m] for m in spec.modalities}
        inputs |= {"prompt_ids": prompt_ids, "prompt_lengths": lengths}
        tokens = encoder.generate(inputs, strategy)
        answers = generation.texts(vocab, tokens, lengths)
        references = generation.references(spec, vocab, batch)
        for row in range(rows):
            shown.append(
                {
                    "id": len(shown),
                    "prompt": vocab.decode([int(t) for t in prompt_ids[row, : lengths[row]]]),
                    "answer": answers[row],
                    "references": references[row],
                }
            )
            if len(shown) == num:
                return shown
    return shown


def format_rows(spec: TaskSpec, strategy, rows: list[dict]) -> str:
    how = strategy.method + (f" ({strategy.beams} beams)" if strategy.method == "beam" else "")
    lines = [f"{spec.name}: {len(rows)} held-out examples of '{spec.eval_split}', {how}"]
    for row in rows:
        mark = "=" if metrics.exact_match([row["answer"]], [row["references"]]) else " "
        lines.append(
            f"{row['id']:>4} {mark} prompt {row['prompt']!r} -> {row['answer']!r}   "
            f"references {row['references']}"
        )
    return "\n".join(lines)
