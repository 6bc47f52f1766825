"""Loader features: temporal sampling, decoding only picked frames, multi-view eval, resampled shards."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from conftest import resumed, eval_read
from turbo_ds.config import ConfigError, DataConfig, EvalConfig, ModelConfig, load_config
from turbo_ds.data import transforms as T
from turbo_ds.data import video
from turbo_ds.data.position import StreamPosition
from turbo_ds.data.samples import ClipSpec, to_device
from turbo_ds.data.streams import EvalStream, TrainStream, make_loader
from turbo_ds.data.video import CorruptVideo, dense_indices, read_frames, sample_indices
from turbo_ds.prep.transcode import encode_mp4

pytestmark = pytest.mark.unit

MODEL = ModelConfig()


def data_config(demo, **kw) -> DataConfig:
    return DataConfig(train=str(demo / "train"), val=str(demo / "val"), shuffle_buffer=8, hflip_prob=0.0, **kw)


@pytest.fixture(scope="module")
def long_clip() -> tuple[bytes, np.ndarray]:
    """64 frames with a keyframe every 8 (B-frames included), and its frames decoded by plain PyAV."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
    data = encode_mp4(np.stack([base[t // 2 : t // 2 + 48, t : t + 64] for t in range(64)]), gop=8)
    with av.open(io.BytesIO(data)) as container:
        full = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return data, full


# ------------------------------------------------------------------ temporal sampling


def test_dense_window_and_stride():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = dense_indices(100, 8, 4, rng)
        assert (np.diff(idx) == 4).all() and idx[0] >= 0 and idx[-1] < 100
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 100 - 29  # every window start is reachable
    assert dense_indices(100, 8, 4, None).tolist() == list(range(35, 64, 4))  # centre window in eval
    assert dense_indices(10, 4, 4, None).tolist() == [0, 4, 8, 9]  # short video: the last frame repeats
    clips = [dense_indices(100, 8, 4, None, k, 3)[0] for k in range(3)]
    assert clips == sorted(clips) and clips[0] > 0 and clips[-1] + 28 < 99  # evenly spread, inside the video


def test_repeated_copies_take_their_own_windows_inside_one_stretch():
    """data.repeat_aug: dense copies are windows of the same shape inside 1.5 windows of the video (decoded
    once); uniform copies share their frames; one copy draws exactly what it drew before repeat_aug existed."""
    data = DataConfig(sampling="dense", frame_stride=4, repeat_aug=4)
    spec = ClipSpec.from_config(data, ModelConfig(num_frames=16), train=True)
    assert spec.clips == 4 and ClipSpec.from_config(data, ModelConfig(), train=False).clips == 1
    picks = spec.frame_indices(300, np.random.default_rng(0)).reshape(4, 16)  # (copies, T)
    assert (np.diff(picks, axis=1) == 4).all() and len({p[0] for p in picks}) > 1
    assert picks.max() - picks.min() < spec.span * 3 // 2
    short = spec.frame_indices(50, np.random.default_rng(0)).reshape(4, 16)  # shorter than a window
    assert short.min() >= 0 and short.max() == 49
    uniform = ClipSpec.from_config(DataConfig(repeat_aug=2), ModelConfig(), train=True)
    assert (uniform.frame_indices(300, np.random.default_rng(1)).reshape(2, 16) ==
            sample_indices(300, 16, np.random.default_rng(1))).all()
    one = ClipSpec.from_config(DataConfig(sampling="dense", frame_stride=4), ModelConfig(num_frames=16), train=True)
    assert (one.frame_indices(300, np.random.default_rng(2)) ==
            dense_indices(300, 16, 4, np.random.default_rng(2))).all()


def test_stride_counts_source_frames_in_shards_stored_at_a_lower_rate():
    spec = ClipSpec.from_config(DataConfig(sampling="dense", frame_stride=4), ModelConfig(), train=True)
    assert spec.stored({"fps": 7.5, "source_fps": 30.0}).frame_stride == 1
    assert spec.stored({"fps": 15.0, "source_fps": 30.0}).span == 31
    assert spec.stored({"fps": 7.5, "source_fps": 25.0}).frame_stride == 1  # 1.2 rounds to 1
    for meta in ({}, {"fps": 30.0, "source_fps": 30.0}, {"fps": 7.5}, {"fps": "x", "source_fps": 30}):
        assert spec.stored(meta) is spec
    uniform = ClipSpec.from_config(DataConfig(), ModelConfig(), train=True)
    assert uniform.stored({"fps": 7.5, "source_fps": 30.0}) is uniform


def test_uniform_clips_stay_in_their_segments():
    picks = [sample_indices(64, 8, None, k, 2) for k in range(2)]
    assert picks[0].tolist() == list(range(2, 64, 8)) and picks[1].tolist() == list(range(6, 64, 8))
    assert sample_indices(64, 8, None).tolist() == list(range(4, 64, 8))  # one clip: segment centres


# ------------------------------------------------------------------ decoding


def test_decoding_picked_frames_equals_full_decoding(long_clip):
    data, full = long_clip
    rng = np.random.default_rng(1)
    cases = [[0], [63], [7, 8], [40, 41, 42], [60, 3, 3, 31], list(range(64)), sample_indices(64, 16, None),
             dense_indices(64, 8, 2, None)] + [rng.integers(0, 64, rng.integers(1, 12)) for _ in range(20)]
    for picks in cases:
        picks = np.asarray(picks)
        got = read_frames(data, lambda n: picks)
        assert np.array_equal(got, full[picks]), picks


def test_seeking_skips_frames_before_the_window(long_clip, monkeypatch):
    """A late window is decoded from its keyframe on, without the lead-in's non-reference frames (B-frames), and
    only its frames are converted to RGB."""
    data, full = long_clip
    decoded, converted = [], []
    real_decode, real_rgb = video._decode_needed, video._rgb

    def counting_decode(*args):
        for frame in real_decode(*args):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video, "_decode_needed", counting_decode)
    monkeypatch.setattr(video, "_rgb", lambda f, *size: converted.append(f.pts) or real_rgb(f, *size))
    got = read_frames(data, lambda n: np.arange(44, 52))
    assert np.array_equal(got, full[44:52])
    assert len(converted) == 8 and len(decoded) <= 12  # from keyframe 40 on, not from frame 0
    decoded.clear()
    got = read_frames(data, lambda n: np.arange(7, 64, 8))  # the last frame of each GOP: 64 frames lead to them
    assert np.array_equal(got, full[7::8]) and len(decoded) < 56, len(decoded)  # B-frames not needed: skipped


def test_missing_metadata_falls_back_to_decoding_all():
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as container:  # raw bitstream: no timestamps, no frame count
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt, stream.options = "yuv420p", {"threads": "1"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    with av.open(io.BytesIO(buf.getvalue())) as container:
        full = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    seen = []
    got = read_frames(buf.getvalue(), lambda n: seen.append(n) or np.array([n - 1, 0]))
    assert seen[-1] == 12 and np.array_equal(got, full[[11, 0]])


def test_corrupt_bytes_raise_corrupt_video(long_clip):
    for bad in (b"", b"\x00\x00\x00 ftypisom garbage", long_clip[0][: len(long_clip[0]) // 3]):
        with pytest.raises(CorruptVideo):
            read_frames(bad, lambda n: np.arange(min(n, 4)))


# ------------------------------------------------------------------ transforms


def test_transforms_crop_flip_resize_normalise():
    clip = torch.randint(0, 256, (4, 48, 80, 3), dtype=torch.uint8)
    assert T.spatial_crop_boxes(48, 80, 3) == [(0, 0, 48, 48), (0, 16, 48, 48), (0, 32, 48, 48)]
    assert T.spatial_crop_boxes(80, 48, 1) == [(16, 0, 48, 48)]
    same = T.crop_flip_resize(clip, (0, 16, 48, 48), False, 48)
    assert torch.equal(same, clip[:, :, 16:64])  # no resize when the crop already has the size
    assert torch.equal(T.crop_flip_resize(clip, (0, 16, 48, 48), True, 48), clip[:, :, 16:64].flip(2))
    assert T.crop_flip_resize(clip, (0, 0, 48, 80), False, 32).shape == (4, 32, 32, 3)
    batch = same.permute(3, 0, 1, 2)[None]  # (1, C, T, H, W) uint8, as the loader delivers it
    out = T.Normalizer([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])(batch)
    ref = (batch.float() / 255 - torch.tensor([0.4, 0.5, 0.6])[:, None, None, None]) \
        / torch.tensor([0.2, 0.25, 0.3])[:, None, None, None]
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)


# ------------------------------------------------------------------ streams


def test_randaug_gives_every_frame_of_a_clip_the_same_ops():
    """A clip of 4 identical frames stays 4 identical frames under every op and every pair of ops."""
    ra = T.RandAugment(2, 9)
    frame = torch.randint(0, 256, (3, 1, 24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pairs = [(a, b) for a in range(len(T.RANDAUG_OPS)) for b in range(len(T.RANDAUG_OPS))]
    drawn = torch.tensor([[[a, 1], [b, -1]] for a, b in pairs])  # (B, n, 2)
    out = ra(frame.expand(3, 4, 24, 40).expand(len(pairs), -1, -1, -1, -1), drawn)  # (B, C, T, H, W)
    assert (out == out[:, :, :1]).all()
    assert not (out == out[:1]).all(dim=(1, 2, 3, 4)).all()  # the ops did change the clips, differently


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_randaug_batched_on_the_device_equals_the_cpu_path_per_clip(device):
    """The batch path (each op over the clips that drew it) equals applying each clip's ops one by one on the
    CPU to the clip as the loader holds it (T, H, W, C); every op is drawn by some clip."""
    ra, rng = T.RandAugment(3, 7), np.random.default_rng(0)
    clips = torch.from_numpy(rng.integers(0, 256, (16, 4, 24, 40, 3), dtype=np.uint8))  # (B, T, H, W, C)
    draws = [ra.draw(rng) for _ in range(16)]
    draws[0][0][0], draws[1][0][0] = 0, len(T.RANDAUG_OPS) - 1
    batched = ra(clips.permute(0, 4, 1, 2, 3).to(device), torch.tensor(draws)).cpu()  # (B, C, T, H, W)
    for clip, drawn, got in zip(clips, draws, batched):
        torch.testing.assert_close(got, ra.clip(clip, drawn).permute(3, 0, 1, 2), atol=1e-3, rtol=0)
    assert {k for d in draws for k, _ in d} == set(range(len(T.RANDAUG_OPS)))


def test_randaug_geometry_and_pixel_ops():
    x = torch.arange(40, dtype=torch.float32).expand(1, 3, 2, 8, 40)  # each column's value is its index
    shifted = T.RANDAUG_OPS["translate_x"](x, 0.5, torch.tensor([1.0]))  # 0.45 x 0.5 x 40 = 9 columns
    assert torch.equal(shifted[..., :31], x[..., 9:]) and (shifted[..., 31:] == 128).all()  # grey comes in
    assert torch.equal(T.RANDAUG_OPS["invert"](x, 0.9, torch.tensor([1.0])), 255 - x)
    assert T.RANDAUG_OPS["posterize"](torch.tensor([200.0]).view(1, 1, 1, 1, 1), 0.9, None).item() == 128  # 1 bit


def test_randaug_draws_ride_with_the_batch_and_apply_on_the_device(tiny_demo):
    cfg = data_config(tiny_demo)
    cfg.randaug.n = 2
    stream = TrainStream.from_config(cfg, MODEL, 0, 1, 4, seed=0)
    batch, again = next(iter(make_loader(stream, 0))), next(iter(make_loader(stream, 0)))
    assert batch["randaug"].shape == (4, 2, 2) and torch.equal(batch["randaug"], again["randaug"])  # seeded per sample
    out = to_device(batch, torch.device("cpu"), stream.spec.normalize, stream.spec.randaug)
    plain = to_device(batch, torch.device("cpu"), stream.spec.normalize)
    assert "randaug" not in out and out["video"].dtype == torch.float32
    assert not torch.equal(out["video"], plain["video"])
    augmented = stream.spec.randaug(batch["video"], batch["randaug"])
    torch.testing.assert_close(out["video"], stream.spec.normalize(augmented))
    assert EvalStream.from_config(cfg, MODEL, 0, 1, 4).spec.randaug is None  # training only


def test_cache_and_seek_decoding_give_identical_batches(tiny_demo):
    """The decoded-clip cache (decode all, pick from memory) and seek decoding see the same frames."""
    for sampling in ("uniform", "dense"):
        loaders = [iter(make_loader(TrainStream.from_config(data_config(tiny_demo, decoded_cache_clips=c, sampling=sampling,
                                                            frame_stride=2), ModelConfig(num_frames=6), 0, 2, 4,
                                                seed=1), 0)) for c in (0, 64)]
        for _ in range(3):
            a, b = next(loaders[0]), next(loaders[1])
            assert a["key"] == b["key"] and torch.equal(a["video"], b["video"])


def test_multi_view_eval_covers_every_sample_once(tiny_demo):
    model = ModelConfig(num_frames=4)
    views = EvalConfig(batch_size=5, num_clips=2, num_crops=3)
    keys = []
    for rank in range(3):
        stream = EvalStream.from_config(data_config(tiny_demo), model, rank, 3, 5, views)
        batches, _ = eval_read(stream)
        assert len(batches) <= stream.num_batches
        for b in batches:
            assert b["video"].shape == (len(b["label"]), 6, 3, 4, 64, 64)
            v = b["video"]  # square frames: the 3 crops agree; the 2 temporal clips differ
            assert torch.equal(v[:, 0], v[:, 2]) and not torch.equal(v[:, 0], v[:, 3])
            keys += b["key"]
    assert sorted(keys) == [f"val{i:07d}" for i in range(32)]


def test_eval_workers_split_without_duplicates(tiny_demo):
    keys = []
    for rank in range(2):
        stream = EvalStream.from_config(data_config(tiny_demo), MODEL, rank, 2, 3, num_workers=2)
        batches, ends = eval_read(stream, 2)
        assert len(ends) == 2
        assert len(batches) <= stream.num_batches and batches[0]["video"].shape[1:] == (3, 16, 64, 64)
        keys += [k for b in batches for k in b["key"]]
    assert sorted(keys) == [f"val{i:07d}" for i in range(32)]
    with pytest.raises(ValueError, match="num_workers"):
        next(iter(make_loader(EvalStream.from_config(data_config(tiny_demo), MODEL, 0, 1, 3, num_workers=2), 0)))


def test_resampled_streams_are_deterministic_with_equal_counts(tiny_demo):
    cfg = data_config(tiny_demo, resampled=True, num_workers=2)
    with pytest.raises(ValueError, match="shards cannot feed"):  # 4 shards, 3 ranks x 2 workers
        TrainStream.from_config(data_config(tiny_demo, num_workers=2), MODEL, 0, 3, 4, seed=0)

    def keys(seed: int, epoch: int, rank: int, worker: int) -> list[str]:
        stream = TrainStream.from_config(cfg, MODEL, rank, 3, 4, seed=seed)
        return [s["__key__"] for s in stream.epoch_samples(epoch, worker, 2, StreamPosition())]

    streams = {(r, w): keys(0, 0, r, w) for r in range(3) for w in range(2)}
    assert {len(k) for k in streams.values()} == {64 // 6}
    assert streams[(1, 1)] == keys(0, 0, 1, 1)  # deterministic per (seed, epoch, rank, worker)
    assert keys(0, 1, 1, 1) != streams[(1, 1)] and keys(5, 0, 1, 1) != streams[(1, 1)]
    assert len({tuple(k) for k in streams.values()}) == 6  # streams draw independently


def test_resampled_epochs_and_exact_resume(tiny_demo):
    cfg = data_config(tiny_demo, resampled=True)
    batches = iter(make_loader(TrainStream.from_config(cfg, MODEL, 2, 3, 4, seed=3), 0))
    seen = [next(batches) for _ in range(12)]
    assert [b["position"]["epoch"] for b in seen[4:6]] == [0, 1]  # 64 // 3 = 21 samples: 5 batches an epoch
    again = iter(make_loader(resumed(TrainStream.from_config(cfg, MODEL, 2, 3, 4, seed=3),
                                       {seen[6]["stream"]: seen[6]["position"]}), 0))
    for expected in seen[7:]:
        got = next(again)
        assert got["key"] == expected["key"] and torch.equal(got["video"], expected["video"])


def test_loader_takes_prefetch_from_config(tiny_demo):
    stream = TrainStream.from_config(data_config(tiny_demo, num_workers=1, prefetch_factor=3), MODEL, 0, 1, 4, seed=0)
    assert make_loader(stream, 1).prefetch_factor == 3 and make_loader(stream, 1, 5).prefetch_factor == 5


@pytest.mark.parametrize("override, key", [
    ("eval.num_crops=2", "eval.num_crops"), ("eval.num_clips=0", "eval.num_clips"),
    ("data.frame_stride=0", "data.frame_stride"), ("data.decode_threads=-1", "data.decode_threads"),
    ("data.prefetch_factor=0", "data.prefetch_factor"), ("data.sampling=random", "data.sampling"),
    ("data.repeat_aug=0", "data.repeat_aug"), ("data.randaug.n=-1", "data.randaug"),
    ("data.randaug.m=11", "data.randaug"),
])
def test_config_checks_new_keys(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/demo_action_cls.yaml", [override])
    cfg = load_config("configs/demo_action_cls.yaml",
                      ["data.sampling=dense", "data.resampled=true", "eval.num_crops=3"])
    assert cfg.data.sampling == "dense" and cfg.data.resampled and cfg.eval.num_crops == 3
