"""Evaluation metrics on embeddings and features (numpy, host side).

Ranks are 1-based and pessimistic on ties: a wrong item scoring exactly as high as the best
right one counts as ranked above it, so constant embeddings never look perfect. No metric is
computed from scores that are not finite: NaN compares false with everything, so a NaN
score would rank every positive first.
"""

import numpy as np

from imp.errors import ImpError


def check_finite(what: str, *arrays: np.ndarray) -> None:
    """An `ImpError` naming `what` when any value of `arrays` is NaN or infinite."""
    for array in arrays:
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ImpError(
                f"{what}: {bad} of {np.size(array)} values are not finite (NaN or inf); no "
                "metric is computed from them"
            )


def format_cell(value: float | None) -> str:
    """A value or chance level in a printed table, 8 wide; "-" where there is none."""
    return f"{value:>8.3f}" if value is not None else f"{'-':>8}"


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """`scores` `[N, C]`, `labels` `[N]`: the fraction whose label is among the k best
    classes (pessimistic ties: rank = 1 + classes scoring at least the label's, but itself)."""
    check_finite("top-k accuracy scores", scores)
    rank = _rank_of_best_positive(scores, np.eye(scores.shape[1], dtype=bool)[labels])
    return {f"top{k}": float(np.mean(rank <= k)) for k in ks if k <= scores.shape[1]}


