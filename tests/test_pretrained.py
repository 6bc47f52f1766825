"""Loading VideoMAE weights (transformers directories and original .pth files) into our encoder."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from turbo_ds.config import ModelConfig
from turbo_ds.models.pretrained import CheckpointMismatch, load_pretrained
from turbo_ds.models.vit import VideoClassifier, VideoViT, interpolate_pos_embed

pytestmark = pytest.mark.parity

HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, num_frames=4,
          image_size=32, patch_size=8, tubelet_size=2, num_labels=5)
OURS = ModelConfig(num_frames=4, img_size=32, patch_size=8, tubelet_size=2, width=64, depth=2, heads=4, norm_eps=1e-12)


@pytest.fixture(scope="module")
def videomae() -> VideoMAEForVideoClassification:
    """A random VideoMAE classifier with non-trivial norms and biases (init leaves them at 1 / 0)."""
    torch.manual_seed(0)
    model = VideoMAEForVideoClassification(VideoMAEConfig(**HF)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def original_layout(model: VideoMAEForVideoClassification) -> dict[str, torch.Tensor]:
    """The transformers weights under the original VideoMAE (timm-style) key names."""
    renames = {"attention.attention.query.bias": "attn.q_bias", "attention.attention.value.bias": "attn.v_bias",
               "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
               "layernorm_before": "norm1", "layernorm_after": "norm2"}
    out = {}
    for key, value in model.state_dict().items():
        key = key.removeprefix("videomae.").replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
        key = key.replace("classifier.", "head.")
        if m := re.match(r"encoder\.layer\.(\d+)\.(.*)$", key):
            block, rest = m.groups()
            if re.match(r"attention\.attention\.(query|key|value)\.weight", rest):
                continue  # fused below
            for old, new in renames.items():
                rest = rest.replace(old, new)
            key = f"blocks.{block}.{rest}"
        out[key] = value
    for i in range(HF["num_hidden_layers"]):
        attn = model.videomae.encoder.layer[i].attention.attention
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    return out


def classifier(cfg: ModelConfig = OURS, classes: int = 5) -> VideoClassifier:
    torch.manual_seed(1)
    return VideoClassifier(VideoViT(cfg), classes).eval()


@torch.no_grad()
def assert_same_logits(ours: VideoClassifier, videomae: VideoMAEForVideoClassification) -> None:
    x = torch.randn(2, 3, 4, 32, 32)  # ours: (B, C, T, H, W); transformers: (B, T, C, H, W)
    expected = videomae(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    assert torch.allclose(ours(x), expected, atol=1e-4), (ours(x) - expected).abs().max()


def test_transformers_directory_loads_exactly(videomae, tmp_path):
    videomae.save_pretrained(tmp_path)
    model = classifier()
    report = load_pretrained(model, tmp_path)
    assert report.source == "transformers" and not report.missing and not report.unexpected
    assert "head loaded (5 classes)" in str(report) and "k bias set to 0" in str(report)
    assert "rebuilt" in str(report)  # the sinusoid table is rebuilt, not loaded
    assert_same_logits(model, videomae)


def test_transformers_base_model_directory_loads_the_encoder(videomae, tmp_path):
    videomae.videomae.save_pretrained(tmp_path)  # a VideoMAEModel: no fc_norm, no classifier
    model = classifier()
    report = load_pretrained(model.encoder, tmp_path)
    assert report.missing == ["norm.weight", "norm.bias"] and not report.unexpected
    model.encoder.norm.load_state_dict(videomae.fc_norm.state_dict())
    model.head.load_state_dict(videomae.classifier.state_dict())
    assert_same_logits(model, videomae)


@pytest.mark.parametrize("wrap", ["model", "module", None])
def test_original_pth_loads_exactly(videomae, tmp_path, wrap):
    state = original_layout(videomae)
    torch.save({wrap: state, "epoch": 3} if wrap else state, tmp_path / "videomae.pth")
    model = classifier()
    report = load_pretrained(model, tmp_path / "videomae.pth")
    assert report.source == "videomae" and not report.missing and not report.unexpected, str(report)
    assert_same_logits(model, videomae)


def test_pretraining_checkpoint_with_encoder_prefix_and_decoder(videomae, tmp_path):
    state = {f"encoder.{k}": v for k, v in original_layout(videomae).items()
             if not k.startswith(("fc_norm", "head"))}
    state |= {"encoder.norm.weight": torch.ones(64), "encoder.norm.bias": torch.zeros(64),
              "decoder.blocks.0.mlp.fc1.weight": torch.zeros(8, 8), "decoder.blocks.1.mlp.fc1.weight": torch.zeros(8, 8),
              "mask_token": torch.zeros(1, 1, 32)}
    torch.save({"model": state}, tmp_path / "pretrain.pth")
    report = load_pretrained(classifier(classes=7), tmp_path / "pretrain.pth")
    text = str(report)
    assert set(report.missing) == {"encoder.norm.weight", "encoder.norm.bias", "head.weight", "head.bias"}
    assert "decoder.blocks.*.mlp.fc1.weight (2)" in text and "mask_token" in text and "token norm not used" in text


def test_head_skipped_when_class_counts_differ(videomae, tmp_path):
    videomae.save_pretrained(tmp_path)
    model = classifier(classes=3)
    head = model.head.weight.clone()
    report = load_pretrained(model, tmp_path)
    assert "head skipped: checkpoint has 5 classes, model 3" in str(report)
    assert torch.equal(model.head.weight, head) and report.missing == ["head.weight", "head.bias"]


def test_learned_position_table_is_interpolated_to_other_frames_and_size(videomae, tmp_path):
    table = torch.randn(1, 2 * 4 * 4, 64)  # trained on 4 frames of 32 px: grid (2, 4, 4)
    state = original_layout(videomae) | {"pos_embed": table}
    args = argparse.Namespace(num_frames=4, input_size=32, tubelet_size=2, lr=1e-3)
    torch.save({"model": state, "args": args}, tmp_path / "learned.pth")
    cfg = dataclasses.replace(OURS, num_frames=8, img_size=16, pos_embed="learned")  # grid (4, 2, 2)
    model = classifier(cfg)
    report = load_pretrained(model, tmp_path / "learned.pth")
    assert "interpolated (trilinear) from checkpoint grid (2, 4, 4)" in str(report) and "(4, 2, 2)" in str(report)
    assert torch.allclose(model.encoder.pos_embed, interpolate_pos_embed(table, (2, 4, 4), (4, 2, 2)))
    assert model(torch.randn(1, 3, 8, 16, 16)).shape == (1, 5)

    torch.save({"model": state}, tmp_path / "no_args.pth")  # without args the grid (2, 4, 4) is ambiguous
    with pytest.raises(CheckpointMismatch, match="pass grid="):
        load_pretrained(classifier(cfg), tmp_path / "no_args.pth")
    assert "given" in str(load_pretrained(classifier(cfg), tmp_path / "no_args.pth", grid=(2, 4, 4)))


def test_sincos_checkpoint_into_a_learned_table(videomae, tmp_path):
    videomae.save_pretrained(tmp_path)
    model = classifier(dataclasses.replace(OURS, pos_embed="learned"))
    report = load_pretrained(model, tmp_path)
    assert "initialised from the sinusoid table" in str(report)
    assert_same_logits(model, videomae)


@pytest.mark.parametrize("change, message", [
    (dict(width=32, heads=4), "checkpoint width 64 != model.width 32"),
    (dict(depth=3), "checkpoint depth 2 != model.depth 3"),
    (dict(heads=8), "checkpoint heads 4 != model.heads 8"),
    (dict(patch_size=4), "tubelet_size / model.patch_size"),
    (dict(qkv_bias=False), "model.qkv_bias=true"),
])
def test_architecture_mismatch_is_one_clear_error(videomae, tmp_path, change, message):
    videomae.save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatch, match=re.escape(message)):
        load_pretrained(classifier(dataclasses.replace(OURS, **change)), tmp_path)


def test_not_a_videomae_checkpoint(tmp_path):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatch, match="not a VideoMAE checkpoint"):
        load_pretrained(classifier(), tmp_path / "other.pth")
