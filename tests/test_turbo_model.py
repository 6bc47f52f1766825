"""Token selection invariants and encoder parity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from turbo_ds.config import ModelConfig, TurboConfig
from turbo_ds.models.vit import VideoClassifier, VideoViT
from turbo_ds.turbo import TokenSelector, num_kept, random_keep_indices

SMALL = ModelConfig(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, width=32, depth=2, heads=4)


@pytest.mark.parametrize("n, ratio, k", [(512, 0.25, 128), (10, 0.01, 1), (7, 0.5, 4), (8, 1.0, 8)])
def test_num_kept(n, ratio, k):
    assert num_kept(n, ratio) == k


def test_random_indices_unique_sorted_in_range():
    g = torch.Generator().manual_seed(0)
    idx = random_keep_indices(64, 100, 25, generator=g)
    assert idx.shape == (64, 25) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < 100
    assert all(len(set(row.tolist())) == 25 for row in idx)
    assert bool((idx[:, 1:] > idx[:, :-1]).all())
    again = random_keep_indices(64, 100, 25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)  # deterministic under a seed
    assert len({tuple(r.tolist()) for r in idx}) > 1  # samples differ


def test_selector_uses_train_and_eval_ratios():
    grid, patch_shape = (2, 4, 5), (3, 2, 1, 1)
    sel = TokenSelector(TurboConfig(keep_ratio=0.25, eval_keep_ratio=0.5), grid, patch_shape)
    patches = torch.zeros(3, 40, 6)
    assert sel.train()(patches).shape == (3, 10)
    assert sel.eval()(patches).shape == (3, 20)
    assert TokenSelector(TurboConfig(keep_ratio=0.25), grid, patch_shape).eval()(patches) is None  # no gather at all
    sel.set_keep_ratio(0.5)  # a schedule moves the training ratio only
    assert sel.train()(patches).shape == (3, 20) and sel.num_kept(training=False) == 20


def test_keep_ratio_one_equals_no_dropout():
    torch.manual_seed(0)
    full = VideoViT(SMALL, 1.0)
    turbo = VideoViT(SMALL, 0.25)
    turbo.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 4, 16, 16)
    assert torch.allclose(full.train()(x), turbo.eval()(x), atol=1e-6)
    assert not torch.allclose(turbo.train()(x), turbo.eval()(x), atol=1e-3)


def test_gathered_linear_embedding_equals_conv3d():
    torch.manual_seed(0)
    vit = VideoViT(SMALL)
    x = torch.randn(2, 3, 4, 16, 16)
    conv = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, N, D) from Conv3d over all patches
    linear = vit.patch_embed.embed(vit.patch_embed.patchify(x))
    assert torch.allclose(conv, linear, atol=1e-5)
    keep = random_keep_indices(2, conv.shape[1], 3)
    gathered = vit.patch_embed.embed(vit.patch_embed.patchify(x).gather(1, keep[..., None].expand(-1, -1, 3 * 2 * 8 * 8)))
    assert torch.allclose(conv.gather(1, keep[..., None].expand(-1, -1, 32)), gathered, atol=1e-5)


def test_classifier_trains_on_kept_tokens_only():
    torch.manual_seed(0)
    model = VideoClassifier(VideoViT(dataclasses.replace(SMALL, pos_embed="learned"), 0.5), num_classes=3)
    logits = model.train()(torch.randn(4, 3, 4, 16, 16))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert logits.shape == (4, 3)
    assert model.encoder.pos_embed.grad.abs().sum(-1).eq(0).any()  # dropped positions get no gradient
