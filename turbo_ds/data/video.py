"""Video bytes -> uint8 frame arrays with PyAV (FFmpeg), and temporal sampling.

Decoding is the loader's main cost, so ``read_frames`` does only the work the sampled
clip needs: frame indices are chosen from the container's metadata before any decoding,
the decoder seeks to the keyframe before each needed stretch and stops after its last
needed frame, skips the non-reference frames it does not need (FFmpeg's ``skip_frame``: no
other frame is predicted from them, so the needed ones decode to the same pixels; with x264's
default B-frames that is ~45% of the frames leading to a pick), and only needed frames are
converted to RGB.

Decoding never takes more than a bounded amount of memory or time, whatever the file
(``DecodeLimits``: ``data.max_decode_pixels``, ``data.decode_timeout_s``): frames larger than
``max_pixels`` are downscaled while they are converted to RGB, a header announcing frames over
``SOURCE_PIXEL_FACTOR`` times that is refused before decoding (``VideoTooLarge``), only picked
frames are kept (also when metadata is missing or wrong: then every frame is decoded twice, once
to count, once to keep the picks), and a decode that outlives ``timeout_s`` is abandoned
(``DecodeTimeout``; skipped non-reference frames are still demuxed through the deadline-checked
bytes). All three are ``CorruptVideo``s, which the loader skips and counts.
"""

from __future__ import annotations

import io
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
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
SOURCE_PIXEL_FACTOR = 16  # frames up to 16x max_pixels are decoded (and downscaled): 8K at the 1080p default
DECODE_ALL_MAX_BYTES = 256 * 2**20  # decode_frames: the most RGB bytes one whole video may take


class CorruptVideo(DataError):
    """Raised for bytes that FFmpeg cannot turn into frames; the loader skips and counts them."""


class VideoTooLarge(CorruptVideo):
    """Frames (per the header) or a whole decoded video beyond the bounds of ``DecodeLimits``."""


class DecodeTimeout(CorruptVideo):
    """A decode that outlived ``DecodeLimits.timeout_s`` was abandoned."""


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding one video may cost (``data.max_decode_pixels``, ``data.decode_timeout_s``)."""

    max_pixels: int = 1920 * 1080  # the defaults of data.max_decode_pixels and data.decode_timeout_s
    "frames with more pixels are downscaled (aspect kept) while they are converted to RGB"
    timeout_s: float = 60.0
    "a video still decoding after this many seconds is abandoned (DecodeTimeout); 0 = no limit"

    def rgb_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) to convert a frame of this size to, or None to keep its size."""
        if width * height <= self.max_pixels:
            return None
        scale = math.sqrt(self.max_pixels / (width * height))
        return max(1, int(width * scale)), max(1, int(height * scale))


class _Deadline:
    """The time a decode must finish by; checked on every read of the bytes and every decoded frame."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.end = time.monotonic() + timeout_s if timeout_s else math.inf

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise DecodeTimeout(f"decoding took over {self.timeout_s:g} s (data.decode_timeout_s); abandoned")


class _TimedBytes(io.BytesIO):
    """The video's bytes for FFmpeg; a demuxer that keeps reading past the deadline is stopped here."""

    def __init__(self, data: bytes, deadline: _Deadline):
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        self.deadline.check()
        return super().read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.deadline.check()
        return super().seek(offset, whence)


def _rgb(frame: av.VideoFrame, limits: DecodeLimits) -> np.ndarray:
    """(H, W, 3) uint8, downscaled while converted when the frame exceeds ``limits.max_pixels``."""
    size = limits.rgb_size(frame.width, frame.height)
    if size is None:
        return _RGB.reformat(frame, format="rgb24", **_RGB_OPTIONS).to_ndarray()  # (H, W, 3) uint8
    return _RGB.reformat(frame, *size, format="rgb24", interpolation="AREA", **_RGB_OPTIONS).to_ndarray()


@contextmanager
def _decoding() -> Iterator[None]:
    """FFmpeg's and PyAV's errors as CorruptVideo; ours (a CorruptVideo is also a ValueError) as raised."""
    try:
        yield
    except CorruptVideo:
        raise
    except DECODE_ERRORS as e:
        raise CorruptVideo(f"cannot decode video: {e}") from e


def _open(data: bytes, deadline: _Deadline) -> av.container.InputContainer:
    return av.open(_TimedBytes(data, deadline))


def _open_stream(container: av.container.InputContainer, threads: int,
                 limits: DecodeLimits) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise CorruptVideo("no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > SOURCE_PIXEL_FACTOR * limits.max_pixels:
        raise VideoTooLarge(f"frames of {width}x{height} exceed {SOURCE_PIXEL_FACTOR} x data.max_decode_pixels="
                            f"{limits.max_pixels}")
    # Threads pay off only for large frames; with one loader process per core, 1 is fastest.
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = threads  # 0: FFmpeg picks
    return stream


def _frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, deadline: _Deadline,
            needed: Callable[[int], bool] | None = None) -> Iterator[av.VideoFrame]:
    """The stream's frames, checking the deadline at each; with ``needed``, without the non-reference frames it
    rejects (``_decode_needed``)."""
    frames = container.decode(stream) if needed is None else _decode_needed(container, stream, needed)
    for frame in frames:
        deadline.check()
        yield frame


