"""Encoder parity: the Turbo fast path, activation checkpointing, stochastic depth, position tables."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from turbo_ds.config import ModelConfig, TurboConfig
from turbo_ds.models.vit import DropPath, VideoClassifier, VideoViT, interpolate_pos_embed
from turbo_ds.turbo import keep_count, tube_keep_indices

pytestmark = pytest.mark.parity

CFG = ModelConfig(num_frames=4, img_size=16, patch_size=4, tubelet_size=2, width=32, depth=3, heads=4, pos_embed="learned")


def plain_forward(vit: VideoViT, video: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The obvious path: Conv3d over every patch, add positions, then drop tokens."""
    x = vit.patch_embed.proj(video).flatten(2).transpose(1, 2) + vit.pos_embed  # (B, N, D)
    x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
    for block in vit.blocks:
        x = block(x)
    return vit.norm(x.mean(dim=1))


def test_fast_path_equals_conv3d_then_gather():
    torch.manual_seed(0)
    vit = VideoViT(CFG, TurboConfig(strategy="tube", keep_ratio=0.25)).train()
    x = torch.randn(2, 3, 4, 16, 16)
    torch.manual_seed(1)
    fast = vit(x)
    torch.manual_seed(1)  # the selector draws from the global generator: replay its choice
    keep = tube_keep_indices(2, vit.grid, keep_count("tube", vit.grid, 0.25))
    assert torch.allclose(fast, plain_forward(vit, x, keep), atol=1e-5)


def test_classifier_trains_on_kept_tokens_only():
    torch.manual_seed(0)
    model = VideoClassifier(VideoViT(CFG, 0.5), num_classes=3)
    logits = model.train()(torch.randn(4, 3, 4, 16, 16))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert logits.shape == (4, 3)
    assert model.encoder.pos_embed.grad.abs().sum(-1).eq(0).any()  # dropped positions get no gradient



@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_activation_checkpointing_keeps_outputs_and_gradients(drop_path):
    cfg = dataclasses.replace(CFG, drop_path=drop_path)
    torch.manual_seed(0)
    plain = VideoViT(cfg, 0.5)
    ckpt = VideoViT(dataclasses.replace(cfg, activation_checkpointing=True), 0.5)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 4, 16, 16)
    outs, grads = [], []
    for model in (plain, ckpt):
        torch.manual_seed(3)  # same token choice and drop-path draws (recompute replays the RNG)
        out = model.train()(x)
        out.square().sum().backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_drop_path_increases_over_depth_and_is_identity_when_off():
    vit = VideoViT(dataclasses.replace(CFG, drop_path=0.2))
    assert isinstance(vit.blocks[0].drop_path, nn.Identity)  # first block: rate 0
    assert [b.drop_path.p for b in vit.blocks[1:]] == pytest.approx([0.1, 0.2])
    assert all(isinstance(b.drop_path, nn.Identity) for b in VideoViT(CFG).blocks)
    drop, x = DropPath(0.5), torch.ones(1000, 2, 3)
    assert torch.equal(drop.eval()(x), x)
    y = drop.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0} and 0.4 < y[:, 0, 0].mean() / 2 < 0.6  # whole samples dropped


def test_position_table_interpolation():
    table = torch.randn(1, 2 * 3 * 3, 8)
    assert interpolate_pos_embed(table, (2, 3, 3), (2, 3, 3)) is table
    out = interpolate_pos_embed(table, (2, 3, 3), (4, 6, 6))
    ref = F.interpolate(table.reshape(1, 2, 3, 3, 8).permute(0, 4, 1, 2, 3), size=(4, 6, 6), mode="trilinear")
    assert out.shape == (1, 144, 8) and torch.allclose(out, ref.permute(0, 2, 3, 4, 1).reshape(1, 144, 8))
    flat = torch.arange(4.0).reshape(1, 4, 1).expand(-1, -1, 2)  # (1, 4, 2): grid (1, 2, 2)
    assert torch.allclose(interpolate_pos_embed(flat, (1, 2, 2), (3, 2, 2)), flat.repeat(1, 3, 1))  # along time only


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_fixed_position_table_follows_the_compute_dtype(ratio):
    vit = VideoViT(dataclasses.replace(CFG, pos_embed="sincos"), ratio)
    for p in vit.parameters():  # what DeepSpeed bf16 does: parameters cast, buffers left in fp32
        p.data = p.data.bfloat16()
    assert vit.pos_embed.dtype == torch.float32
    assert vit.train()(torch.randn(2, 3, 4, 16, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_autocast_keeps_one_low_precision_copy_of_the_attention_input():
    """Under bf16 autocast the q, k and v projections share one cast of their input: three separate casts
    would each be kept for backward (55 MB more at ViT-S/16 16x224, batch 2), for the same outputs."""
    block = VideoViT(CFG).blocks[0].train()
    h = block.norm1(torch.randn(2, 8, 32, requires_grad=True))  # (B, N, D), not a leaf (autocast caches leaf casts)
    kept = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.bfloat16 and t.numel() == h.numel() and torch.equal(t.reshape(h.shape), h.bfloat16()):
            kept[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        y = block.attn(h)
    assert len(kept) == 1, f"{len(kept)} bf16 copies of the attention input kept for backward"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same as casting inside each projection
        ref = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias)  # (B, N, 3D)
    q, k, v = ref.unflatten(-1, (3, 4, 8)).permute(2, 0, 3, 1, 4)  # (B, H, N, Dh) each
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expect = block.attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(y, expect)
