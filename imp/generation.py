"""Text from a trained LiT decoder (seed 003): prompts of a generation task, decoding over the
encoded inputs, and the answers and references as strings.

A task's prompt is its token ids before the question, the question (the example's first
caption, when the prompt asks one), and its ids after (`TaskSpec.prompt_ids`), laid out as in
training (`tasks.datasets`). `generate` encodes the inputs once and decodes the prompts over them
with one of `imp.decoding`'s strategies (`Strategy`); it is a pure function of the parameters
and arrays, jitted by its callers (the evaluator, `imp generate`, `imp bench decode`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from imp import decoding
from imp.decoding import EOS, START
from imp.errors import ImpError
from imp.modeling.model import ImpModel
from imp.tasks.spec import TaskSpec

METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How to decode: "greedy", "beam" (`beams`, length normalisation `alpha`; seed 003: 4
    and 0.1) or "sample" (at `temperature`, among the `top_k` likeliest when > 0)."""

    method: str = "greedy"
    beams: int = 4
    alpha: float = 0.1
    temperature: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ImpError(f"decoding method {self.method!r}: choose from {METHODS}")
        if self.method == "beam" and self.beams < 1:
            raise ImpError(f"beam search with {self.beams} beams: expected at least 1")
        if self.method == "sample" and not self.temperature > 0:
            raise ImpError(f"sampling at temperature {self.temperature}: expected > 0")
        if self.top_k < 0:
            raise ImpError(f"top_k = {self.top_k}: expected >= 0 (0: every token)")

    @classmethod
    def for_task(cls, spec: TaskSpec) -> "Strategy":
        """The task's `num_beams` (seed 003 §5.8: 4 for captions, alpha 0.1; greedy
        otherwise)."""
        return cls("beam", beams=spec.num_beams) if spec.num_beams > 1 else cls()


def prompts(
    spec: TaskSpec, questions: np.ndarray | None, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """`[rows, decoder_length]` prompt ids (then zeros) and their lengths `[rows]`;
    `questions` `[rows, text_length]` (zero-padded ids) when the prompt asks one."""
    before, after = spec.prompt_ids
    out = np.zeros((rows, spec.decoder_length), np.int32)
    lengths = np.zeros(rows, np.int32)
    for row in range(rows):
        ids = list(before)
        if spec.asks:
            ids += [int(t) for t in questions[row] if t != START] + list(after)
        if len(ids) >= spec.decoder_length:
            raise ImpError(
                f"task '{spec.name}': a prompt of {len(ids)} tokens leaves no room for an "
                f"answer in decoder_length = {spec.decoder_length}"
            )
        out[row, : len(ids)] = ids
        lengths[row] = len(ids)
    return out, lengths


def generate(
    model: ImpModel,
    params,
    inputs: dict[str, jax.Array],
    prompt_ids: jax.Array,
    prompt_lengths: jax.Array,
    strategy: Strategy,
    rng: jax.Array | None = None,
) -> jax.Array:
    """The prompts and their generated answers `[batch, decoder_length]` (the best beam)."""
    memory, mask, _ = model.apply({"params": params}, inputs, method=ImpModel.memory)
    beams = strategy.beams if strategy.method == "beam" else 1
    memory, mask = jnp.repeat(memory, beams, axis=0), jnp.repeat(mask, beams, axis=0)
    cache = model.text_decoder.init_cache(memory.shape[0], memory.dtype)

    def step(previous, cache, index):
        logits, cache = model.apply(
            {"params": params}, memory, mask, previous, cache, index, method=ImpModel.text_step
        )
        return logits[:, 0], cache

    if strategy.method == "beam":
        seqs, _ = decoding.beam_search(
            step, cache, prompt_ids, prompt_lengths, EOS, beams, strategy.alpha, cache_axis=2
        )
        return seqs[:, 0]
    if strategy.method == "sample":
        return decoding.sample(
            step,
            cache,
            prompt_ids,
            prompt_lengths,
            EOS,
            rng,
            strategy.temperature,
            strategy.top_k,
        )
    return decoding.greedy(step, cache, prompt_ids, prompt_lengths, EOS)


def vocabulary(spec: TaskSpec) -> seqio.SentencePieceVocabulary:
    return seqio.SentencePieceVocabulary(spec.vocabulary)


def answer_ids(tokens: np.ndarray, prompt_length: int) -> list[int]:
    """The generated ids of one sequence: after its prompt, up to (not with) EOS."""
    out = []
    for t in tokens[prompt_length:]:
        if t in (EOS, START):
            break
        out.append(int(t))
    return out


def texts(vocab, tokens: np.ndarray, prompt_lengths: np.ndarray) -> list[str]:
    """Each row's answer as text."""
    return [
        vocab.decode(answer_ids(t, int(n))) for t, n in zip(tokens, prompt_lengths, strict=True)
    ]


def references(spec: TaskSpec, vocab, batch: dict) -> list[list[str]]:
    """The right answers of each row: its captions, or its class name."""
    if spec.text_source == "captions":
        return [
            [
                vocab.decode([int(t) for t in caption if t])
                for caption in row
                if row.any() and caption.any()
            ]
            for row in batch["captions"]
        ]
    return [[spec.class_names[int(label)]] for label in batch["label"]]
