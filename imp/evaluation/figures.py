"""Figures of held-out predictions: a detection task's predicted and true boxes."""

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from imp.evaluation import metrics  # noqa: E402


def detections(
    images: np.ndarray,
    class_logits: np.ndarray,
    boxes: np.ndarray,
    object_labels: np.ndarray,
    object_boxes: np.ndarray,
    class_names,
    path: Path,
) -> None:
    """One panel per image (`[N, H, W, 3]` in [-1, 1]): true boxes dashed green with their
    class; as many predicted boxes as the image has objects, the most probable first, red
    with class and score (so a model that places boxes before it tells classes apart shows
    where it looks)."""
    classes, scores, corners = metrics.detections(class_logits, boxes)
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        height, width = images[i].shape[:2]
        ax.imshow(np.clip((images[i] + 1) / 2, 0, 1))
        ax.set_axis_off()
        for label, (cx, cy, w, h) in zip(object_labels[i], object_boxes[i], strict=True):
            if label >= 0:
                x, y = (cx - w / 2) * width, (cy - h / 2) * height
                ax.add_patch(
                    Rectangle((x, y), w * width, h * height, fill=False, ec="lime", ls="--")
                )
                ax.text(x, y + h * height, class_names[label], color="lime", va="top", fontsize=7)
        best = np.argsort(-scores[i])[: int((object_labels[i] >= 0).sum())]
        for c, s, (x0, y0, x1, y1) in zip(
            classes[i][best], scores[i][best], corners[i][best], strict=True
        ):
            box = (x0 * width, y0 * height), (x1 - x0) * width, (y1 - y0) * height
            ax.add_patch(Rectangle(*box, fill=False, ec="red"))
            ax.text(x0 * width, y0 * height, f"{class_names[c]} {s:.2f}", color="red", fontsize=7)
    title = "held-out images: true boxes (green, dashed), the most probable predictions (red)"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
