"""Video bytes <-> uint8 frame arrays with PyAV (FFmpeg), and temporal sampling."""

from __future__ import annotations

import io

import av
import numpy as np


class CorruptVideo(ValueError):
    """Raised for bytes that FFmpeg cannot turn into frames; the loader skips and counts them."""


def encode_mp4(frames: np.ndarray, fps: float = 8.0, crf: int = 23, gop: int | None = None) -> bytes:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as H.264 in an mp4 container."""
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # One thread and cpu-independent: identical frames give identical bytes on any CPU.
        stream.options = {"crf": str(crf), "threads": "1", "x264-params": "cpu-independent=1"}
        if gop:
            stream.codec_context.gop_size = gop
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return buf.getvalue()


def decode_frames(data: bytes) -> np.ndarray:
    """Decode every frame of a video to (T, H, W, 3) uint8 RGB; raise CorruptVideo on failure."""
    try:
        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError, IndexError, EOFError) as e:
        raise CorruptVideo(f"cannot decode video: {e}") from e
    if not frames:
        raise CorruptVideo("video has no decodable frames")
    return np.stack(frames)


def sample_indices(num_frames: int, num_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """Pick ``num_samples`` frame indices spread uniformly over the video.

    Training (``rng`` given) jitters each pick inside its segment; evaluation takes the
    segment centres. Videos shorter than ``num_samples`` repeat frames.
    """
    edges = np.linspace(0, num_frames, num_samples + 1)
    if rng is None:
        picks = (edges[:-1] + edges[1:]) / 2
    else:
        picks = edges[:-1] + rng.random(num_samples) * (edges[1:] - edges[:-1])
    return np.clip(picks.astype(np.int64), 0, num_frames - 1)
