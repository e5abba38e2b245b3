"""Per-example preprocessing as TF ops (run inside the tf.data graph, in parallel).

Vision: JPEG frames -> clip sampling (random start in training; central, or several evenly
spaced clips, in evaluation) -> random resized crop and optional flip in training, a central
crop (or several spatial crops) in evaluation -> values in [-1, 1]. Audio: the waveform window
aligned with the sampled clip, and its log-mel spectrogram. Text: one random caption in
training, all in evaluation. Labels: an index, or multi-hot over the classes for multi-label
(sigmoid) objectives. Randomness comes from stateless seeds, so a stream is reproducible from
its seed.
"""

import tensorflow as tf


def decode_frames(encoded: tf.Tensor) -> tf.Tensor:
    """`[T]` JPEG bytes -> `[T, H, W, 3]` uint8 (all frames of a clip share one size)."""
    return tf.map_fn(
        lambda image: tf.io.decode_jpeg(image, channels=3),
        encoded,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )


def clip_starts(
    total: tf.Tensor, num_frames: int, stride: int, num_clips: int, seed: tf.Tensor | None
) -> tf.Tensor:
    """`[num_clips]` first-frame indices of clips of `num_frames` frames `stride` apart.

    With a seed: one uniformly random start (training). Without: `num_clips` starts spread
    evenly over the video, the middle one when `num_clips` is 1 (evaluation).
    """
    span = (num_frames - 1) * stride + 1
    room = tf.maximum(total - span, 0)
    if seed is not None:
        if num_clips != 1:
            raise ValueError("training samples one clip per example")
        return tf.random.stateless_uniform([1], seed, 0, room + 1, dtype=tf.int32)
    if num_clips == 1:
        return tf.reshape(room // 2, [1])
    fractions = tf.linspace(0.0, 1.0, num_clips)
    return tf.cast(tf.round(fractions * tf.cast(room, tf.float32)), tf.int32)


def random_resized_crop(
    frames: tf.Tensor,
    height: int,
    width: int,
    seed: tf.Tensor,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Inception-style crop: one random box (area fraction in `scale`, aspect in `ratio`),
    the same for every frame, resized to `[T, height, width, 3]` float32 in [0, 255]."""
    shape = tf.shape(frames)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape[1:],
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(frames, [0, begin[0], begin[1], 0], [-1, size[0], size[1], -1])
    return tf.image.resize(crop, (height, width), antialias=True)


def spatial_crops(frames: tf.Tensor, height: int, width: int, num_crops: int) -> tf.Tensor:
    """`num_crops` boxes of the target's aspect ratio, as large as fit, evenly spaced along the
    frame's room for them (the first at one end, the last at the other; a single one central),
    each resized: `[num_crops, T, height, width, 3]` float32 in [0, 255]. Three crops along the
    longer side are the spatial views of ViViT's multi-view evaluation (seed 001)."""
    shape = tf.shape(frames)
    h, w = shape[1], shape[2]
    # Crop height ch and width cw with ch / cw = height / width, as large as fits.
    ch = tf.minimum(h, w * height // width)
    cw = tf.minimum(w, h * width // height)
    fractions = tf.linspace(0.0, 1.0, num_crops) if num_crops > 1 else tf.constant([0.5])

    def offsets(room):
        return tf.cast(tf.round(fractions * tf.cast(room, tf.float32)), tf.int32)

    boxes = tf.stack([offsets(h - ch), offsets(w - cw)], axis=1)  # [num_crops, 2]
    return tf.map_fn(
        lambda box: tf.image.resize(
            tf.slice(frames, [0, box[0], box[1], 0], [-1, ch, cw, -1]),
            (height, width),
            antialias=True,
        ),
        boxes,
        fn_output_signature=tf.TensorSpec([None, height, width, None], tf.float32),
    )


def random_flip(frames: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors every frame of the clip left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)


def to_unit_range(frames: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1] (ViT's input range)."""
    return tf.cast(frames, tf.float32) / 127.5 - 1.0


def waveform_window(
    waveform: tf.Tensor, start_frame: tf.Tensor, fps: float, sample_rate: int, num_samples: int
) -> tf.Tensor:
    """`[num_samples]` of audio from the time of frame `start_frame`, zero-padded at the end."""
    start = tf.cast(tf.round(tf.cast(start_frame, tf.float32) * sample_rate / fps), tf.int32)
    start = tf.minimum(start, tf.maximum(tf.shape(waveform)[0] - num_samples, 0))
    window = waveform[start : start + num_samples]
    window = tf.pad(window, [[0, num_samples - tf.shape(window)[0]]])
    return tf.ensure_shape(window, [num_samples])


def log_mel(
    waveform: tf.Tensor,
    sample_rate: int,
    num_mel_bins: int,
    frame_length: int,
    frame_step: int,
    fft_length: int | None = None,
) -> tf.Tensor:
    """`[..., samples]` -> log-mel spectrogram `[..., time, num_mel_bins]` (Hann-windowed STFT,
    the end zero-padded to whole frames, so time = ceil(samples / frame_step); power spectrum,
    HTK mel filters up to Nyquist; `log(x + 1e-6)`)."""
    fft_length = fft_length or 1 << (frame_length - 1).bit_length()
    stft = tf.signal.stft(waveform, frame_length, frame_step, fft_length, pad_end=True)
    power = tf.math.square(tf.abs(stft))
    filters = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins, fft_length // 2 + 1, sample_rate, 0.0, sample_rate / 2
    )
    return tf.math.log(tf.tensordot(power, filters, 1) + 1e-6)


def num_spectrogram_frames(num_samples: int, frame_step: int) -> int:
    return -(-num_samples // frame_step)


def pick_caption(captions: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One of `[num_captions]` strings, uniformly at random."""
    index = tf.random.stateless_uniform([], seed, 0, tf.shape(captions)[0], tf.int32)
    return captions[index]


def multi_hot(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """`[num_labels]` class indices -> `[num_classes]` float32 with ones at the labels."""
    return tf.minimum(tf.reduce_sum(tf.one_hot(labels, num_classes), axis=0), 1.0)
