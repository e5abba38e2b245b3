"""The on-disk format: DMVR `tf.train.SequenceExample`s in TFRecord shards (as VATT and IMP use).

Context: `clip/label/index` (int64 list), `clip/label/string`, `caption/string` (bytes
lists). Sequence: `image/encoded` (one JPEG per frame; a still image is one frame) and
`WAVEFORM/feature/floats` (the mono waveform, in one step or spread over several). Objects of
a detection data set are context features as the TensorFlow Object Detection API names them:
`image/object/bbox/{xmin,ymin,xmax,ymax}` (floats in [0, 1] of the frame) and
`image/object/class/label` (int64), one entry per object.
`encode` writes one example (numpy, on the host); `read_file` and `parse` read them back as TF
ops inside the tf.data graph, keeping the file name so errors can name it.
"""

import numpy as np
import tensorflow as tf

from imp.data.media import encode_jpeg

LABEL = "clip/label/index"
LABEL_STRING = "clip/label/string"
CAPTION = "caption/string"
FRAMES = "image/encoded"
WAVEFORM = "WAVEFORM/feature/floats"
BOX = tuple(f"image/object/bbox/{c}" for c in ("xmin", "ymin", "xmax", "ymax"))
BOX_LABEL = "image/object/class/label"
JPEG_QUALITY = 90


def encode(
    frames: list[bytes] | np.ndarray | None = None,
    waveform: np.ndarray | None = None,
    captions: list[str] = (),
    labels: list[int] = (),
    label_strings: list[str] = (),
    extra_context: dict[str, list[int] | list[bytes]] | None = None,
    boxes: list[tuple[float, float, float, float]] = (),
    box_labels: list[int] = (),
) -> bytes:
    """One serialised SequenceExample.

    Args:
      frames: JPEG bytes per frame, or `[T, H, W, 3]` uint8 frames to encode as JPEG.
      waveform: mono `[num_samples]` float32 in [-1, 1], stored as one step.
      captions, labels, label_strings: the clip's texts and class indices / names.
      extra_context: further int64 or bytes context features, kept as they are.
      boxes, box_labels: objects' `(xmin, ymin, xmax, ymax)` in [0, 1] and classes.
    """
    example = tf.train.SequenceExample()
    context = {
        LABEL: list(labels),
        LABEL_STRING: [s.encode() for s in label_strings],
        CAPTION: [c.encode() for c in captions],
        **(extra_context or {}),
        BOX_LABEL: list(box_labels),
        **{key: [float(b[i]) for b in boxes] for i, key in enumerate(BOX)},
    }
    for key, values in context.items():
        if not len(values):
            continue
        feature = example.context.feature[key]
        if isinstance(values[0], bytes):
            feature.bytes_list.value.extend(values)
        elif isinstance(values[0], float):
            feature.float_list.value.extend(values)
        else:
            feature.int64_list.value.extend(int(v) for v in values)
    if frames is not None:
        images = example.feature_lists.feature_list[FRAMES]
        for frame in frames:
            encoded = frame if isinstance(frame, bytes) else encode_jpeg(frame, JPEG_QUALITY)
            images.feature.add().bytes_list.value.append(encoded)
    if waveform is not None:
        audio = example.feature_lists.feature_list[WAVEFORM]
        audio.feature.add().float_list.value.extend(np.asarray(waveform, np.float32).tolist())
    # Feature maps serialise in arbitrary order unless asked for determinism.
    return example.SerializeToString(deterministic=True)


def read_file(path: tf.Tensor) -> tf.data.Dataset:
    """A TFRecord file -> `{"serialized", "source_file"}` elements (seqio `read_file_fn`)."""
    return tf.data.TFRecordDataset(path).map(
        lambda record: {"serialized": record, "source_file": path}
    )


def parse(serialized: tf.Tensor, waveform: bool = False, objects: bool = False) -> dict:
    """One serialised SequenceExample -> `{frames, label, captions[, waveform][,
    object_labels, object_boxes]}` tensors (`object_boxes` `[objects, 4]` corners).

    Absent features come back empty (size 0), for the caller to report.
    """
    context_spec = {
        LABEL: tf.io.VarLenFeature(tf.int64),
        CAPTION: tf.io.VarLenFeature(tf.string),
    }
    if objects:
        context_spec[BOX_LABEL] = tf.io.VarLenFeature(tf.int64)
        context_spec.update({key: tf.io.VarLenFeature(tf.float32) for key in BOX})
    sequence_spec = {FRAMES: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)}
    if waveform:
        sequence_spec[WAVEFORM] = tf.io.VarLenFeature(tf.float32)
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features=context_spec, sequence_features=sequence_spec
    )
    out = {
        "frames": sequence[FRAMES],  # [T] JPEG bytes
        "label": tf.sparse.to_dense(context[LABEL]),  # [num_labels] int64
        "captions": tf.sparse.to_dense(context[CAPTION]),  # [num_captions] bytes
    }
    if waveform:
        out["waveform"] = tf.reshape(tf.sparse.to_dense(sequence[WAVEFORM]), [-1])
    if objects:
        out["object_labels"] = tf.sparse.to_dense(context[BOX_LABEL])
        coordinates = [tf.sparse.to_dense(context[key]) for key in BOX]
        sizes = [tf.size(c) for c in coordinates]
        # Coordinate lists of unequal lengths cannot pair up: empty boxes, for `_checked`.
        equal = tf.reduce_all(tf.equal(sizes, tf.size(out["object_labels"])))
        out["object_boxes"] = tf.cond(
            equal, lambda: tf.stack(coordinates, axis=1), lambda: tf.zeros([0, 4])
        )
    return out
