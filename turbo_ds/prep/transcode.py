"""Re-encode any video FFmpeg reads into the shard format: H.264 yuv420p mp4 at a target
frame rate, short side and length, with regular keyframes for random access.

Frames are resampled by presentation time, so variable-frame-rate sources come out at a
constant rate: output frame k (time ``start + k / fps``) is the latest source frame whose
timestamp is <= that time. Exact ``Fraction`` arithmetic keeps a 1:1 mapping when the
source already runs at the target rate.

``encode_mp4`` writes rendered frames (the demo data, test videos) with the same encoder settings.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Iterator, TypeAlias

import av
import numpy as np

from turbo_ds.data.video import DECODE_ERRORS, CorruptVideo

if TYPE_CHECKING:
    from turbo_ds.config import Config

MAX_DEFAULT_FPS = 30  # "keep the source rate" never goes above this
MAX_PLAUSIBLE_FPS = 240
MPEG_RANGE, JPEG_RANGE = 1, 2  # av.video.reformatter.ColorRange values
# Timestamps rounded to milliseconds (mkv, webm) may land just after the exact output time.
PTS_TOLERANCE = Fraction(1, 1000)
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)

Source: TypeAlias = "str | os.PathLike[str] | bytes"  # a path, or the file's bytes


@dataclass(frozen=True)
class TranscodeSettings:
    """How videos are re-encoded (recorded in the dataset manifest)."""

    fps: float | None = None  # None: the source rate, capped at MAX_DEFAULT_FPS
    short_side: int = 256  # downscale so min(h, w) is this; 0 keeps the size (rounded to even)
    max_seconds: float | None = None  # cut longer videos (after the start offset)
    crf: int = 23
    gop: int | None = None  # frames between keyframes; None: one per second
    keep_audio: bool = False  # re-encode the first audio track as AAC; else audio is dropped


# What `build_shards.py --for-config RECIPE` assumes and chooses (``recipe_encoding``).
NOMINAL_SOURCE_FPS = 30  # the source rate a dense stride is turned into a stored rate from (K400, most web video)
RECIPE_GOP = 8  # a window starting anywhere decodes on average 4 stored frames before its first


def recipe_encoding(cfg: Config) -> dict[str, float | int]:
    """TranscodeSettings fields that store videos as recipe ``cfg`` samples them: the short side its model
    crops from (model.img_size), a keyframe every RECIPE_GOP frames and, for dense sampling, the rate of its
    picks (data.frame_stride source frames apart at NOMINAL_SOURCE_FPS: 16x4 -> 7.5 fps, so a clip is 16
    consecutive stored frames; the loader keeps frame_stride in source frames from the json's fps and
    source_fps). Uniform sampling spreads its picks over the whole video: the source rate stays."""
    out: dict[str, float | int] = {"short_side": cfg.model.img_size, "gop": RECIPE_GOP}
    if cfg.data.sampling == "dense":
        out["fps"] = NOMINAL_SOURCE_FPS / cfg.data.frame_stride
    return out


def x264_options(crf: int) -> dict[str, str]:
    """libx264 options for byte-reproducible output: identical frames give identical bytes on any run and CPU.

    x264's output depends on its thread count, and its AVX-512 code paths gave run-to-run
    different bytes for identical frames (x264 core 164); one thread and cpu-independent fix
    both. Parallelism comes from worker processes instead of encoder threads.
    """
    return {"crf": str(crf), "threads": "1", "x264-params": "cpu-independent=1"}


def encode_mp4(frames: np.ndarray, fps: float = 8.0, crf: int = 23, gop: int | None = None) -> bytes:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as H.264 in an mp4 container."""
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = x264_options(crf)
        if gop:
            stream.codec_context.gop_size = gop
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return buf.getvalue()


def _open(src: Source) -> av.container.InputContainer:
    if isinstance(src, bytes):
        if not src:
            raise CorruptVideo("empty file (0 bytes)")
        return av.open(io.BytesIO(src))
    if os.path.getsize(src) == 0:
        raise CorruptVideo("empty file (0 bytes)")
    return av.open(os.fspath(src))


@contextmanager
def _as_corrupt() -> Iterator[None]:
    """Report every FFmpeg/PyAV failure as CorruptVideo, which callers skip and list."""
    try:
        yield
    except CorruptVideo:
        raise
    except DECODE_ERRORS as e:
        raise CorruptVideo(describe_error(e)) from e


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise CorruptVideo("no video stream")
    return container.streams.video[0]