def iter_frames(data: bytes, threads: int = 1, limits: DecodeLimits = DecodeLimits(),
                rgb: bool = True) -> Iterator[np.ndarray | av.VideoFrame]:
    """Every frame of a video, one at a time (RGB (H, W, 3) uint8, or FFmpeg's frame when not ``rgb``),
    so that a caller that keeps none holds one frame at a time. Raises CorruptVideo on failure."""
    deadline, count = _Deadline(limits.timeout_s), 0
    with _decoding(), _open(data, deadline) as container:
        for frame in _frames(container, _open_stream(container, threads, limits), deadline):
            count += 1
            yield _rgb(frame, limits) if rgb else frame
    if not count:
        raise CorruptVideo("video has no decodable frames")


def decode_frames(data: bytes, threads: int = 1, limits: DecodeLimits = DecodeLimits(),
                  max_bytes: int = DECODE_ALL_MAX_BYTES) -> np.ndarray:
    """Decode every frame of a video to (F, H, W, 3) uint8 RGB; raise CorruptVideo on failure, and
    VideoTooLarge for a video whose frames would take more than ``max_bytes`` (judged from its metadata
    first, then while decoding: it never holds more)."""
    _check_size_from_metadata(data, limits, max_bytes)
    frames, total = [], 0
    for frame in iter_frames(data, threads, limits):
        total += frame.nbytes
        if total > max_bytes:
            raise VideoTooLarge(f"decoded video exceeds {max_bytes / 2**20:.0f} MiB after {len(frames)} frames")
        frames.append(frame)
    return np.stack(frames)


def _check_size_from_metadata(data: bytes, limits: DecodeLimits, max_bytes: int) -> None:
    try:
        with _open(data, _Deadline(limits.timeout_s)) as container:
            stream = _open_stream(container, 1, limits)
            timing = _frame_timing(stream)
            width, height = stream.codec_context.width, stream.codec_context.height
    except CorruptVideo:  # ours (also a ValueError): as raised
        raise
    except DECODE_ERRORS:
        return  # decoding tells
    width, height = limits.rgb_size(width, height) or (width, height)
    if timing is not None and timing[0] * width * height * 3 > max_bytes:
        raise VideoTooLarge(f"{timing[0]} frames of {width}x{height} exceed {max_bytes / 2**20:.0f} MiB")


def read_frames(data: bytes, choose: Callable[[int], np.ndarray], threads: int = 1,
                limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode only the frames ``choose(num_frames)`` picks: (len(picks), H, W, 3) uint8, in pick order.

    ``num_frames`` comes from the container's metadata; when that is missing or turns out
    wrong (variable frame rate, fewer frames than announced) or seeking fails, every frame
    is decoded to count them and ``choose`` is asked again with the true count. Raises
    CorruptVideo when the bytes cannot be decoded at all, or the video exceeds ``limits``.
    """
    deadline = _Deadline(limits.timeout_s)
    try:
        with _open(data, deadline) as container:
            stream = _open_stream(container, threads, limits)
            timing = _frame_timing(stream)
            if timing is not None:
                frames = _decode_picks(container, stream, np.asarray(choose(timing[0])), *timing[1:], deadline,
                                       limits)
                if frames is not None:
                    return frames
    except CorruptVideo:  # ours (also a ValueError): as raised
        raise
    except DECODE_ERRORS:
        pass  # decoding everything below tells a corrupt video from one that only resists seeking
    return _decode_picks_in_order(data, choose, threads, limits, deadline)


def _decode_picks_in_order(data: bytes, choose: Callable[[int], np.ndarray], threads: int, limits: DecodeLimits,
                           deadline: _Deadline) -> np.ndarray:
    """Without usable metadata: one pass counts the frames, a second keeps the picked ones (memory: the picks)."""
    with _decoding(), _open(data, deadline) as container:
        count = sum(1 for _ in _frames(container, _open_stream(container, threads, limits), deadline))
    if not count:
        raise CorruptVideo("video has no decodable frames")
    picks = np.asarray(choose(count))  # outside the try: an error in choose is a bug, not bad data
    wanted, got = set(picks.tolist()), {}
    with _decoding(), _open(data, deadline) as container:
        for i, frame in enumerate(_frames(container, _open_stream(container, threads, limits), deadline)):
            if i in wanted:
                got[i] = _rgb(frame, limits)
                if len(got) == len(wanted):
                    break
    return _in_pick_order(got, picks)


def _in_pick_order(got: dict[int, np.ndarray], picks: np.ndarray) -> np.ndarray:
    """(len(picks), H, W, 3) from the decoded frames by index; CorruptVideo if one is missing or differs in size."""
    if not got or any(k not in got for k in picks.tolist()):
        raise CorruptVideo("a picked frame could not be decoded")
    first = next(iter(got.values()))
    if any(f.shape != first.shape for f in got.values()):
        raise CorruptVideo("frame size changes within the video")
    out = np.empty((len(picks), *first.shape), np.uint8)
    for i, k in enumerate(picks.tolist()):
        out[i] = got[k]
    return out


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
                  start: int, per_tick: Fraction, gop: float, deadline: _Deadline,
                  limits: DecodeLimits) -> np.ndarray | None:
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
        for frame in _frames(container, stream, deadline, needed):
            if frame.pts is None:
                return None
            scaled = (frame.pts - start) * num
            last = (scaled + den // 2) // den
            if abs(scaled - last * den) * 100 > den or last > target:
                return None  # off the constant-rate grid, or a frame went missing
            if last < target:
                continue
            got[last] = _rgb(frame, limits)
            if len(got) == len(wanted):
                break
            target = wanted[len(got)]
            if target - last > gop:
                break  # seek for the next stretch
        else:
            return None  # end of stream before the last pick: fewer frames than announced
    return _in_pick_order(got, picks)


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
