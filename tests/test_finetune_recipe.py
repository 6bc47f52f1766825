"""The fine-tuning recipe: layer-wise LR decay, label smoothing, Mixup/CutMix, multi-view testing."""

from __future__ import annotations

import pytest
import torch

from turbo_ds.config import Config, ModelConfig
from turbo_ds.engine.optim import param_groups
from turbo_ds.models.vit import VideoClassifier, VideoViT
from turbo_ds.tasks.action_cls import ActionClassification
from turbo_ds.tasks.mixup import mix_batch, soft_targets

pytestmark = pytest.mark.unit

SMALL = ModelConfig(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, width=32, depth=3, heads=4)


def test_layer_decay_scales_lr_by_depth():
    model = VideoClassifier(VideoViT(SMALL), num_classes=5)
    groups = param_groups(model, base_lr=1.0, layer_decay=0.5, depth=3)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["head.weight"])] == 1.0
    assert lr_of[id(named["encoder.blocks.2.mlp.0.weight"])] == 0.5
    assert lr_of[id(named["encoder.blocks.0.attn.qkv.weight"])] == 0.125
    assert lr_of[id(named["encoder.patch_embed.proj.weight"])] == 0.0625
    decay_free = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    assert id(named["encoder.blocks.0.norm1.weight"]) in decay_free and id(named["head.weight"]) not in decay_free
    assert len({id(p) for g in groups for p in g["params"]}) == len(named)  # every parameter exactly once


def test_label_smoothing_targets():
    t = soft_targets(torch.tensor([2, 0]), 4, smoothing=0.2)
    assert torch.allclose(t.sum(1), torch.ones(2)) and t[0, 2] == pytest.approx(0.85) and t[0, 0] == pytest.approx(0.05)


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixing_keeps_targets_normalised_and_cutmix_consistent_over_time(mixup, cutmix):
    torch.manual_seed(0)
    video = torch.randn(4, 3, 8, 32, 32)
    mixed, targets = mix_batch(video, soft_targets(torch.tensor([0, 1, 2, 3]), 4, 0.0), mixup, cutmix)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert targets[0, 0] + targets[0, 3] == pytest.approx(1.0)  # each clip mixes with its partner only
    if cutmix:
        changed = (mixed != video).any(dim=1)  # (B, T, H, W)
        assert torch.equal(changed, changed[:, :1].expand_as(changed))  # the same box in every frame
        assert targets[0, 0] == pytest.approx(1 - changed[0, 0].float().mean().item(), abs=1e-6)


class CountingModel(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.seen = logits, []

    def forward(self, video):
        self.seen.append(video.shape[0])
        return self.logits[: video.shape[0]]


def test_multi_view_testing_averages_every_view():
    cfg = Config(model=SMALL)
    task = ActionClassification(cfg, {"class_names": ["a", "b"]})
    # 2 videos x 3 views; the views of video 0 disagree, and their average says class 1
    logits = torch.tensor([[4.0, 0.0], [0.0, 3.0], [0.0, 3.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0]])
    model = CountingModel(logits)
    out = task.eval_step(model, {"video": torch.zeros(2, 3, 3, 4, 16, 16), "label": torch.tensor([1, 1])}, torch.float32)
    assert model.seen == [6] and out.tolist() == [2, 2, 2]
