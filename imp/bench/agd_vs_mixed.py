"""AGD (one task per step at its own shape) vs one mixed batch padded to the largest shape:
useful tokens per second and peak memory (seed 004 §3.1, the case for AGD).

Three contrastive tasks of different shapes and modalities: images with captions, videos
with captions, and videos with sound and captions. AGD trains them in turn, each graph at its
own input shapes. The mixed-batch baseline concatenates the three batches into one, padding
every example to the largest input of every modality (images to 8 frames; a waveform of
zeros where there is no sound), and trains on it in one step. Both see the same examples;
useful tokens are those of the real inputs, the rest is padding. (A faithful mixed batch would
also mask the padding out of attention and the loss; that costs the same compute, so it is
left out here.)
"""

import argparse
import dataclasses

from imp.bench import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(common.SIZES), default="tiny")
    parser.add_argument("--image_batch", type=int, default=32)
    parser.add_argument("--video_batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8192, help="waveform samples per clip")


def tasks(args) -> tuple[list, object]:
    """The AGD tasks and the mixed task that pads them all to its shapes."""
    shape = dict(height=args.resolution, width=args.resolution)
    agd = [
        common.task("image_text", batch_size=args.image_batch, frames=1, **shape),
        common.task("video_text", batch_size=args.video_batch, frames=args.frames, **shape),
        common.task(
            "video_audio_text",
            modalities=("vision", "waveform", "text"),
            batch_size=args.video_batch,
            frames=args.frames,
            num_samples=args.samples,
            **shape,
        ),
    ]
    mixed = dataclasses.replace(
        agd[-1], name="mixed", dataset="mixed", batch_size=sum(t.batch_size for t in agd)
    )
    return agd, mixed


def run(args) -> common.Report:
    agd, mixed = tasks(args)
    bench = common.Bench(common.experiment(common.model(args.size), [*agd, mixed]))
    useful = sum(common.tokens(bench, t) for t in agd)
    rows = []
    agd_seconds, agd_peak = 0.0, 0
    for spec in agd:
        times = bench.time_step((spec.name,), args.repeats)
        peak = common.peak_bytes(bench.entry(spec.name).memory)["peak_bytes"]
        agd_seconds += times["median_s"]
        agd_peak = max(agd_peak, peak)
        rows.append(_row(f"AGD: {spec.name}", spec, bench, times, peak))
    rows.append(
        {
            "step": "AGD: one step of each",
            "examples": sum(t.batch_size for t in agd),
            "tokens": useful,
            "useful_tokens": useful,
            "step_median_s": agd_seconds,
            "peak_MiB": common.mib(agd_peak),
            "useful_tokens_per_s": useful / agd_seconds,
        }
    )
    times = bench.time_step((mixed.name,), args.repeats)
    mixed_peak = common.peak_bytes(bench.entry(mixed.name).memory)["peak_bytes"]
    rows.append(_row("mixed batch, padded", mixed, bench, times, mixed_peak, useful))
    speedup = (useful / agd_seconds) / rows[-1]["useful_tokens_per_s"]
    claims = [
        {
            "claim": "AGD spends no compute or memory on padding, unlike a padded mixed batch",
            "paper": "no padding cost (qualitative)",
            "measured": f"{speedup:.2f}x the useful tokens/s, {agd_peak / mixed_peak:.2f}x the "
            f"peak memory of the mixed batch ({useful / rows[-1]['tokens']:.0%} of its tokens "
            "are useful)",
            "verdict": "met" if speedup > 1 and agd_peak < mixed_peak else "not met",
        }
    ]
    settings = {"size": args.size, "repeats": args.repeats}
    return common.Report("agd_vs_mixed", settings, rows, claims)


def _row(label, spec, bench, times, peak, useful=None) -> dict:
    tokens = common.tokens(bench, spec)
    useful = tokens if useful is None else useful
    return {
        "step": label,
        "examples": spec.batch_size,
        "tokens": tokens,
        "useful_tokens": useful,
        "step_median_s": times["median_s"],
        "peak_MiB": common.mib(peak),
        "useful_tokens_per_s": useful / times["median_s"],
    }
