"""The on-disk format: DMVR `tf.train.SequenceExample`s in TFRecord shards (as VATT and IMP use).

Context: `clip/label/index` (int64 list), `clip/label/string`, `caption/string` (bytes
lists). Sequence: `image/encoded` (one JPEG per frame; a still image is one frame) and
`WAVEFORM/feature/floats` (the mono waveform, in one step or spread over several).
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
JPEG_QUALITY = 90


def encode(
    frames: list[bytes] | np.ndarray | None = None,
    waveform: np.ndarray | None = None,
    captions: list[str] = (),
    labels: list[int] = (),
    label_strings: list[str] = (),
    extra_context: dict[str, list[int] | list[bytes]] | None = None,
) -> bytes:
    """One serialised SequenceExample.

    Args:
      frames: JPEG bytes per frame, or `[T, H, W, 3]` uint8 frames to encode as JPEG.
      waveform: mono `[num_samples]` float32 in [-1, 1], stored as one step.
      captions, labels, label_strings: the clip's texts and class indices / names.
      extra_context: further int64 or bytes context features, kept as they are.
    """
    example = tf.train.SequenceExample()
    context = {
        LABEL: list(labels),
        LABEL_STRING: [s.encode() for s in label_strings],
        CAPTION: [c.encode() for c in captions],
        **(extra_context or {}),
    }
    for key, values in context.items():
        if not len(values):
            continue
        feature = example.context.feature[key]
        if isinstance(values[0], bytes):
            feature.bytes_list.value.extend(values)
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


def parse(serialized: tf.Tensor, waveform: bool = False) -> dict[str, tf.Tensor]:
    """One serialised SequenceExample -> `{frames, label, captions[, waveform]}` tensors.

    Absent features come back empty (size 0), for the caller to report.
    """
    context_spec = {
        LABEL: tf.io.VarLenFeature(tf.int64),
        CAPTION: tf.io.VarLenFeature(tf.string),
    }
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
    return out
