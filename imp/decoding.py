"""Autoregressive decoding with a key/value cache (seed 003 §5.8): greedy, temperature and top-k
sampling, and beam search with length normalisation.

Every decoder here is one `lax.while_loop` over a fixed maximum length, so it compiles once per
batch shape and runs batched. A model enters as `step(tokens [n, 1], cache, index) ->
(logits [n, vocab], cache)`, the logits of the token after position `index` given the tokens
up to it (`imp.modeling.text_decoder`: position 0 reads the start id). The cache is any pytree
whose arrays have the batch (`n`) on `cache_axis`; beam search reorders it along that axis.

Each example's prompt is the first `prompt_lengths` tokens of `prompts` `[batch, max_length]`.
The prompt is forced token by token through the same loop (as t5x decodes a prefix), so
prompts of different lengths share a batch; generation starts after each one and stops at
`eos_id`. Outputs are `[batch, max_length]`: the prompt, the generated tokens (`eos_id`
included), then zeros.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

START = 0  # the id each sequence starts from (seqio's pad id, t5x's decoder start)
EOS = 1  # the id that ends an answer (seqio's SentencePiece vocabularies)
NEG_INF = -1.0e9  # a finite "impossible" score: -inf - -inf would be NaN

Step = Callable[[jax.Array, object, jax.Array], tuple[jax.Array, object]]


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """Wu et al. (2016)'s `((5 + |Y|) / 6) ** alpha`, by which beam search divides the summed
    log-probability of a finished sequence of `|Y|` generated tokens."""
    return ((5.0 + length) / 6.0) ** alpha


def _previous(tokens: jax.Array, i: jax.Array) -> jax.Array:
    """`[n, 1]`: the token each position `i` reads (the start id 0 at position 0)."""
    prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(i - 1, 0), axis=-1, keepdims=True)
    return jnp.where(i > 0, prev, 0)


def sample(
    step: Step,
    cache,
    prompts: jax.Array,
    prompt_lengths: jax.Array,
    eos_id: int,
    rng: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
) -> jax.Array:
    """Greedy decoding (`temperature` 0) or sampling from the softmax at `temperature`, among
    the `top_k` most likely tokens only when `top_k` > 0."""
    batch, max_length = prompts.shape
    if rng is None:
        rng = jax.random.key(0)

    def choose(logits, key):
        if temperature == 0.0:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k:
            kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
            logits = jnp.where(logits >= kth, logits, -jnp.inf)
        return jax.random.categorical(key, logits)

    def body(state):
        i, tokens, done, cache = state
        logits, cache = step(_previous(tokens, i), cache, i)
        chosen = choose(logits.astype(jnp.float32), jax.random.fold_in(rng, i))
        forced = i < prompt_lengths
        token = jnp.where(forced, prompts[:, i], jnp.where(done, 0, chosen))
        tokens = tokens.at[:, i].set(token)
        done = done | (~forced & (token == eos_id))
        return i + 1, tokens, done, cache

    def running(state):
        i, _, done, _ = state
        return (i < max_length) & ~jnp.all(done)

    tokens = jnp.zeros_like(prompts)
    state = (jnp.int32(0), tokens, jnp.zeros(batch, bool), cache)
    return jax.lax.while_loop(running, body, state)[1]


def greedy(step: Step, cache, prompts, prompt_lengths, eos_id: int) -> jax.Array:
    """The most likely token at each step."""
    return sample(step, cache, prompts, prompt_lengths, eos_id)


def _gather_beams(tree, origin: jax.Array, beams: int, axis: int):
    """Reorders every `[..., batch * beams, ...]` array of `tree` (batch on `axis`) so beam j of
    each example takes the state of its beam `origin[example, j]`."""
    flat = (origin + beams * jnp.arange(origin.shape[0])[:, None]).reshape(-1)
    return jax.tree.map(lambda x: jnp.take(x, flat, axis=axis), tree)


def beam_search(
    step: Step,
    cache,
    prompts: jax.Array,
    prompt_lengths: jax.Array,
    eos_id: int,
    beams: int = 4,
    alpha: float = 0.1,
    cache_axis: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """The `beams` best sequences by `log p(Y) / length_penalty(|Y|, alpha)` (seed 003: 4
    beams, alpha 0.1) and their scores, best first: `[batch, beams, max_length]`, `[batch,
    beams]`. `cache` is for `batch * beams` rows (`jnp.repeat` of one example's row `beams`
    times along `cache_axis`).

    A sequence ends with `eos_id` or at `max_length`. Each step extends every live beam by
    every token, keeps the `2 * beams` best extensions by log-probability, moves those that
    end into the finished set (kept to the `beams` best normalised scores) and the best
    `beams` of the others on. With `beams` at least the number of live sequences, this is
    exhaustive search (`tests/test_decoding.py`). The loop stops at `max_length`, or when no
    live beam, even at the longest length (where its penalty is largest, and negative scores
    are divided by most), can beat an example's worst finished sequence."""
    batch, max_length = prompts.shape
    width = 2 * beams

    def finished_score(logp, length):
        return logp / length_penalty(length.astype(jnp.float32), alpha)

    def body(state):
        i, seqs, logp, cache, done_seqs, done_scores = state
        previous = _previous(seqs.reshape(batch * beams, max_length), i)
        logits, cache = step(previous, cache, i)
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, beams, -1)
        vocab = logprobs.shape[-1]
        forced = (i < prompt_lengths)[:, None, None]
        prompt_token = prompts[:, i][:, None, None]
        logprobs = jnp.where(
            forced, jnp.where(jnp.arange(vocab) == prompt_token, 0.0, NEG_INF), logprobs
        )
        candidates = (logp[..., None] + logprobs).reshape(batch, beams * vocab)
        top, index = jax.lax.top_k(candidates, width)
        origin, token = index // vocab, index % vocab
        grown = jnp.take_along_axis(seqs, origin[..., None], axis=1).at[:, :, i].set(token)
        generated = i - prompt_lengths + 1  # [batch]
        last = i == max_length - 1
        ends = ~forced[:, :, 0] & ((token == eos_id) | last)
        # The finished set: the best `beams` of the old and the newly ended, normalised.
        new_scores = jnp.where(ends, finished_score(top, generated[:, None]), NEG_INF)
        pool_scores = jnp.concatenate([done_scores, new_scores], axis=1)
        pool_seqs = jnp.concatenate([done_seqs, grown], axis=1)
        done_scores, keep = jax.lax.top_k(pool_scores, beams)
        done_seqs = jnp.take_along_axis(pool_seqs, keep[..., None], axis=1)
        # The live set: the best `beams` of the extensions that go on.
        alive = jnp.where(ends, NEG_INF, top)
        logp, keep = jax.lax.top_k(alive, beams)
        seqs = jnp.take_along_axis(grown, keep[..., None], axis=1)
        cache = _gather_beams(cache, jnp.take_along_axis(origin, keep, axis=1), beams, cache_axis)
        return i + 1, seqs, logp, cache, done_seqs, done_scores

    def running(state):
        i, _, logp, _, _, done_scores = state
        remaining = jnp.maximum(max_length - prompt_lengths, 1).astype(jnp.float32)
        best_possible = logp.max(axis=1) / length_penalty(remaining, alpha)
        hopeless = (i > prompt_lengths) & (best_possible < done_scores.min(axis=1))
        return (i < max_length) & ~jnp.all(hopeless)

    seqs = jnp.zeros((batch, beams, max_length), prompts.dtype)
    logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1)), (batch, 1))
    done = jnp.full((batch, beams), NEG_INF)
    state = (jnp.int32(0), seqs, logp, cache, seqs, done)
    _, _, _, _, done_seqs, done_scores = jax.lax.while_loop(running, body, state)
    return done_seqs, done_scores
