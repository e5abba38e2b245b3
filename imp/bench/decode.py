"""Decoding speed of the LiT decoder (seed 003): tokens per second with the key/value cache
(`imp.decoding`, one token a step) and without it (the whole sequence recomputed at every
step, as a decoder without a cache must), greedy and beam search.

The decoder writes to its maximum length: its end token is never taken (`eos_id` -1), so
every strategy decodes the same number of tokens. Greedy decoding with and without the cache
must choose the same tokens; the report says whether it did.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imp import decoding
from imp.bench import common
from imp.decoding import START
from imp.modeling.model import ImpModel, init_variables
from imp.modeling.text_decoder import TextDecoder

NEVER = -1  # an end id no token has


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(common.SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=48, help="prompt and answer, in tokens")
    parser.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--beams", type=int, default=4)


def _uncached_greedy(model, params, memory, mask, prompts, lengths):
    """Greedy decoding that recomputes every position's logits at each step (no cache)."""

    def body(i, tokens):
        previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=START)
        logits, _ = model.apply(
            {"params": params}, memory, mask, previous, None, 0, method=ImpModel.text_step
        )
        chosen = logits[:, i].argmax(-1)
        return tokens.at[:, i].set(jnp.where(i < lengths, prompts[:, i], chosen))

    return jax.lax.fori_loop(0, prompts.shape[1], body, jnp.zeros_like(prompts))


def run(args) -> common.Report:
    size = common.SIZES[args.size]
    decoder = TextDecoder(
        vocab_size=common.VOCAB,
        width=size["d_model"],
        num_layers=args.layers,
        num_heads=size["num_heads"],
        mlp_dim=size["mlp_dim"],
        max_length=args.length,
    )
    model = common.model(args.size, text_decoder=decoder)
    params = nn.unbox(init_variables(model, jax.random.key(0)))["params"]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (args.batch, 1, 32, 32, 3)), jnp.float32)
    prompts = np.zeros((args.batch, args.length), np.int32)
    prompts[:, : args.prompt] = rng.integers(2, common.VOCAB, (args.batch, args.prompt))
    prompts, lengths = jnp.asarray(prompts), jnp.full(args.batch, args.prompt, jnp.int32)

    @jax.jit
    def memory(params, images):
        return model.apply({"params": params}, {"vision": images}, method=ImpModel.memory)[:2]

    tokens_memory, mask = memory(params, images)

    def cached(method, beams):
        rows = args.batch * beams

        @jax.jit
        def run_cached(params, memory, mask, prompts, lengths):
            memory, mask = jnp.repeat(memory, beams, 0), jnp.repeat(mask, beams, 0)

            def step(previous, cache, index):
                logits, cache = model.apply(
                    {"params": params},
                    memory,
                    mask,
                    previous,
                    cache,
                    index,
                    method=ImpModel.text_step,
                )
                return logits[:, 0], cache

            cache = decoder.init_cache(rows)
            if method == "beam":
                return decoding.beam_search(
                    step, cache, prompts, lengths, NEVER, beams, cache_axis=2
                )[0][:, 0]
            return decoding.greedy(step, cache, prompts, lengths, NEVER)

        return run_cached

    uncached = jax.jit(lambda *a: _uncached_greedy(model, *a))
    runs = {
        ("greedy", "cache"): cached("greedy", 1),
        ("greedy", "no cache"): uncached,
        (f"beam {args.beams}", "cache"): cached("beam", args.beams),
    }
    arguments = (params, tokens_memory, mask, prompts, lengths)
    generated = args.batch * (args.length - args.prompt)
    rows, outputs = [], {}
    for (method, cache), fn in runs.items():
        outputs[(method, cache)] = np.asarray(fn(*arguments))
        times = common.timed(lambda fn=fn: fn(*arguments), args.repeats)
        rows.append(
            {
                "decoding": method,
                "cache": cache,
                "median_s": times["median_s"],
                "tokens_per_s": generated / times["median_s"],
            }
        )
    same = bool(np.array_equal(outputs[("greedy", "cache")], outputs[("greedy", "no cache")]))
    with_cache, without = rows[0]["tokens_per_s"], rows[1]["tokens_per_s"]
    claims = [
        {
            "claim": "a key/value cache makes decoding faster than recomputing the sequence, "
            "with the same tokens",
            "paper": "seed 003 §5.8 decodes with a cache (big_vision, t5x)",
            "measured": f"greedy {with_cache:.0f} vs {without:.0f} tokens/s "
            f"({with_cache / without:.2f}x); same tokens: {same}",
            "verdict": "met" if with_cache > without and same else "not met",
        }
    ]
    settings = {
        "size": args.size,
        "decoder_layers": args.layers,
        "batch": args.batch,
        "length": args.length,
        "prompt": args.prompt,
        "repeats": args.repeats,
    }
    return common.Report("decode", settings, rows, claims)
