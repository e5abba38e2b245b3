"""Scenes of the demo world, for UniT's tasks (seed 002): detection and visual questions.

A scene is a 64x64 canvas with 1 to `MAX_OBJECTS` of the split's digit glyphs (24x24, the
size of the demo's still images, in random bright colours) at random places where they do not
overlap. Each scene is one record of `digit_scenes` (its digits' classes and boxes, for
detection) and two of `digit_questions`
(the scene with a question and its answer: "how many digits are there" -> one .. four, "is
there a seven" -> yes / no, each half of the time). Glyphs of the
held-out split appear only in held-out scenes.

Boxes are stored as DMVR context floats `image/object/bbox/{xmin,ymin,xmax,ymax}` in [0, 1] of
the frame, with `image/object/class/label` (`imp.data.dmvr`); every record also names its
digits (`clip/label/digit`) and their rows of `load_digits` (`clip/source_index`).
"""

import numpy as np

from imp.data import dmvr

CANVAS = 64
GLYPH = 24  # each 8x8 digit upscaled 3 times, as in the demo's images
MAX_OBJECTS = 4
COUNTS = ("one", "two", "three", "four")
ANSWERS = (*COUNTS, "yes", "no")
_PLACEMENT_TRIES = 100


def questions(number_words: tuple[str, ...]) -> list[str]:
    """Every question a scene can be asked."""
    return ["how many digits are there"] + [f"is there a {w}" for w in number_words]


def records(
    glyphs: np.ndarray,
    digits: np.ndarray,
    sources: np.ndarray,
    number_words: tuple[str, ...],
    rng: np.random.Generator,
) -> tuple[list[bytes], list[bytes]]:
    """Serialised scenes (one per source row of the split) and their two questions each."""
    step = glyphs.shape[1] // 8  # the 8x8 digit's pixels, each upscaled to GLYPH / 8
    scaled = np.kron(glyphs[:, ::step, ::step], np.ones((1, GLYPH // 8, GLYPH // 8)))
    scenes, asked = [], []
    for _ in sources:
        count = int(rng.integers(1, MAX_OBJECTS + 1))
        chosen = rng.choice(sources, size=count, replace=count > len(sources))
        corners = _place(count, rng)
        frame = _paint(scaled[chosen], corners, rng)
        labels = [int(digits[s]) for s in chosen]
        boxes = [
            (col / CANVAS, row / CANVAS, (col + GLYPH) / CANVAS, (row + GLYPH) / CANVAS)
            for row, col in corners
        ]
        # Which digits, from which rows of `load_digits`: the held-out split's are its own.
        extra = {"clip/label/digit": labels, "clip/source_index": [int(s) for s in chosen]}
        scenes.append(
            dmvr.encode(frame, labels=labels, boxes=boxes, box_labels=labels, extra_context=extra)
        )
        absent = [d for d in range(10) if d not in labels]
        asked_about = int(rng.choice(labels) if rng.random() < 0.5 else rng.choice(absent))
        for question, answer in (
            ("how many digits are there", COUNTS[count - 1]),
            (f"is there a {number_words[asked_about]}", "yes" if asked_about in labels else "no"),
        ):
            index = ANSWERS.index(answer)
            asked.append(
                dmvr.encode(
                    frame,
                    captions=[question],
                    labels=[index],
                    label_strings=[answer],
                    extra_context=extra,
                )
            )
    return scenes, asked


def _place(count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of `count` glyphs that do not overlap."""
    while True:
        corners: list[tuple[int, int]] = []
        for _ in range(_PLACEMENT_TRIES):
            row, col = (int(v) for v in rng.integers(CANVAS - GLYPH + 1, size=2))
            if all(abs(row - r) >= GLYPH or abs(col - c) >= GLYPH for r, c in corners):
                corners.append((row, col))
                if len(corners) == count:
                    return corners


def _paint(glyphs: np.ndarray, corners, rng: np.random.Generator) -> np.ndarray:
    """One frame `[1, CANVAS, CANVAS, 3]` uint8: each glyph in its own colour over dark noise."""
    frame = rng.uniform(0, 48, size=3) + rng.normal(0, 8, size=(CANVAS, CANVAS, 3))
    for glyph, (row, col) in zip(glyphs, corners, strict=True):
        alpha = glyph[:, :, None]
        patch = frame[row : row + GLYPH, col : col + GLYPH]
        patch[:] = patch * (1 - alpha) + rng.uniform(128, 256, size=3) * alpha
    return np.clip(np.round(frame), 0, 255).astype(np.uint8)[None]
