"""Video bytes -> uint8 frame arrays with PyAV (FFmpeg), and temporal sampling.

Decoding is the loader's main cost, so ``read_frames`` does only the work the sampled
clip needs: frame indices are chosen from the container's metadata before any decoding,
the decoder seeks to the keyframe before each needed stretch and stops after its last
needed frame, skips the non-reference frames it does not need (FFmpeg's ``skip_frame``: no
other frame is predicted from them, so the needed ones decode to the same pixels; with x264's
default B-frames that is ~45% of the frames leading to a pick), and only needed frames are
converted to RGB.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Callable, Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from turbo_ds.data.errors import DataError

# PyAV's ``frame.to_ndarray(format=...)`` builds a new swscale context for every frame,
# which costs more than decoding a small frame; one shared reformatter caches it. PyAV >= 17
# scales with a thread pool by default: ask for one thread, which is faster at these sizes
# and leaves no threads in the cached context for a forked loader worker to deadlock on.
_RGB = VideoReformatter()
_RGB_OPTIONS = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}
DECODE_ERRORS = (av.error.FFmpegError, ValueError, IndexError, EOFError)
_GOP_SCAN = 1000  # index entries read to find the first two keyframes (bounded cost on long videos)


class CorruptVideo(DataError):
    """Raised for bytes that FFmpeg cannot turn into frames; the loader skips and counts them."""


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    return _RGB.reformat(frame, format="rgb24", **_RGB_OPTIONS).to_ndarray()  # (H, W, 3) uint8


def _open_stream(container: av.container.InputContainer, threads: int) -> av.video.stream.VideoStream:
    stream = container.streams.video[0]
    # Threads pay off only for large frames; with one loader process per core, 1 is fastest.
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = threads  # 0: FFmpeg picks
    return stream


def decode_frames(data: bytes, threads: int = 1) -> np.ndarray:
    """Decode every frame of a video to (F, H, W, 3) uint8 RGB; raise CorruptVideo on failure."""
    try:
        with av.open(io.BytesIO(data)) as container:
            frames = [_rgb(f) for f in container.decode(_open_stream(container, threads))]
    except DECODE_ERRORS as e:
        raise CorruptVideo(f"cannot decode video: {e}") from e
    if not frames:
        raise CorruptVideo("video has no decodable frames")
    return np.stack(frames)


def read_frames(data: bytes, choose: Callable[[int], np.ndarray], threads: int = 1) -> np.ndarray:
    """Decode only the frames ``choose(num_frames)`` picks: (len(picks), H, W, 3) uint8, in pick order.

    ``num_frames`` comes from the container's metadata; when that is missing or turns out
    wrong (variable frame rate, fewer frames than announced) or seeking fails, every frame
    is decoded and ``choose`` is asked again with the true count. Raises CorruptVideo when
    the bytes cannot be decoded at all.
    """
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = _open_stream(container, threads)
            timing = _frame_timing(stream)
            if timing is not None:
                frames = _decode_picks(container, stream, np.asarray(choose(timing[0])), *timing[1:])
                if frames is not None:
                    return frames
    except DECODE_ERRORS:
        pass  # decoding everything below tells a corrupt video from one that only resists seeking
    frames = decode_frames(data, threads)
    return frames[choose(len(frames))]


def _frame_timing(stream: av.video.stream.VideoStream) -> tuple[int, int, Fraction, float] | None:
    """(frame count, first pts, frames per pts tick, keyframe spacing in frames) from metadata, or None."""
    rate, tb = stream.average_rate or stream.guessed_rate, stream.time_base
    if not rate or not tb:
        return None
    per_tick = Fraction(rate) * tb
    if stream.frames:
        count = stream.frames
    elif stream.duration:
        count = round(stream.duration * per_tick)
    else:  # e.g. Matroska: only the container's duration (an overestimate is caught while decoding)
        count = round(Fraction(stream.container.duration or 0, av.time_base) * Fraction(rate))
    if count < 1:
        return None
    # Keyframe spacing from the first two keyframes in the index (mp4: every sample; mkv: cues;
    # PyAV < 17 has no index: then no seeking, decoding runs from the start to the last pick).
    index, keys = getattr(stream, "index_entries", ()), []
    for i in range(min(len(index), _GOP_SCAN)):
        if index[i].is_keyframe:
            keys.append(index[i].timestamp)
            if len(keys) == 2:
                break
    gop = float((keys[1] - keys[0]) * per_tick) if len(keys) == 2 else float("inf")
    return count, stream.start_time or 0, per_tick, gop


def _decode_needed(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   needed: Callable[[int], bool]) -> Iterator[av.VideoFrame]:
    """``container.decode(stream)`` without the non-reference frames whose packet timestamp ``needed`` rejects:
    the decoder skips those (no other frame refers to them); every other frame comes out as usual."""
    context = stream.codec_context
    for packet in container.demux(stream):
        context.skip_frame = "DEFAULT" if packet.pts is None or needed(packet.pts) else "NONREF"
        yield from context.decode(packet)


def _decode_picks(container: av.container.InputContainer, stream: av.video.stream.VideoStream, picks: np.ndarray,
                  start: int, per_tick: Fraction, gop: float) -> np.ndarray | None:
    """Decode the frames at ``picks`` by seeking; None when timestamps disagree with the metadata."""
    num, den = per_tick.numerator, per_tick.denominator  # frame index = (pts - start) * num / den
    wanted = sorted(set(picks.tolist()))
    wanted_set = set(wanted)

    def needed(pts: int) -> bool:  # a wanted frame, or a timestamp off the frame grid (then decode it, to be safe)
        scaled = (pts - start) * num
        index = (scaled + den // 2) // den
        return index in wanted_set or abs(scaled - index * den) * 100 > den

    got: dict[int, np.ndarray] = {}
    last = -1  # index of the last frame decoded
    while len(got) < len(wanted):
        target = wanted[len(got)]
        if target - last > gop:  # a keyframe lies in between: jump to it instead of decoding the gap
            container.seek(start + round(target / per_tick), stream=stream, backward=True)
        for frame in _decode_needed(container, stream, needed):
            if frame.pts is None:
                return None
            scaled = (frame.pts - start) * num
            last = (scaled + den // 2) // den
            if abs(scaled - last * den) * 100 > den or last > target:
                return None  # off the constant-rate grid, or a frame went missing
            if last < target:
                continue
            got[last] = _rgb(frame)
            if len(got) == len(wanted):
                break
            target = wanted[len(got)]
            if target - last > gop:
                break  # seek for the next stretch
        else:
            return None  # end of stream before the last pick: fewer frames than announced
    out = np.empty((len(picks), *got[wanted[0]].shape), np.uint8)
    for i, k in enumerate(picks.tolist()):
        out[i] = got[k]
    return out


def sample_indices(num_frames: int, num_samples: int, rng: np.random.Generator | None, clip: int = 0,
                   num_clips: int = 1) -> np.ndarray:
    """Pick ``num_samples`` frame indices spread uniformly over the video (segment-based).

    Training (``rng`` given) jitters each pick inside its segment; evaluation takes the
    point at ``(clip + 0.5) / num_clips`` of each segment (the centre for one clip).
    Videos shorter than ``num_samples`` repeat frames.
    """
    edges = np.linspace(0, num_frames, num_samples + 1)
    offset = rng.random(num_samples) if rng is not None else (clip + 0.5) / num_clips
    picks = edges[:-1] + offset * (edges[1:] - edges[:-1])
    return np.clip(picks.astype(np.int64), 0, num_frames - 1)


def dense_indices(num_frames: int, num_samples: int, stride: int, rng: np.random.Generator | None, clip: int = 0,
                  num_clips: int = 1) -> np.ndarray:
    """``num_samples`` consecutive picks ``stride`` frames apart, in one window of the video.

    Training takes a random window; evaluation the window centred in part ``clip`` of
    ``num_clips`` equal parts of the slack (the centre window for one clip). Videos
    shorter than the window repeat their last frame.
    """
    slack = max(num_frames - ((num_samples - 1) * stride + 1), 0)
    first = int(rng.integers(0, slack + 1)) if rng is not None else int(slack * (clip + 0.5) / num_clips)
    return np.minimum(first + stride * np.arange(num_samples), num_frames - 1)
