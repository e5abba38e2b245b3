"""Cross-modal linear probes (seed 000 Appendix C, Table 9): a model trained on one modality
probed on another, its patch embedding and positions converted.

Images and videos share the vision embedder here (a still image fills a tubelet), so the
conversions are between vision and the spectrogram:

- vision -> spectrogram: the tubelet kernel summed over its frames (`surgery.image_kernel`)
  and over the colour channels (a spectrogram patch is one channel); the positions averaged
  over the frames, then resized to the spectrogram's (time, mel) grid from the frame's
  (height, width);
- spectrogram -> vision: the kernel repeated over the colour channels and divided by their
  number (a grey image embeds as the spectrogram did), then inflated over the tubelet's frames
  (`surgery.tubelet_kernel`); the (time, mel) positions resized to (height, width) and
  repeated for every frame.

The class token and the modality-adaptor stack (PolyViT) are copied. Patch sizes must match
(seed 000 leaves patch embeddings as they are).
"""

import numpy as np

from imp.errors import ImpError
from imp.modeling import surgery

PAIRS = (("vision", "spectrogram"), ("spectrogram", "vision"))


def check(model, source: str, target: str) -> None:
    """An `ImpError` when `model`'s `source` embedder cannot be converted for `target`."""
    if (source, target) not in PAIRS:
        pairs = " and ".join(":".join(p) for p in PAIRS)
        raise ImpError(f"cross-modal probe {source}:{target}: imp converts {pairs}")
    vision, spectrogram = tuple(model.vision_patch[1:]), tuple(model.spectrogram_patch)
    if vision != spectrogram:
        raise ImpError(
            f"cross-modal probe {source}:{target}: ImpModel.vision_patch's height and width "
            f"{vision} differ from ImpModel.spectrogram_patch {spectrogram}"
        )


def convert(flat: dict, model, source: str, target: str) -> dict[str, np.ndarray]:
    """The `target` modality's embedder (and class token, adaptor stack) from the `source`
    one's, as flat host arrays to put over `flat` (the trained model's parameters)."""
    check(model, source, target)
    flat = {name: np.asarray(value) for name, value in flat.items()}
    depth = model.vision_patch[0]
    out = {}
    if source == "vision":
        kernel = surgery.image_kernel(flat["embedders_vision/tubelet/kernel"], depth)
        kernel = kernel.reshape(-1, 3, kernel.shape[-1]).sum(1)
        out["embedders_spectrogram/patch/kernel"] = kernel
        out["embedders_spectrogram/patch/bias"] = flat["embedders_vision/tubelet/bias"]
    else:
        kernel = flat["embedders_spectrogram/patch/kernel"]
        kernel = np.repeat(kernel[:, None], 3, axis=1).reshape(-1, kernel.shape[-1]) / 3
        out["embedders_vision/tubelet/kernel"] = surgery.tubelet_kernel(kernel, depth, "inflate")
        out["embedders_vision/tubelet/bias"] = flat["embedders_spectrogram/patch/bias"]
    out |= _positions(flat, model, source, target)
    out |= _copied(flat, source, target)
    return {name: value.astype(flat[name].dtype) for name, value in out.items()}


def _positions(flat: dict, model, source: str, target: str) -> dict[str, np.ndarray]:
    if model.positions == "joint":
        table = flat[f"embedders_{source}/pos/table"]
        if source == "vision":
            grid = table.mean(0)  # [h, w, d]: the frames averaged
            sizes = tuple(model.spectrogram_max_grid)
            return {"embedders_spectrogram/pos/table": surgery.resize_grid(grid, sizes)}
        frames, *space = model.vision_max_grid
        grid = surgery.resize_grid(table, tuple(space))
        return {"embedders_vision/pos/table": np.repeat(grid[None], frames, axis=0)}
    if source == "vision":
        time, height, width = (flat[f"embedders_vision/pos/axis_{i}"] for i in range(3))
        rows, bins = model.spectrogram_max_grid
        return {  # the frames' mean is the same for every token: carried on the first axis
            "embedders_spectrogram/pos/axis_0": surgery.resize_grid(height, (rows,)) + time.mean(0),
            "embedders_spectrogram/pos/axis_1": surgery.resize_grid(width, (bins,)),
        }
    rows, bins = (flat[f"embedders_spectrogram/pos/axis_{i}"] for i in range(2))
    frames, height, width = model.vision_max_grid
    return {
        "embedders_vision/pos/axis_0": np.zeros((frames, rows.shape[-1]), rows.dtype),
        "embedders_vision/pos/axis_1": surgery.resize_grid(rows, (height,)),
        "embedders_vision/pos/axis_2": surgery.resize_grid(bins, (width,)),
    }


def _copied(flat: dict, source: str, target: str) -> dict[str, np.ndarray]:
    """The class token and the adaptor stack, where the model has them; a vision stack is
    the image one's when images and videos have their own."""
    stacks = {"spectrogram": ("spectrogram",), "vision": ("image", "vision", "video")}
    out = {}
    for name, value in flat.items():
        if name.startswith(f"class_tokens_{source}/"):
            out[name.replace(f"class_tokens_{source}/", f"class_tokens_{target}/", 1)] = value
    have = [s for s in stacks[source] if any(n.startswith(f"adaptors_{s}/") for n in flat)]
    for stack in stacks[target]:
        if have and any(n.startswith(f"adaptors_{stack}/") for n in flat):
            prefix = f"adaptors_{have[0]}/"
            for name, value in flat.items():
                if name.startswith(prefix):
                    out[f"adaptors_{stack}/" + name.removeprefix(prefix)] = value
    return out
