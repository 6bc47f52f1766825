"""Long-video task: both encoding modes, config errors, chunked evaluation, the long demo data, short videos."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import eval_read
from turbo_ds.config import Config, ConfigError, DataConfig, LongVideoConfig, ModelConfig, TurboConfig
from turbo_ds.data.samples import ClipSpec
from turbo_ds.data.streams import EvalStream, TrainStream, make_loader
from turbo_ds.data.video import sample_indices
from turbo_ds.models.long_video import SegmentClassifier
from turbo_ds.prep.demo import (LONG_CLASS_NAMES, LONG_SEQUENCES, LongDemoSettings, long_demo_label, make_long_sample,
                                render_long_clip)
from turbo_ds.tasks import build_task, checked

CLASSES = 5


def tiny_config(mode: str = "segments", frames: int = 16, **long_video) -> Config:
    model = ModelConfig(num_frames=4, img_size=32, patch_size=8, tubelet_size=2, width=32, depth=2, heads=2)
    return Config(task="long_video", model=model, turbo=TurboConfig(keep_ratio=0.25),
                  long_video=LongVideoConfig(frames=frames, mode=mode, temporal_depth=1, temporal_heads=2, **long_video))


def make_task(cfg: Config):
    torch.manual_seed(0)
    return build_task(cfg, {"class_names": [f"c{i}" for i in range(CLASSES)]})


@pytest.mark.unit
@pytest.mark.parametrize("mode,pooling", [("segments", "cls"), ("segments", "mean"), ("segments", "concat"),
                                          ("joint", "cls")])
def test_modes_give_logits_and_train_a_step(mode, pooling):
    cfg = tiny_config(mode, pooling=pooling)
    checked(cfg)
    task = make_task(cfg)
    model = task.model
    # Segments: 4 segments x (2 x 4 x 4 = 32 tokens); joint: one 8 x 4 x 4 = 128-token clip. Keep 25%.
    assert (task.tokens_total, task.tokens_kept) == (128, 32)
    video = torch.randn(3, 3, 16, 32, 32)  # (B, C, F, H, W)
    batch = {"video": video, "label": torch.tensor([0, 1, 4])}
    assert model(video).shape == (3, CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = task.loss(model, batch, torch.float32)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    with torch.no_grad():
        hits = task.eval_step(model, batch, torch.float32)
        task.eval_padding(model, torch.float32)
    assert hits[2] == 3
    metrics = task.eval_metrics([hits])
    assert metrics["num_classes"] == CLASSES and "eval/top1" in metrics and metrics["eval/chunked"] is False


@pytest.mark.unit
@pytest.mark.parametrize("pooling", ["cls", "mean", "concat"])
def test_segment_order_matters(pooling):
    """The temporal model sees segment positions: swapping two segments changes the output."""
    task = make_task(tiny_config(pooling=pooling))
    model = task.model.eval()
    video = torch.randn(2, 3, 16, 32, 32)
    swapped = torch.cat([video[:, :, 4:8], video[:, :, :4], video[:, :, 8:]], dim=2)  # segments 1 and 0 swapped
    with torch.no_grad():
        assert not torch.allclose(model(video), model(swapped), atol=1e-4)


@pytest.mark.parity
def test_activation_checkpointing_same_output_and_gradients():
    cfg = tiny_config()
    plain, ckpt = make_task(cfg).model, make_task(dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, activation_checkpointing=True))).model
    ckpt.load_state_dict(plain.state_dict())
    video = torch.randn(2, 3, 16, 32, 32)
    outs = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same kept tokens
        out = model(video)
        out.square().sum().backward()
        outs.append((out, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.unit
def test_segments_must_divide_frames():
    cfg = tiny_config(frames=18)
    with pytest.raises(ConfigError, match=r"long_video.frames=18: must be a multiple of model.num_frames=4"):
        checked(cfg)
    checked(tiny_config(mode="joint", frames=18))  # joint mode needs only whole tubelets
    with pytest.raises(ConfigError, match=r"long_video.frames=17: must be a multiple of model.tubelet_size=2"):
        checked(tiny_config(mode="joint", frames=17))
    with pytest.raises(ConfigError, match="long_video.temporal_heads=3: must divide model.width=32"):
        checked(dataclasses.replace(tiny_config(), long_video=LongVideoConfig(frames=16, temporal_heads=3)))


@pytest.mark.parity
def test_chunked_eval_equals_unchunked():
    cfg = tiny_config(frames=20)  # 5 segments: chunks of 2 leave a last chunk of 1
    whole = make_task(cfg).model.eval()
    chunked_task = make_task(dataclasses.replace(cfg, long_video=dataclasses.replace(cfg.long_video,
                                                                                       eval_chunk_segments=2)))
    chunked = chunked_task.model.eval()
    chunked.load_state_dict(whole.state_dict())
    assert isinstance(chunked, SegmentClassifier) and chunked.chunked and not whole.chunked
    calls = []
    chunked.encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    video = torch.randn(3, 3, 20, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(chunked(video), whole(video), rtol=1e-5, atol=1e-5)
    assert calls == [6, 6, 3]  # B x segments per encoder call
    assert chunked_task.eval_metrics([torch.tensor([1, 2, 3])])["eval/chunked"] is True
    chunked.train()  # training always encodes all segments at once
    calls.clear()
    chunked(video)
    assert calls == [15]


# ----------------------------------------------------------------------------- demo data


@pytest.mark.unit
def test_long_demo_is_deterministic():
    s = LongDemoSettings(frames=16, size=32)
    a, b = make_long_sample("train", 5, s), make_long_sample("train", 5, s)
    assert a["mp4"] == b["mp4"] and a["json"] == b["json"] and a["cls"] == b["cls"] == 5
    assert make_long_sample("train", 6, s)["mp4"] != a["mp4"]
    assert make_long_sample("val", 5, s)["mp4"] != a["mp4"]
    assert a["json"]["directions"] == list(LONG_SEQUENCES[5]) and a["json"]["label"] == LONG_CLASS_NAMES[5]
    assert len(a["json"]["segments"]) == 4 and a["json"]["segments"][-1]["end"] == 16 / s.fps


@pytest.mark.unit
def test_long_demo_labels_depend_on_order():
    # Every class holds the same four events; only their order differs.
    assert len(set(LONG_SEQUENCES)) == len(LONG_SEQUENCES) == 8
    assert {tuple(sorted(seq)) for seq in LONG_SEQUENCES} == {("down", "left", "right", "up")}
    # No single phase tells the class: every direction appears equally often at every position.
    for position in range(4):
        counts = {d: sum(seq[position] == d for seq in LONG_SEQUENCES) for d in ("up", "down", "left", "right")}
        assert set(counts.values()) == {2}
    seq = LONG_SEQUENCES[0]
    assert long_demo_label(seq) == 0
    assert long_demo_label(seq[1:] + seq[:1]) == 1  # the same events rotated: another class
    assert long_demo_label(seq[::-1]) not in (None, 0)  # reversed: another class
    with pytest.raises(ValueError, match="is not one of the demo's orders"):
        long_demo_label(("up", "down", "left", "right"))
    # Two videos with the same shapes, texture and events in different orders: the frames differ where the order does.
    s = LongDemoSettings(frames=32, size=32, boundary_jitter=0.0)
    frames_a, _, meta_a = render_long_clip(np.random.default_rng(7), LONG_SEQUENCES[0], s)
    frames_b, _, meta_b = render_long_clip(np.random.default_rng(7), LONG_SEQUENCES[4], s)
    assert meta_a["objects"] == meta_b["objects"] and meta_a["phase_starts"] == meta_b["phase_starts"] == [0, 8, 16, 24]
    assert np.array_equal(frames_a[:9], frames_b[:9])  # both start "up" (same speed draw)
    assert not np.array_equal(frames_a[9:], frames_b[9:])


@pytest.mark.unit
def test_long_demo_motion_follows_the_order():
    """The shape's displacement in each phase points in that phase's direction."""
    s = LongDemoSettings(frames=32, size=64, boundary_jitter=0.0)
    for label in (0, 4):
        _, _, meta = render_long_clip(np.random.default_rng(label), LONG_SEQUENCES[label], s)
        for (vx, vy), direction in zip(meta["velocities"], LONG_SEQUENCES[label]):
            ux, uy = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}[direction]
            assert vx * ux + vy * uy > 0.97 * np.hypot(vx, vy) >= 1.5 * 0.97


# ----------------------------------------------------------------------------- short videos


@pytest.mark.unit
def test_short_videos_repeat_frames():
    """A video with fewer frames than long_video.frames repeats frames, spread evenly, in order."""
    picks = sample_indices(10, 32, None)
    assert len(picks) == 32 and picks.min() == 0 and picks.max() == 9
    assert np.all(np.diff(picks) >= 0) and np.bincount(picks, minlength=10).min() >= 3  # every frame used 3-4x
    picks = sample_indices(10, 32, np.random.default_rng(0))
    assert len(picks) == 32 and np.all(np.diff(picks) >= 0) and picks.max() <= 9
    # What the loader asks for: the task's clip frames, not model.num_frames.
    cfg = tiny_config(frames=32)
    spec = ClipSpec.from_config(cfg.data, cfg.model, train=False, frames=make_task(cfg).clip_frames)
    assert len(spec.frame_indices(10, None)) == 32


@pytest.mark.unit
@pytest.mark.parametrize("frames, short", [(16, False), (24, True)])
def test_short_videos_are_counted(tiny_demo, frames, short):
    """The 16-frame demo clips are short for a 24-frame clip: every decoded sample is counted, in both streams."""
    data, model = DataConfig(train=f"{tiny_demo}/train", val=f"{tiny_demo}/val", shuffle_buffer=8), ModelConfig(img_size=32)
    train = next(iter(make_loader(TrainStream.from_config(data, model, 0, 1, 8, seed=0, frames=frames), 0)))
    assert train["video"].shape[2] == frames and train["position"]["short"] == (8 if short else 0)
    _, (end,) = eval_read(EvalStream.from_config(data, model, 0, 1, 32, frames=frames))
    assert end["position"]["short"] == (32 if short else 0)
