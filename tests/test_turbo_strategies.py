"""Token selection strategies, the keep-ratio schedule, and their config checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from turbo_ds.config import ConfigError, ModelConfig, TurboConfig, load_config
from turbo_ds.config.schema import STRATEGY_NAMES
from turbo_ds.models.vit import VideoViT
from turbo_ds.tasks import checked
from turbo_ds.turbo import (STRATEGIES, TokenSelector, frame_balanced_keep_indices, keep_count, keep_ratio_at,
                            motion_keep_indices, motion_scores, num_kept, tube_keep_indices)

pytestmark = pytest.mark.unit

GRID = (4, 6, 5)  # (T', H', W'): 120 tokens
N, HW = 120, 30
PATCH_SHAPE = (3, 2, 2, 2)  # (C, t, p, p) of the random "patches" the strategies choose from


def indices(strategy: str, ratio: float, seed: int = 0, batch: int = 8) -> torch.Tensor:
    """``strategy``'s keep indices for random patches, through the table every caller uses."""
    torch.manual_seed(seed)
    patches = torch.rand(batch, N, math.prod(PATCH_SHAPE))  # (B, N, P)
    return STRATEGIES[strategy].select(patches, GRID, PATCH_SHAPE, keep_count(strategy, GRID, ratio), 0.5, 0.25)


@pytest.mark.parametrize("n, ratio, k", [(512, 0.25, 128), (10, 0.01, 1), (7, 0.5, 4), (8, 1.0, 8)])
def test_num_kept(n, ratio, k):
    assert num_kept(n, ratio) == k


def test_selector_uses_train_and_eval_ratios():
    grid, patch_shape = (2, 4, 5), (3, 2, 1, 1)
    sel = TokenSelector("random", grid, patch_shape, keep_ratio=0.25, eval_keep_ratio=0.5)
    patches = torch.zeros(3, 40, 6)
    assert sel.train()(patches).shape == (3, 10)
    assert sel.eval()(patches).shape == (3, 20)
    assert TokenSelector("random", grid, patch_shape, 0.25).eval()(patches) is None  # no gather at all
    sel.set_keep_ratio(0.5)  # a schedule moves the training ratio only
    assert sel.train()(patches).shape == (3, 20) and sel.num_kept(training=False) == 20


def test_the_config_spells_the_strategy_names_of_the_table():
    # config imports nothing above it, so it spells the names; this keeps both lists equal
    assert STRATEGY_NAMES == tuple(STRATEGIES)


def test_per_slice_rule_of_the_shipped_strategies():
    assert {name for name, s in STRATEGIES.items() if s.per_slice} == {"tube", "frame_balanced"}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", [0.01, 0.25, 0.5, 0.9])
def test_indices_unique_sorted_in_range_with_k_as_specified(strategy, ratio):
    idx = indices(strategy, ratio)
    per_slice = max(1, round(HW * ratio))
    k = GRID[0] * per_slice if STRATEGIES[strategy].per_slice else max(1, round(N * ratio))
    assert idx.shape == (8, k) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < N
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # sorted ascending, hence unique
    assert torch.equal(idx, indices(strategy, ratio))  # deterministic under a seed
    if k < N - 1:
        assert not torch.equal(idx, indices(strategy, ratio, seed=1))


def test_tube_keeps_the_same_spatial_set_at_every_time_step():
    idx = indices("tube", 0.3)
    t, s = idx // HW, idx % HW  # time slice and spatial position of each kept token
    spatial = s.reshape(8, GRID[0], -1)  # (B, T', k): tokens are time-major
    assert bool((t.reshape(8, GRID[0], -1) == torch.arange(GRID[0])[:, None]).all())
    assert bool((spatial == spatial[:, :1]).all())
    assert len({tuple(row[0].tolist()) for row in spatial}) > 1  # samples differ