def _source_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The nominal rate: FFmpeg's guess (the lowest rate that represents every timestamp,
    exact for constant-rate video) unless it is implausible (e.g. a 1 ms time base), then the average."""
    guessed = stream.guessed_rate
    rate = guessed if guessed and guessed <= MAX_PLAUSIBLE_FPS else stream.average_rate
    return Fraction(rate) if rate else Fraction(MAX_DEFAULT_FPS)


def _color_range(frame: av.VideoFrame) -> int:
    """The frame's YUV range; full-range (JPEG, yuvj*) input is converted to H.264's default limited range."""
    return int(frame.color_range) or (JPEG_RANGE if frame.format.name.startswith("yuvj") else MPEG_RANGE)


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Downscale (never upscale) so the short side is ``short_side``; yuv420p needs even dims."""
    scale = min(1.0, short_side / min(width, height)) if short_side else 1.0
    return _even(width * scale), _even(height * scale)


def _decode_timed(container, stream, origin: Fraction) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """Decoded frames with their time in seconds from ``origin``."""
    rate, last = _source_rate(stream), None
    try:
        for frame in container.decode(stream):
            if frame.pts is None:  # no timestamp (rare, e.g. some avi): assume the nominal rate
                t = last + 1 / rate if last is not None else Fraction(0)
            else:
                t = frame.pts * stream.time_base - origin
            last = t if last is None else max(t, last)  # guard against non-monotonic timestamps
            yield last, frame
    except DECODE_ERRORS as e:
        raise CorruptVideo(f"decoding failed at {float(last or 0):.2f} s: {describe_error(e)}") from e


def _timed_frames(container, stream, origin: Fraction, seek_to: Fraction) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """Timed frames from a keyframe at or before ``seek_to`` (seconds).

    Seeking saves decoding a long video from its start; when the container's index lands
    after ``seek_to`` (broken or missing index), decoding restarts from the beginning.
    """
    if seek_to > 0:
        try:
            container.seek(int((origin + seek_to) / stream.time_base), stream=stream, backward=True)
            frames = _decode_timed(container, stream, origin)
            first = next(frames, None)
        except DECODE_ERRORS:
            first = None
        if first is not None and first[0] <= seek_to + PTS_TOLERANCE:
            yield first
            yield from frames
            return
        container.seek(0)
    yield from _decode_timed(container, stream, origin)


def resample(frames: Iterator[tuple[Fraction, av.VideoFrame]], fps: Fraction, start: Fraction,
             end: Fraction | None, source_rate: Fraction) -> Iterator[av.VideoFrame]:
    """For each output time ``t_k = start + k / fps < end``, the latest source frame with time <= t_k.

    Times before the first frame show the first frame; the output stops at ``end`` or at
    the end of the last source frame, whichever comes first.
    """
    k, prev, prev_t, prev_dur = 0, None, None, 1 / source_rate
    for t, frame in frames:
        while (end is None or start + k / fps < end) and start + k / fps + PTS_TOLERANCE < t:
            yield prev if prev is not None else frame
            k += 1
        if end is not None and start + k / fps >= end:
            return
        if prev_t is not None and t > prev_t:
            prev_dur = t - prev_t
        prev, prev_t = frame, t
    if prev is None:
        return
    if prev.duration:  # the decoder knows how long the last frame lasts
        prev_dur = prev.duration * prev.time_base
    stop = prev_t + prev_dur if end is None else min(end, prev_t + prev_dur)
    while start + k / fps < stop - PTS_TOLERANCE:
        yield prev
        k += 1


@dataclass
class _Clip:
    """Resolved per-video choices."""

    fps: Fraction
    width: int
    height: int
    gop: int
    start: Fraction
    end: Fraction | None


def _plan(stream, s: TranscodeSettings, start: float | None, end: float | None) -> _Clip:
    source = _source_rate(stream)
    fps = Fraction(s.fps) if s.fps else min(source, Fraction(MAX_DEFAULT_FPS))
    fps = fps.limit_denominator(1001)  # 29.97 stays 30000/1001; odd VFR averages get a short fraction
    width, height = output_size(stream.codec_context.width, stream.codec_context.height, s.short_side)
    t0 = Fraction(start or 0).limit_denominator(10**6)
    t1 = Fraction(end).limit_denominator(10**6) if end is not None else None
    if s.max_seconds:
        cap = t0 + Fraction(s.max_seconds).limit_denominator(10**6)
        t1 = cap if t1 is None else min(t1, cap)
    return _Clip(fps, width, height, s.gop or max(1, round(fps)), t0, t1)


def _add_video_stream(out, clip: _Clip, crf: int):
    stream = out.add_stream("libx264", rate=clip.fps)
    stream.width, stream.height, stream.pix_fmt = clip.width, clip.height, "yuv420p"
    stream.options = x264_options(crf)  # byte-reproducible shards
    stream.codec_context.gop_size = clip.gop
    return stream


def _origin(stream: av.stream.Stream) -> Fraction:
    """Time zero of a stream (the first frame's timestamp in most containers), in seconds."""
    return Fraction(stream.start_time or 0) * stream.time_base


