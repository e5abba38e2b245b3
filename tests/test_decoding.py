"""The LiT decoder (seed 003) and `imp.decoding`: cached step-by-step logits equal the
teacher-forced ones, the decoder is causal, beam search with one beam is greedy, beam search
with enough beams is exhaustive search (checked against every sequence, scored by the
teacher-forced model), and sampling keeps to its top k."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp import decoding
from imp.modeling.text_decoder import TextDecoder

EOS = 1


def _model(vocab=11, max_length=8, tied=True, scan=True, layers=2):
    decoder = TextDecoder(
        vocab_size=vocab,
        width=16,
        num_layers=layers,
        num_heads=2,
        mlp_dim=32,
        max_length=max_length,
        tied=tied,
        scan_layers=scan,
    )
    rng = np.random.default_rng(0)
    memory = jnp.asarray(rng.normal(size=(3, 5, 12)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    tokens = jnp.asarray(rng.integers(0, vocab, size=(3, max_length)), jnp.int32)
    params = decoder.init(jax.random.key(1), tokens, memory, mask)["params"]
    # Larger weights than the initialisation's, so that the toy model's choices are decided.
    params = jax.tree.map(lambda p: p * 3.0, params)
    return decoder, params, memory, mask, tokens


def _teacher_forced(decoder, params, memory, mask, tokens):
    inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))  # position 0 reads the start id 0
    return decoder.apply({"params": params}, inputs, memory, mask)[0]


def _step(decoder, params, memory, mask):
    def step(previous, cache, index):
        logits, cache = decoder.apply({"params": params}, previous, memory, mask, cache, index)
        return logits[:, 0], cache

    return step


@pytest.mark.parametrize("tied,scan", [(True, True), (False, False)])
def test_cached_steps_give_the_teacher_forced_logits(tied, scan):
    decoder, params, memory, mask, tokens = _model(tied=tied, scan=scan)
    forced = _teacher_forced(decoder, params, memory, mask, tokens)
    step = jax.jit(_step(decoder, params, memory, mask))
    cache = decoder.init_cache(3)
    inputs = np.pad(np.asarray(tokens[:, :-1]), ((0, 0), (1, 0)))
    for i in range(tokens.shape[1]):
        logits, cache = step(jnp.asarray(inputs[:, i : i + 1]), cache, i)
        np.testing.assert_allclose(logits, forced[:, i], atol=1e-3, rtol=1e-4)  # float32 sums


def test_changing_a_token_never_changes_the_logits_before_it():
    decoder, params, memory, mask, tokens = _model()
    base = decoder.apply({"params": params}, tokens, memory, mask)[0]
    for t in range(tokens.shape[1]):
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % 11)
        out = decoder.apply({"params": params}, changed, memory, mask)[0]
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert not np.allclose(out[:, t], base[:, t])


def test_the_memory_mask_hides_padding_tokens():
    decoder, params, memory, mask, tokens = _model()
    base = decoder.apply({"params": params}, tokens, memory, mask)[0]
    changed = memory.at[1, 3:].set(100.0).at[2, 1:].set(-100.0)  # only masked-out tokens
    np.testing.assert_allclose(
        decoder.apply({"params": params}, tokens, changed, mask)[0], base, atol=1e-5
    )


def _prompts():
    prompts = jnp.asarray(
        [[5, 6, 7, 0, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0, 0], [8, 9, 0, 0, 0, 0, 0, 0]]
    )
    return prompts, jnp.asarray([3, 1, 2])


def test_greedy_forces_the_prompt_and_takes_the_best_token_after_it():
    decoder, params, memory, mask, _ = _model()
    prompts, lengths = _prompts()
    step = _step(decoder, params, memory, mask)
    out = np.asarray(decoding.greedy(step, decoder.init_cache(3), prompts, lengths, EOS))
    for b, length in enumerate(np.asarray(lengths)):
        np.testing.assert_array_equal(out[b, :length], prompts[b, :length])
        logits = _teacher_forced(decoder, params, memory, mask, jnp.asarray(out))
        generated = out[b, length:]
        ended = np.flatnonzero(generated == EOS)
        stop = ended[0] + 1 if len(ended) else len(generated)
        expected = np.asarray(logits[b, length : length + stop].argmax(-1))
        np.testing.assert_array_equal(generated[:stop], expected)
        assert not generated[stop:].any()


def test_beam_search_with_one_beam_is_greedy():
    decoder, params, memory, mask, _ = _model()
    prompts, lengths = _prompts()
    step = _step(decoder, params, memory, mask)
    greedy = decoding.greedy(step, decoder.init_cache(3), prompts, lengths, EOS)
    beams, _ = decoding.beam_search(
        step, decoder.init_cache(3), prompts, lengths, EOS, beams=1, cache_axis=2
    )
    np.testing.assert_array_equal(beams[:, 0], greedy)


def _exhaustive(decoder, params, memory, mask, prompt, length, max_length, alpha):
    """Every finished sequence after `prompt` (ending at EOS, or at `max_length`), scored by
    `log p / length_penalty` from teacher-forced logits; the best first."""
    vocab = decoder.vocab_size
    forced = jax.jit(lambda seq: _teacher_forced(decoder, params, memory, mask, seq))
    scored = []
    for size in range(1, max_length - length + 1):
        for tail in itertools.product(range(vocab), repeat=size):
            if EOS in tail[:-1] or (tail[-1] != EOS and size < max_length - length):
                continue
            seq = np.zeros(max_length, np.int32)
            seq[:length], seq[length : length + size] = prompt[:length], tail
            logp = jax.nn.log_softmax(forced(jnp.asarray(seq[None]))[0])
            total = sum(float(logp[length + j, t]) for j, t in enumerate(tail))
            scored.append((total / float(decoding.length_penalty(size, alpha)), seq))
    scored.sort(key=lambda s: -s[0])
    return scored


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_with_enough_beams_is_exhaustive_search(alpha):
    vocab, max_length = 3, 5
    decoder, params, memory, mask, _ = _model(vocab=vocab, max_length=max_length, layers=1)
    memory, mask = memory[:2], mask[:2]
    prompts = jnp.asarray([[2, 0, 0, 0, 0], [2, 2, 0, 0, 0]])
    lengths = jnp.asarray([1, 2])
    beams = vocab ** (max_length - 2)  # more than the live sequences ever are
    step = _step(decoder, params, jnp.repeat(memory, beams, 0), jnp.repeat(mask, beams, 0))
    seqs, scores = decoding.beam_search(
        step, decoder.init_cache(2 * beams), prompts, lengths, EOS, beams, alpha, cache_axis=2
    )
    for b in range(2):
        brute = _exhaustive(
            decoder, params, memory[b : b + 1], mask[b : b + 1], np.asarray(prompts[b]),
            int(lengths[b]), max_length, alpha,
        )  # fmt: skip
        np.testing.assert_array_equal(seqs[b, 0], brute[0][1])
        top = min(len(brute), 4)
        np.testing.assert_allclose(scores[b, :top], [s for s, _ in brute[:top]], rtol=1e-4)
        for j in range(top):
            np.testing.assert_array_equal(seqs[b, j], brute[j][1])


def test_sampling_keeps_to_the_top_k_and_top_1_is_greedy():
    decoder, params, memory, mask, _ = _model()
    prompts, lengths = _prompts()
    step = _step(decoder, params, memory, mask)
    cache = decoder.init_cache(3)
    greedy = decoding.greedy(step, cache, prompts, lengths, EOS)
    top1 = decoding.sample(step, cache, prompts, lengths, EOS, jax.random.key(3), 1.0, top_k=1)
    np.testing.assert_array_equal(top1, greedy)
    draws = [
        np.asarray(decoding.sample(step, cache, prompts, lengths, EOS, jax.random.key(s), 2.0, 3))
        for s in range(4)
    ]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])
    for out in draws:
        logits = _teacher_forced(decoder, params, memory, mask, jnp.asarray(out))
        top3 = np.argsort(-np.asarray(logits), axis=-1)[..., :3]
        for b, length in enumerate(np.asarray(lengths)):
            for i in range(length, out.shape[1]):
                if out[b, i - 1] == EOS and i > length:
                    break
                assert out[b, i] in top3[b, i]
