"""Decoding of media files for `imp data convert`, with PyAV (FFmpeg) and Pillow.

Runs in worker processes, so it imports neither TensorFlow nor JAX. Video frames are picked
at a fixed frame rate by timestamp and resized so the shorter side has a fixed length; audio
is resampled to mono float32 at a fixed sample rate.
"""

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class MediaError(Exception):
    """A file that cannot be converted (unreadable, corrupt, no usable stream)."""


@dataclasses.dataclass(frozen=True)
class Options:
    fps: float = 25.0
    short_side: int = 256  # frames are resized so that min(height, width) == short_side
    sample_rate: int = 16000
    max_seconds: float = 30.0  # longer media are cut
    jpeg_quality: int = 90


@dataclasses.dataclass
class Media:
    frames: list[bytes]  # JPEG per frame; empty for audio files
    waveform: np.ndarray | None  # [samples] float32 mono, or None without audio


def decode(path: str | Path, options: Options) -> Media:
    """Frames and audio of one file; raises `MediaError` saying why it cannot."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"))
            return Media(
                [encode_jpeg(_resize(frame, options.short_side), options.jpeg_quality)], None
            )
        if suffix in VIDEO_SUFFIXES + AUDIO_SUFFIXES:
            return _decode_av(path, options, video=suffix in VIDEO_SUFFIXES)
    except MediaError:
        raise
    except Exception as error:  # PyAV and Pillow raise many types for bad files
        raise MediaError(f"{type(error).__name__}: {error}") from None
    raise MediaError(f"unsupported file type '{suffix}'")


def decode_or_reason(job: tuple[str, Options]) -> Media | str:
    """`decode` for a worker pool: the media, or why the file cannot be converted."""
    path, options = job
    try:
        return decode(path, options)
    except MediaError as error:
        return str(error)


def _decode_av(path, options: Options, video: bool) -> Media:
    import av  # noqa: PLC0415 (only workers need FFmpeg)

    frames = []
    if video:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            next_time = 0.0
            for frame in container.decode(stream):
                if frame.time is None or frame.time > options.max_seconds:
                    break
                if frame.time + 1e-6 >= next_time:  # first frame at or after each tick
                    rgb = frame.to_ndarray(format="rgb24")
                    frames.append(
                        encode_jpeg(_resize(rgb, options.short_side), options.jpeg_quality)
                    )
                    next_time += 1.0 / options.fps
        if not frames:
            raise MediaError("no video frames decoded")
    return Media(frames, _audio(path, options, required=not video))


def _audio(path, options: Options, required: bool) -> np.ndarray | None:
    import av  # noqa: PLC0415

    with av.open(str(path)) as container:
        if not container.streams.audio:
            if required:
                raise MediaError("no audio stream")
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=options.sample_rate)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        if required:
            raise MediaError("no audio samples decoded")
        return None
    waveform = np.concatenate(chunks)[: int(options.max_seconds * options.sample_rate)]
    return np.clip(waveform, -1.0, 1.0).astype(np.float32)


def _resize(frame: np.ndarray, short_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    if scale == 1.0:
        return frame
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """`[H, W, 3]` uint8 -> JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(frame, mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
