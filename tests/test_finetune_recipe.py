"""The fine-tuning recipe: layer-wise LR decay, label smoothing, Mixup/CutMix, multi-view testing."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import REPO
from turbo_ds.config import (BatchPlan, Config, ConfigError, DeepSpeedConfig, ModelConfig, check_finetune_lr,
                             load_config, load_ds_config, plan_batches)
from turbo_ds.config.deepspeed import FINETUNE_ANCHORS, FINETUNE_MARGIN
from turbo_ds.engine.optim import group_names, param_groups
from turbo_ds.models.vit import VideoClassifier, VideoViT
from turbo_ds.models.weights import mark_pretrained
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


# ------------------------------------------------------------- fine-tuning learning rates

RECIPES = sorted((REPO / "configs").glob("*.yaml"))
PRETRAINED = [r for r in RECIPES if load_config(r).model.pretrained and not load_config(r).model.generate_demo_clip]
DEMO_JSON = load_ds_config(REPO / "ds_configs/zero2_bf16.json")


def recipe_json(recipe):
    """The DeepSpeed JSON a recipe's header runs it with (``--ds_config ds_configs/X.json``)."""
    named = set(re.findall(r"--ds_config (ds_configs/\S+\.json)", recipe.read_text()))
    assert len(named) == 1, f"{recipe.name}: its commands name {sorted(named) or 'no'} DeepSpeed JSON"
    return named.pop()


def test_the_pretrained_recipes_are_found():
    assert {r.stem for r in PRETRAINED} >= {"k400_vitb", "ssv2_vitb", "ucf101_vitb", "breakfast_vitb", "coin_vitb",
                                            "webvid_vitb", "webvid_clip_vitb"}


@pytest.mark.parametrize("recipe", PRETRAINED, ids=lambda p: p.stem)
@pytest.mark.parametrize("ranks", [1, 8, 64])
def test_pretrained_recipes_run_with_their_own_json_and_refuse_the_demos(recipe, ranks):
    cfg, ds = load_config(recipe), load_ds_config(REPO / recipe_json(recipe))
    assert ds.raw["lr_base_batch"] and ds.zero_stage == 2 and ds.precision == "bf16"
    check_finetune_lr(cfg, ds, plan_batches(cfg, ds, ranks))  # its own JSON passes at any world size
    anchor = FINETUNE_ANCHORS[cfg.model.arch]
    plan = plan_batches(cfg, DEMO_JSON, ranks)
    if DEMO_JSON.peak_lr(plan) * anchor.batch / plan.global_size <= FINETUNE_MARGIN * anchor.lr:
        return  # 1e-3 at 64 x 16 = 1024 clips is VideoMAE's own rule: nothing to refuse
    with pytest.raises(ConfigError, match=rf"use --ds_config {re.escape(anchor.ds_config)} .*train.check_finetune_lr"):
        check_finetune_lr(cfg, DEMO_JSON, plan, "ds_configs/zero2_bf16.json")
    check_finetune_lr(load_config(recipe, ["train.check_finetune_lr=false"]), DEMO_JSON, plan)  # asked for


def test_the_clip_json_holds_the_lr_its_recipe_states():
    recipe = REPO / "configs/webvid_clip_vitb.yaml"
    assert recipe_json(recipe) == FINETUNE_ANCHORS["clip"].ds_config == "ds_configs/clip_ft_zero2_bf16.json"
    ds = load_ds_config(REPO / recipe_json(recipe))
    at_1024 = ds.peak_lr(BatchPlan(32, 1, 32))  # 32 ranks x micro 32, as the recipe suggests
    assert at_1024 == pytest.approx(1.25e-5) and 1e-5 <= at_1024 <= 2e-5
    assert "lr 1.25e-5 x global batch / 1024" in recipe.read_text()  # the recipe says what the JSON holds
    assert ds.optimizer["params"]["betas"] == [0.9, 0.98] and ds.optimizer["params"]["weight_decay"] == 0.2


def test_videomae_json_scales_the_lr_with_the_batch_and_deepspeed_gets_it_resolved():
    ds = load_ds_config(REPO / "ds_configs/videomae_ft_zero2_bf16.json")
    assert ds.optimizer["params"]["weight_decay"] == 0.05
    assert load_config(REPO / "configs/k400_vitb.yaml").train.layer_decay == 0.75
    for ranks, lr in ((32, 1e-3), (8, 2.5e-4), (1, 3.125e-5)):  # 5e-4 x 16 x ranks / 256
        plan = BatchPlan(16, 1, ranks)
        assert ds.peak_lr(plan) == pytest.approx(lr)
        engine = ds.engine_config(plan)
        assert "lr_base_batch" not in engine and engine["optimizer"]["params"]["lr"] == pytest.approx(lr)
        assert ds.resolved(plan)["optimizer"]["params"]["lr"] == pytest.approx(lr)  # the run dir's copy
    assert DEMO_JSON.peak_lr(BatchPlan(16, 1, 8)) == 1e-3  # no lr_base_batch: the lr as given


@pytest.mark.parametrize("base", [0, -3, 1.5, "256", True])
def test_a_bad_lr_base_batch_is_a_config_error(base):
    with pytest.raises(ConfigError, match="lr_base_batch"):
        DeepSpeedConfig({**DEMO_JSON.raw, "lr_base_batch": base})


def test_head_lr_scale_raises_the_lr_of_what_no_weights_file_initialised():
    model = VideoClassifier(VideoViT(SMALL), num_classes=5)
    mark_pretrained(model.encoder.parameters())  # as load_matching does for a checkpoint's tensors
    plain = param_groups(model, 1.0, 0.5, 3)
    assert len(plain) == len(param_groups(VideoClassifier(VideoViT(SMALL), 5), 1.0, 0.5, 3))  # scale 1: no new groups
    groups = param_groups(model, 1.0, 0.5, 3, head_lr_scale=10)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["head.weight"])] == 10.0 and lr_of[id(named["head.bias"])] == 10.0
    assert lr_of[id(named["encoder.blocks.2.mlp.0.weight"])] == 0.5  # pretrained: layer decay only
    assert lr_of[id(named["encoder.norm.weight"])] == 1.0  # after the blocks, pretrained
    names = group_names(groups, model)
    assert sorted(n for g in names for n in g) == sorted(named)


def test_head_lr_scale_needs_pretrained_weights():
    with pytest.raises(ConfigError, match="train.head_lr_scale=10"):
        load_config(REPO / "configs/demo_action_cls.yaml", ["train.head_lr_scale=10"])
    with pytest.raises(ConfigError, match="train.head_lr_scale=0"):
        load_config(REPO / "configs/k400_vitb.yaml", ["train.head_lr_scale=0"])