def _rank_of_best_positive(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per row of `scores` `[Q, G]`: 1 + the number of negatives scoring at least as high as
    the best-scoring positive (`positive` `[Q, G]` bool, at least one per row)."""
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    return 1 + np.sum((scores >= best) & ~positive, axis=1)


def retrieval(queries: np.ndarray, gallery: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Cosine retrieval: R@1, R@5, R@10 (a positive among the first k) and the median rank of
    the best positive. `positive[q, g]` marks the right gallery items of query q (several
    captions per video: several positives)."""
    check_finite("retrieval embeddings", queries, gallery)
    scores = normalise(queries) @ normalise(gallery).T
    rank = _rank_of_best_positive(scores, positive)
    out = {f"R@{k}": float(np.mean(rank <= k)) for k in (1, 5, 10)}
    out["median_rank"] = float(np.median(rank))
    return out


def distinct_captions(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From the caption token ids `[N, K, L]` (all-padding rows are absent captions): the
    index in the flattened `[N * K]` list of one caption per distinct text, and
    `[texts, items]` positives (item i has that text among its captions).

    Retrieval runs over distinct texts: copies of one string embed identically, so among
    copies no ranking is meaningful, and a gallery of copies would push every wrong text
    ahead of the right one as many times as it is repeated."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    present = np.flatnonzero(flat[:, 0] > 0)
    _, first, text_id = np.unique(flat[present], axis=0, return_index=True, return_inverse=True)
    positive = np.zeros((len(first), len(tokens)), bool)
    positive[text_id.reshape(-1), present // tokens.shape[1]] = True
    return present[first], positive


def retrieval_chance(positive: np.ndarray, k: int = 1) -> float:
    """R@k of a random ranking: the chance that one of a query's positives is in its top k."""
    g = positive.shape[1]
    p = positive.sum(axis=1)
    # 1 - C(g - p, k) / C(g, k), computed as a product.
    miss = np.ones(len(p))
    for i in range(k):
        miss *= np.clip((g - p - i) / (g - i), 0, 1)
    return float(np.mean(1 - miss))


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    regularisations=(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """Closed-form ridge regression onto one-hot targets (a linear classifier on frozen
    features). The regularisation is picked on a held-out part of the training features,
    then the probe is refitted on all of them; returns test top-1 and the chosen strength."""
    check_finite("linear probe features", train_x, test_x)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    order = np.random.default_rng(seed).permutation(len(train_x))
    cut = max(1, int(len(order) * validation_fraction))
    held, fit = order[:cut], order[cut:]

    def solve(x, y, strength):
        x = np.concatenate([x, np.ones((len(x), 1))], axis=1)  # bias column
        targets = np.eye(num_classes)[y]
        gram = x.T @ x + strength * len(x) * np.eye(x.shape[1])
        return np.linalg.solve(gram, x.T @ targets)

    def accuracy(w, x, y):
        x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        return float(np.mean((x @ w).argmax(1) == y))

    scores = {
        s: accuracy(solve(train_x[fit], train_y[fit], s), train_x[held], train_y[held])
        for s in regularisations
    }
    best = max(scores, key=lambda s: (scores[s], s))  # ties: the stronger regularisation
    w = solve(train_x, train_y, best)
    return {"top1": accuracy(w, test_x, test_y), "regularisation": best}


def detections(class_logits: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    """DETR's reading of a detection head: per query, the most probable class other than
    "no object" (the last), its probability as the score, and the box as corners. Inputs
    `[N, queries, classes + 1]` and `[N, queries, 4]` `(cx, cy, w, h)`; returns classes,
    scores `[N, queries]` and boxes `[N, queries, 4]` `(x0, y0, x1, y1)`."""
    check_finite("detection scores and boxes", class_logits, boxes)
    logits = class_logits - class_logits.max(-1, keepdims=True)
    probability = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    classes = probability[..., :-1].argmax(-1)
    scores = np.take_along_axis(probability, classes[..., None], -1)[..., 0]
    centre, size = boxes[..., :2], boxes[..., 2:]
    return classes, scores, np.concatenate([centre - size / 2, centre + size / 2], -1)


def detection_ap(
    class_logits: np.ndarray,
    boxes: np.ndarray,
    object_labels: np.ndarray,
    object_boxes: np.ndarray,
    num_classes: int,
) -> dict[str, float]:
    """COCO's box AP (over IoU 0.5:0.95), AP50 and AP75, by pycocotools, of every query's
    detection (`detections`) against the objects (`object_labels` `[N, max_objects]`, -1
    for none; `object_boxes` `(cx, cy, w, h)` in [0, 1]). Boxes are scaled to a 100-pixel
    image, so COCO's area ranges play no part."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    classes, scores, corners = detections(class_logits, boxes)
    scale = 100.0
    images = [{"id": i, "width": scale, "height": scale} for i in range(len(object_labels))]
    annotations = []
    for i, (labels, objects) in enumerate(zip(object_labels, object_boxes, strict=True)):
        for label, (cx, cy, w, h) in zip(labels, objects, strict=True):
            if label >= 0:
                box = [scale * (cx - w / 2), scale * (cy - h / 2), scale * w, scale * h]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": int(label),
                        "bbox": box,
                        "area": box[2] * box[3],
                        "iscrowd": 0,
                    }
                )
    results = [
        {
            "image_id": i,
            "category_id": int(c),
            "bbox": [
                scale * b[0],
                scale * b[1],
                scale * (b[2] - b[0]),
                scale * (b[3] - b[1]),
            ],
            "score": float(s),
        }
        for i in range(len(classes))
        for c, s, b in zip(classes[i], scores[i], corners[i], strict=True)
    ]
    if not annotations:
        raise ImpError("detection AP: the evaluation split has no objects")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in range(num_classes)],
        }
        truth.createIndex()
        found = truth.loadRes(results)
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.params.maxDets = [1, 10, max(100, classes.shape[1])]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ap, ap50, ap75 = (float(max(v, 0.0)) for v in evaluation.stats[:3])
    return {"AP": ap, "AP50": ap50, "AP75": ap75}


def exact_match(answers: list[str], references: list[list[str]]) -> float:
    """The share of answers equal to one of their references (seed 003's accuracy for
    classification and questions as text: only exact strings count), spaces at the ends
    aside."""
    if not answers:
        raise ImpError("exact match: no answers")
    hits = [
        a.strip() in {r.strip() for r in refs} for a, refs in zip(answers, references, strict=True)
    ]
    return float(np.mean(hits))


def caption_scores(answers: list[str], references: list[list[str]]) -> dict[str, float]:
    """BLEU-4 and CIDEr (COCO's caption evaluation, `pycocoevalcap`) of generated captions
    against each one's references. Captions are compared as lower-case words split at spaces
    (the demo's captions hold no punctuation for the PTB tokenizer, which needs Java)."""
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if not answers or any(not refs for refs in references):
        raise ImpError("caption scores: every caption needs at least one reference")

    def words(text: str) -> str:
        return " ".join(text.lower().split())

    truth = {i: [words(r) for r in refs] for i, refs in enumerate(references)}
    generated = {i: [words(a)] for i, a in enumerate(answers)}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its lengths
        bleu, _ = Bleu(4).compute_score(truth, generated, verbose=0)
        cider, _ = Cider().compute_score(truth, generated)
    return {"BLEU-4": float(bleu[3]), "CIDEr": float(cider)}
