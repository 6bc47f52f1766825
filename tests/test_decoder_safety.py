"""Monster videos: a 3840x2160 clip, a 30-minute 1-fps clip and a header claiming 10^9 frames, encoded
here, never take the loader or a tool that decodes past a bounded memory or time."""

from __future__ import annotations

import importlib.util
import io
import struct
import time

import av
import numpy as np
import pytest

from conftest import REPO
from turbo_ds.config import DataConfig, ModelConfig
from turbo_ds.data.samples import DecodedCache
from turbo_ds.data.shards import shard_name, write_manifest, write_shard
from turbo_ds.data.streams import TrainStream, make_loader
from turbo_ds.data import video
from turbo_ds.data.video import DecodeLimits, DecodeTimeout, VideoTooLarge, read_frames, sample_indices
from turbo_ds.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from turbo_ds.prep import inspect_shards

pytestmark = pytest.mark.unit

MB = 2**20


def encode(frames, width: int, height: int, fps: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def moving_bar(count: int, height: int, width: int):
    frame = np.zeros((height, width, 3), np.uint8)
    for t in range(count):
        frame[:] = 40
        x = (t * 7) % (width - 16)
        frame[:, x : x + 16] = (255, 128, 0)
        yield frame


def claim_frames(mp4: bytes, count: int) -> bytes:
    """The same video with its sample table (stts) claiming ``count`` frames."""
    at = mp4.find(b"stts")
    assert struct.unpack(">I", mp4[at + 8 : at + 12])[0] == 1  # one (count, duration) entry
    return mp4[: at + 12] + struct.pack(">I", count) + mp4[at + 16 :]


@pytest.fixture(scope="module")
def monsters() -> dict[str, bytes]:
    half_hour = encode(moving_bar(1800, 240, 320), 320, 240, fps=1)  # 1800 frames: 415 MB as RGB
    return {"uhd": encode(moving_bar(6, 2160, 3840), 3840, 2160, fps=8), "half_hour": half_hour,
            "billion": claim_frames(half_hour, 10**9)}


def peak_growth_mb(fn) -> float:
    """Peak resident memory ``fn`` adds to this process."""
    assert reset_peak_rss(), "needs Linux >= 4.0 (/proc/self/clear_refs)"
    before = rss_bytes()
    fn()
    return (peak_rss_bytes() - before) / MB


def test_the_limits_default_to_the_config_defaults():
    data = DataConfig()
    assert DecodeLimits() == DecodeLimits(data.max_decode_pixels, data.decode_timeout_s)


def test_a_4k_clip_is_downscaled_while_decoding_and_a_header_over_the_bound_is_refused(monsters):
    frames = read_frames(monsters["uhd"], lambda n: np.arange(n))
    assert frames.shape[0] == 6 and frames.shape[1] * frames.shape[2] <= 1920 * 1080
    assert abs(frames.shape[2] / frames.shape[1] - 16 / 9) < 0.01 and frames[:, :, :, 0].max() > 240  # the bar
    small = read_frames(monsters["uhd"], lambda n: np.arange(2), limits=DecodeLimits(max_pixels=1280 * 720))
    assert small.shape == (2, 720, 1280, 3)
    with pytest.raises(VideoTooLarge, match="3840x2160 exceed 16 x data.max_decode_pixels=4096"):
        read_frames(monsters["uhd"], lambda n: np.arange(2), limits=DecodeLimits(max_pixels=64 * 64))


def test_a_billion_frame_header_and_a_half_hour_clip_decode_only_the_picks(monsters):
    seen = []

    def choose(n: int) -> np.ndarray:
        seen.append(n)
        return sample_indices(n, 16, None)

    got = {}
    grew = peak_growth_mb(lambda: got.update(billion=read_frames(monsters["billion"], choose),
                                             half=read_frames(monsters["half_hour"], choose)))
    assert seen == [10**9, 1800, 1800]  # the header's claim, then the true count (two passes, picks kept)
    assert got["billion"].shape == got["half"].shape == (16, 240, 320, 3)
    assert np.array_equal(got["billion"], got["half"])
    assert grew < 100, f"{grew:.0f} MB"  # every frame would be 415 MB

    cache = DecodedCache(8, DataConfig())  # the demo's whole-video cache: too long to keep, picks decoded
    assert peak_growth_mb(lambda: cache.read("k", monsters["half_hour"], choose)) < 100 and not cache.items


def test_a_decode_past_the_timeout_is_abandoned(monsters):
    start = time.monotonic()
    with pytest.raises(DecodeTimeout, match=r"decoding took over 0.05 s \(data.decode_timeout_s\); abandoned"):
        read_frames(monsters["billion"], lambda n: sample_indices(n, 16, None), limits=DecodeLimits(timeout_s=0.05))
    assert time.monotonic() - start < 2  # not the whole 1800 frames, twice


@pytest.fixture(scope="module")
def monster_shards(monsters, tmp_path_factory):
    """The three monsters plus 5 ordinary 3-second clips in one shard, as build_shards would leave them."""
    folder = tmp_path_factory.mktemp("monsters") / "train"
    folder.mkdir()
    ordinary = encode(moving_bar(24, 64, 96), 96, 64, fps=8)
    samples = [{"__key__": key, "mp4": data, "cls": b"1"} for key, data in monsters.items()]
    samples += [{"__key__": f"ordinary{i}", "mp4": ordinary, "cls": b"2"} for i in range(5)]
    write_shard(folder / shard_name("monsters", 0), samples)
    write_manifest(folder, task="action_cls", shards=[{"name": shard_name("monsters", 0), "num_samples": 8}],
                   class_names=[str(i) for i in range(8)], build={"tool": "tests/test_decoder_safety.py"})
    return folder


@pytest.mark.parametrize("max_pixels, skipped", [(1920 * 1080, 0), (64 * 64, 3)])  # 64x64: all three refused
def test_the_loader_trains_on_monsters_or_skips_and_counts_them(monster_shards, max_pixels, skipped):
    data = DataConfig(train=str(monster_shards), shuffle_buffer=4, max_decode_pixels=max_pixels)
    batches = iter(make_loader(TrainStream.from_config(data, ModelConfig(num_frames=8, img_size=32, patch_size=8), 0, 1,
                                           8 - skipped, seed=0), 0))
    batch = next(batches)
    assert batch["video"].shape == (8 - skipped, 3, 8, 32, 32) and batch["position"]["skipped"] == skipped


def test_tools_that_decode_stay_bounded(monster_shards, tmp_path, capsys):
    """inspect_shards (every video validated, a contact sheet) and loader_speed's raw and tuned baselines,
    which used to keep every frame of a clip (the half-hour clip: 415 MB; a 10-minute 720p film: 39 GB)."""
    grew = peak_growth_mb(lambda: inspect_shards.main([str(monster_shards), "--png", str(tmp_path / "s.png")]))
    report = capsys.readouterr().out
    assert "total: 8 samples in 1 shards" in report and "undecodable: 0" in report
    assert (tmp_path / "s.png").stat().st_size > 0 and grew < 200, f"{grew:.0f} MB"

    spec = importlib.util.spec_from_file_location("loader_speed", REPO / "bench" / "loader_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    clips = bench.read_clips(monster_shards, 3)
    for decode in (bench.plain_decode, bench.tuned_decode):
        counts = []
        grew = peak_growth_mb(lambda: counts.extend(decode(c) for c in clips))
        assert counts == [6, 1800, 1800] and grew < 150, (decode.__name__, f"{grew:.0f} MB")


def test_downscaling_holds_where_the_decoder_skips_unneeded_frames(monkeypatch):
    """The bounds compose with skipping the non-reference frames no pick needs (x264's default B-frames):
    the picks come out downscaled, equal to the same frames of a full decode, with fewer frames decoded."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"g": "8", "keyint_min": "8", "bf": "3", "threads": "1"}  # B-frames between references
        for frame in moving_bar(32, 480, 640):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data, limits = buf.getvalue(), DecodeLimits(max_pixels=320 * 240)
    every = read_frames(data, lambda n: np.arange(n), limits=limits)
    decoded, real = [], video._decode_needed

    def counting(*args):
        for frame in real(*args):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video, "_decode_needed", counting)
    picks = np.arange(7, 32, 8)  # the last frame of each keyframe interval: its lead-in has B-frames to skip
    got = read_frames(data, lambda n: picks, limits=limits)
    assert got.shape == (4, 240, 320, 3) and np.array_equal(got, every[picks])
    assert len(decoded) < 32, len(decoded)  # no seek between these picks: all 32 without the skipping
