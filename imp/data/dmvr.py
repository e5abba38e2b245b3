"""Decoding of the on-disk format: DMVR `tf.train.SequenceExample`s (as VATT and IMP use).

Context: `clip/label/index` (int64 list), `clip/label/string`, `caption/string` (bytes
list). Sequence: `image/encoded` (one JPEG per frame; a still image is one frame) and
`WAVEFORM/feature/floats` (the mono waveform, in one step or spread over several).
All functions are TF ops, run inside the tf.data graph.
"""

import tensorflow as tf

LABEL = "clip/label/index"
LABEL_STRING = "clip/label/string"
CAPTION = "caption/string"
FRAMES = "image/encoded"
WAVEFORM = "WAVEFORM/feature/floats"


def parse(serialized: tf.Tensor, waveform: bool = False) -> dict[str, tf.Tensor]:
    """One serialised SequenceExample -> `{frames, label, captions[, waveform]}` tensors."""
    context_spec = {
        LABEL: tf.io.VarLenFeature(tf.int64),
        CAPTION: tf.io.VarLenFeature(tf.string),
    }
    sequence_spec = {FRAMES: tf.io.FixedLenSequenceFeature([], tf.string)}
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


def decode_frames(encoded: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """`[T]` JPEG bytes -> `[T, height, width, 3]` float32 in [-1, 1] (ViT's value range),
    resized if needed."""
    frames = tf.map_fn(
        lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3),
        encoded,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    frames = tf.image.convert_image_dtype(frames, tf.float32)
    if frames.shape[1:3] != (height, width):
        frames = tf.image.resize(frames, (height, width), antialias=True)
    return tf.ensure_shape(frames * 2.0 - 1.0, [None, height, width, 3])


def sample_clip(
    frames: tf.Tensor, num_frames: int, stride: int, seed: tf.Tensor | None
) -> tf.Tensor:
    """`num_frames` frames `stride` apart: a random start when `seed` is given, else central.

    Clips shorter than needed wrap around (loop the video), as DMVR's sampling does.
    """
    total = tf.shape(frames)[0]
    span = (num_frames - 1) * stride + 1
    room = tf.maximum(total - span, 0)
    if seed is None:
        start = room // 2
    else:
        start = tf.random.stateless_uniform([], seed, 0, room + 1, dtype=tf.int32)
    indices = (start + tf.range(num_frames) * stride) % total
    return tf.gather(frames, indices)