def _encode_video(container, out, stream_out, clip: _Clip) -> int:
    stream = _video_stream(container)
    frames = _timed_frames(container, stream, _origin(stream), clip.start)
    count, last_in, last_out = 0, None, None
    for frame in resample(frames, clip.fps, clip.start, clip.end, _source_rate(stream)):
        if frame is not last_in:  # repeated source frames are converted once
            last_in = frame
            last_out = frame.reformat(clip.width, clip.height, "yuv420p", interpolation="AREA", threads=1,
                                      src_color_range=_color_range(frame), dst_color_range=MPEG_RANGE)
            last_out.pict_type = 0  # NONE: x264 would obey the source's frame types, not our --gop
        last_out.pts, last_out.time_base, last_out.duration = count, 1 / clip.fps, 1
        out.mux(stream_out.encode(last_out))
        count += 1
    out.mux(stream_out.encode())  # flush delayed frames
    return count


def _add_audio_stream(out, stream: av.audio.stream.AudioStream):
    rate = stream.rate if stream.rate in AAC_RATES else 48000
    return out.add_stream("aac", rate=rate, layout="mono" if stream.channels == 1 else "stereo")


def _encode_audio(src: Source, out, audio_out, clip: _Clip) -> None:
    """Re-encode the first audio track within the clip range as AAC (to the audio frame, ~20 ms)."""
    rate, layout = audio_out.codec_context.sample_rate, audio_out.codec_context.layout
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate,
                                  frame_size=audio_out.codec_context.frame_size)  # AAC takes fixed-size frames
    written = 0

    def mux(chunks: list[av.AudioFrame]) -> None:
        nonlocal written
        for chunk in chunks:
            chunk.pts, chunk.time_base = written, Fraction(1, rate)
            written += chunk.samples
            out.mux(audio_out.encode(chunk))

    with _open(src) as container:
        stream = container.streams.audio[0]
        origin = _origin(stream)
        for frame in container.decode(stream):
            t = frame.pts * stream.time_base - origin if frame.pts is not None else None
            if t is not None and t + Fraction(frame.samples, frame.sample_rate) <= clip.start:
                continue
            if t is not None and clip.end is not None and t >= clip.end:
                break
            mux(resampler.resample(frame))
    mux(resampler.resample(None))
    out.mux(audio_out.encode())


def transcode(src: Source, s: TranscodeSettings, start: float | None = None,
              end: float | None = None) -> tuple[bytes, dict]:
    """Re-encode ``src`` (a path or the file's bytes) to mp4; returns (bytes, metadata).

    ``start``/``end`` (seconds from the first frame) cut a range; raise CorruptVideo
    for input that cannot be decoded or an empty range.
    """
    with _as_corrupt(), _open(src) as container:
        stream = _video_stream(container)
        clip = _plan(stream, s, start, end)
        info = {"source_fps": round(float(_source_rate(stream)), 3),
                "source_width": stream.codec_context.width, "source_height": stream.codec_context.height}
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as out:
            # Every stream must exist before the first packet is written.
            video_out = _add_video_stream(out, clip, s.crf)
            audio = s.keep_audio and bool(container.streams.audio)
            audio_out = _add_audio_stream(out, container.streams.audio[0]) if audio else None
            count = _encode_video(container, out, video_out, clip)
            if count == 0:
                end_s = "end" if clip.end is None else f"{float(clip.end):g}"
                raise CorruptVideo(f"no frames in the range [{float(clip.start):g}, {end_s}) s")
            if audio_out is not None:
                _encode_audio(src, out, audio_out, clip)  # a second pass over the file
    info = {"fps": float(clip.fps), "frames": count, "width": clip.width, "height": clip.height,
            "duration": round(count / float(clip.fps), 6), "has_audio": audio, **info}
    return buf.getvalue(), info


def probe(src: Source) -> dict:
    """Metadata of a video as stored (no re-encoding); decodes every frame to validate it."""
    with _as_corrupt(), _open(src) as container:
        stream = _video_stream(container)
        count, first, last = 0, None, None
        for t, _ in _timed_frames(container, stream, _origin(stream), Fraction(0)):  # one frame held at a time
            count, first, last = count + 1, t if first is None else first, t
        if not count:
            raise CorruptVideo("video has no decodable frames")
        rate = _source_rate(stream)
        return {"fps": round(float(rate), 6), "frames": count, "width": stream.codec_context.width,
                "height": stream.codec_context.height, "duration": round(float(last - first + 1 / rate), 6),
                "has_audio": bool(container.streams.audio)}


def describe_error(e: BaseException) -> str:
    """A short reason without machine-specific paths (FFmpeg errors carry the file name)."""
    if isinstance(e, av.error.FFmpegError):
        return f"{type(e).__name__}: {e.strerror}"
    return str(e) if isinstance(e, CorruptVideo) else f"{type(e).__name__}: {e}"