def test_frame_balanced_keeps_equal_counts_per_slice():
    idx = indices("frame_balanced", 0.3)
    counts = torch.stack([torch.bincount(row // HW, minlength=GRID[0]) for row in idx])  # (B, T')
    assert bool((counts == round(HW * 0.3)).all())
    spatial = (idx % HW).reshape(8, GRID[0], -1)
    assert not bool((spatial == spatial[:, :1]).all())  # unlike tube, slices choose independently


def test_tube_and_frame_balanced_assert_a_multiple_of_the_time_steps():
    with pytest.raises(AssertionError, match="multiple of 4"):
        tube_keep_indices(2, GRID, 10)
    with pytest.raises(AssertionError, match="multiple of 4"):
        frame_balanced_keep_indices(2, GRID, 10)


def moving_square_clip(frames: int = 8, size: int = 32, patch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Static noise everywhere; only the top-left 2x2 patches (a quarter of the frame) flicker."""
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 1, size, size, generator=g).expand(-1, -1, frames, -1, -1).clone()
    video[:, :, :, : 2 * patch, : 2 * patch] = torch.rand(1, 3, frames, 2 * patch, 2 * patch, generator=g)
    side = size // patch
    moving = torch.zeros(side, side, dtype=torch.bool)
    moving[:2, :2] = True
    return video, moving.flatten()


@pytest.mark.parametrize("tubelet", [2, 1])
def test_motion_keeps_the_moving_region(tubelet):
    video, moving_hw = moving_square_clip()
    cfg = ModelConfig(num_frames=8, img_size=32, patch_size=8, tubelet_size=tubelet, width=16, depth=1, heads=2)
    vit = VideoViT(cfg, TurboConfig(strategy="motion", keep_ratio=0.25, motion_temperature=0.0))
    patches = vit.patch_embed.patchify(video)  # (1, N, P)
    scores = motion_scores(patches, vit.grid, vit.patch_embed.patch_shape)
    assert scores.shape == (1, vit.num_tokens)
    moving = moving_hw.repeat(vit.grid[0])  # (N,): same region at every time step
    keep = vit.turbo.train()(patches)[0]
    assert keep.numel() == round(vit.num_tokens * 0.25)
    assert moving[keep].float().mean() > 0.9  # over 90% of the kept tokens are the moving region's ...
    assert moving[keep].sum() / moving.sum() > 0.9  # ... and they cover over 90% of it


def test_motion_temperature_and_mix():
    scores = torch.linspace(0, 10, 100)[None].repeat(4, 1)  # token i scores i / 10
    top = motion_keep_indices(scores, 10, temperature=0.0)
    assert bool((top == torch.arange(90, 100)).all())  # pure top-k
    g = torch.Generator().manual_seed(0)
    hot = motion_keep_indices(scores, 10, temperature=100.0, generator=g)
    assert hot.float().mean() < 80  # a high temperature is close to uniform
    mixed = motion_keep_indices(scores, 10, temperature=0.0, mix=0.3, generator=g)
    assert bool((mixed[:, -7:] == torch.arange(93, 100)).all())  # 7 by score, 3 at random from the rest
    assert bool((mixed[:, 1:] > mixed[:, :-1]).all())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keep_ratio_one_is_exactly_no_dropout(strategy):
    torch.manual_seed(0)
    cfg = ModelConfig(num_frames=4, img_size=16, patch_size=8, width=32, depth=2, heads=4)
    vit = VideoViT(cfg, TurboConfig(strategy=strategy, keep_ratio=1.0))
    x = torch.randn(2, 3, 4, 16, 16)
    assert vit.turbo.train()(vit.patch_embed.patchify(x)) is None
    assert torch.equal(vit.train()(x), vit.eval()(x))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_encoder_trains_with_each_strategy(strategy):
    torch.manual_seed(0)
    cfg = ModelConfig(num_frames=4, img_size=16, patch_size=4, width=32, depth=1, heads=4)
    vit = VideoViT(cfg, TurboConfig(strategy=strategy, keep_ratio=0.25)).train()
    vit(torch.randn(2, 3, 4, 16, 16)).sum().backward()
    assert vit.turbo.num_kept() == keep_count(strategy, vit.grid, 0.25) == 8
    assert vit.patch_embed.proj.weight.grad is not None


def test_schedules():
    const = TurboConfig(keep_ratio=0.25)
    assert [keep_ratio_at(const, s, 100) for s in (0, 50, 99)] == [0.25, 0.25, 0.25]
    lin = TurboConfig(keep_ratio=0.2, schedule="linear", keep_ratio_end=0.6, ramp_steps=40)
    assert [keep_ratio_at(lin, s, 100) for s in (0, 10, 20, 40, 99)] == pytest.approx([0.2, 0.3, 0.4, 0.6, 0.6])
    cos = dataclasses.replace(lin, schedule="cosine")
    assert [keep_ratio_at(cos, s, 100) for s in (0, 20, 40, 70)] == pytest.approx([0.2, 0.4, 0.6, 0.6])
    assert keep_ratio_at(cos, 10, 100) == pytest.approx(0.2 + 0.4 * (1 - math.cos(math.pi / 4)) / 2)
    whole = TurboConfig(keep_ratio=0.5, schedule="linear", keep_ratio_end=0.25, full_token_steps=20)
    assert [keep_ratio_at(whole, s, 100) for s in (0, 40, 79, 80, 99)] == pytest.approx([0.5, 0.375, 0.5 - 0.25 * 79 / 80,
                                                                                         1.0, 1.0])


@pytest.mark.parametrize("override, key", [
    ("turbo.strategy=blocks", "turbo.strategy"),
    ("turbo.schedule=linear", "turbo.keep_ratio_end"),
    ("turbo.keep_ratio_end=1.5", "turbo.keep_ratio_end"),
    ("turbo.keep_ratio_end=0", "turbo.keep_ratio_end"),
    ("turbo.motion_mix=1.5", "turbo.motion_mix"),
    ("turbo.motion_temperature=-1", "turbo.motion_temperature"),
    ("turbo.full_token_steps=600", "turbo.full_token_steps"),
    ("turbo.ramp_steps=-1", "turbo.ramp_steps"),
    ("model.drop_path=1.0", "model.drop_path"),
    ("model.pretrained=/nonexistent/videomae.pth", "model.pretrained"),
])
def test_bad_turbo_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        checked(load_config("configs/demo_action_cls.yaml", [override]))
    assert "\n" not in str(err.value)


def test_good_turbo_config_loads():
    cfg = load_config("configs/demo_action_cls.yaml", ["turbo.strategy=motion", "turbo.schedule=cosine",
                                                       "turbo.keep_ratio_end=0.5", "turbo.full_token_steps=50"])
    assert cfg.turbo.strategy == "motion" and keep_ratio_at(cfg.turbo, cfg.train.steps - 1, cfg.train.steps) == 1.0
