"""Train-step tokens/s and MFU against this machine's matmul peak, and the same step in PyTorch.

Our AGD train step (one video-text NCE task: forward, NCE, backward, clipped Adam, untouched
parameters kept) runs through `common.Bench`; its FLOPs are XLA's count for the same step with
layers unrolled. The peak is a large float32 matmul in the same run, our physical limit on
this machine. The peer is the same model in PyTorch (`torch_peer`: pre-LN ViT encoder + CLIP
loss, equal parameters, batch and threads) in a child process.

The two frameworks are timed call by call in turn (JAX, PyTorch, JAX, ...), so a load change
on a shared machine hits both; the JAX/PyTorch ratio is the median of these paired ratios.
Throughput and MFU use the fastest call (noise only adds time). `--profile` also times the
forward pass, forward + backward, and the optimizer update alone in both frameworks.
"""

import argparse
import os
import statistics
import time

import jax

from imp.bench import common, torch_peer
from imp.training import step as step_lib

NOT_INSTALLED = "not installed (pip install torch)"
# The parameters a vision-text NCE step reads (the peer has exactly these).
_USED = ("encoder", "embedders_vision", "embedders_text", "projections_vision")
_USED += ("projections_text", "logit_scale")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="frame height and width")
    parser.add_argument("--text_length", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="PyTorch threads (JAX uses every core of the process: keep them equal)",
    )
    parser.add_argument("--matmul", type=int, default=2048, help="N of the NxN peak matmul")
    parser.add_argument(
        "--torch_device",
        default="cpu",
        help="where the PyTorch peer runs: cpu, or cuda beside JAX on a GPU",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also time forward, forward+backward, update"
    )
    parser.set_defaults(repeats=3)


def _jax_parts(bench: common.Bench, spec, profile: bool) -> dict:
    """JAX callables by part; `step` is the real train step, the others its pieces."""
    names = (spec.name,)
    parts = {"step": lambda: bench.step(names)}
    if not profile:
        return parts
    batch, rng = bench.batch(spec.name), jax.random.key(0)

    def loss(params):
        return bench.experiment.loss(bench.model, spec, params, batch, rng)[0]

    forward = jax.jit(loss)
    forward_backward = jax.jit(jax.value_and_grad(loss))
    tx, size = bench.experiment.tx, bench.experiment.step_size.for_task(spec)
    update = jax.jit(lambda state, g: step_lib.apply_gradients(state, g, tx, size, [spec]))
    grads = forward_backward(bench.state["params"])[1]
    parts["forward"] = lambda: forward(bench.state["params"])
    parts["forward+backward"] = lambda: forward_backward(bench.state["params"])
    parts["update"] = lambda: update(bench.state, grads)
    return parts


def _seconds(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _paired(jax_fn, peer, part: str, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per call of `part` in JAX and in the peer (if any), alternating, after one
    warm-up call each."""
    jax.block_until_ready(jax_fn())
    ours, theirs = [], []
    for i in range(repeats):
        ours.append(_seconds(jax_fn))
        if peer is not None:
            theirs.append(peer.seconds(part, warmup=int(i == 0)))
    return ours, theirs


def _times(seconds: list[float]) -> dict:
    return {"min_s": min(seconds), "median_s": statistics.median(seconds)}


def run(args) -> common.Report:
    model = common.model(
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        mlp_dim=4 * args.d_model,
        embed_dim=args.d_model,
    )
    spec = common.task(
        "video_text",
        batch_size=args.batch,
        frames=args.frames,
        height=args.size,
        width=args.size,
        text_length=args.text_length,
    )
    bench = common.Bench(common.experiment(model, [spec]))
    compile_start = time.perf_counter()
    bench.step((spec.name,))
    compile_s = time.perf_counter() - compile_start
    step_flops = common.step_flops(model, spec)
    n_tokens = common.tokens(bench, spec)
    params = bench.state["params"]
    ours_params = sum(x.size for k in _USED for x in jax.tree.leaves(params[k]))

    peer = None
    if torch_peer.available():
        cfg = torch_peer.Config(
            args.d_model,
            args.layers,
            args.heads,
            4 * args.d_model,
            args.d_model,
            common.VOCAB,
            model.vision_patch,
            model.vision_max_grid,
            model.max_text_length,
        )
        peer = torch_peer.PeerProcess(
            cfg, common.synthetic_batch(spec), args.threads, args.matmul, args.torch_device
        )
        assert peer.num_params == ours_params, (peer.num_params, ours_params)
    try:
        square = jax.random.normal(jax.random.key(1), (args.matmul, args.matmul))
        matmul = jax.jit(lambda x: x @ x)
        parts = {"matmul": lambda: matmul(square), **_jax_parts(bench, spec, args.profile)}
        seconds = {part: _paired(fn, peer, part, args.repeats) for part, fn in parts.items()}
    finally:
        if peer is not None:
            peer.close()

    matmul_flops = 2 * args.matmul**3
    frameworks = {"jax": 0} if peer is None else {"jax": 0, "torch": 1}
    peak = {fw: matmul_flops / min(seconds["matmul"][i]) for fw, i in frameworks.items()}
    rows = []
    for part, pair in seconds.items():
        for fw, i in frameworks.items():
            row = {"part": part, "framework": fw, **_times(pair[i])}
            if part == "matmul":
                row["GFLOP/s"] = peak[fw] / 1e9
            if part == "step":
                best = min(pair[i])
                row["tokens/s"] = n_tokens / best
                row["GFLOP/s"] = step_flops / best / 1e9
                row["MFU"] = step_flops / best / peak[fw]
            rows.append(row)
        if peer is not None:
            rows[-1]["jax/torch"] = statistics.median(x / y for x, y in zip(*pair, strict=True))
        else:
            rows.append({"part": part, "framework": f"torch {NOT_INSTALLED}"})

    settings = {
        "d_model": args.d_model,
        "layers": args.layers,
        "batch": args.batch,
        "video": f"{args.frames}x{args.size}x{args.size}",
        "tokens/step": n_tokens,
        "GFLOP/step": round(step_flops / 1e9, 1),
        "params": ours_params,
        "threads": args.threads,
        "device": jax.devices()[0].device_kind,
        "torch_device": args.torch_device,
        "compile_s": round(compile_s, 1),
        "repeats": args.repeats,
    }
    return common.Report("throughput", settings, rows, [_claim(seconds, peer is not None)])


def _claim(seconds: dict, has_peer: bool) -> dict:
    claim = {
        "claim": "our train step is at least as fast as the same step in PyTorch",
        "paper": "JAX/PyTorch step time <= 1.0 (a plain flax step measured 1.4)",
    }
    if not has_peer:
        return {**claim, "measured": f"PyTorch {NOT_INSTALLED}", "verdict": "not measured"}
    ratios = [x / y for x, y in zip(*seconds["step"], strict=True)]
    matmul = statistics.median(x / y for x, y in zip(*seconds["matmul"], strict=True))
    ratio = statistics.median(ratios)
    measured = (
        f"{ratio:.2f} (median of {len(ratios)} paired steps, range {min(ratios):.2f}-"
        f"{max(ratios):.2f}; matmul alone {matmul:.2f})"
    )
    return {**claim, "measured": measured, "verdict": "met" if ratio <= 1.0 else "not met"}
