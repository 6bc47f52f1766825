"""Bad configs stop before any engine starts, with one line naming the key and the fix."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_train, tiny_overrides
from turbo_ds.config import Config, ConfigError, load_config, load_ds_config, plan_batches
from turbo_ds.tasks import TASKS, checked


@pytest.mark.e2e
@pytest.mark.parametrize("override, key", [
    ("turbo.keep_ratoi=0.5", "turbo.keep_ratoi"),        # unknown key (typo)
    ("model.depth=deep", "model.depth"),                  # wrong type
    ("turbo.keep_ratio=1.5", "turbo.keep_ratio"),         # outside (0, 1]
    ("turbo.keep_ratio=0", "turbo.keep_ratio"),
    ("turbo.keep_ratio=most", "turbo.keep_ratio"),      # neither a number nor auto
    ("turbo.keep_ratio=auto", "turbo.memory_budget_gb"),  # auto needs a budget
    ("data.train=/nonexistent/shards", "data.train"),      # missing shard path
    ("train.global_batch_size=48", "train.global_batch_size"),  # contradicts the JSON (16 x 1 x 1 = 16)
])
def test_bad_config_fails_fast_naming_the_key(tiny_demo, tmp_path, override, key):
    proc = run_train(tiny_overrides(tiny_demo, tmp_path / "run", override), ranks=None, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error:") and key in lines[0], proc.stderr
    assert "DeepSpeed" not in proc.stdout and not (tmp_path / "run").exists()  # nothing started


@pytest.mark.e2e
def test_ds_json_contradiction_names_the_json_key(tiny_demo, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "train_batch_size": 7,
                              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}))
    proc = run_train(tiny_overrides(tiny_demo, tmp_path / "run"), ranks=None, ds_config=str(ds), timeout=60)
    assert proc.returncode == 2 and "train_batch_size" in proc.stderr


@pytest.mark.e2e
def test_a_clip_recipe_with_the_demo_json_is_refused_in_one_line(tmp_path):
    proc = run_train(["--set", f"run_dir={tmp_path / 'run'}"], ranks=None, ds_config="ds_configs/zero2_bf16.json",
                     config="configs/webvid_clip_vitb.yaml", timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: ds_config ds_configs/zero2_bf16.json optimizer.params.lr: a peak lr of "
                               "0.001 at a global batch of 16"), lines[0]
    assert "use --ds_config ds_configs/clip_ft_zero2_bf16.json" in lines[0] and not (tmp_path / "run").exists()


@pytest.mark.unit
def test_overrides_are_typed(tmp_path):
    cfg = load_config("configs/demo_action_cls.yaml", ["turbo.keep_ratio=0.5", "data.crop_scale=[0.5, 1]",
                                                        "train.global_batch_size=null"])
    assert cfg.turbo.keep_ratio == 0.5 and cfg.data.crop_scale == [0.5, 1.0] and cfg.train.global_batch_size is None
    with pytest.raises(ConfigError, match="did you mean turbo.keep_ratio"):
        load_config("configs/demo_action_cls.yaml", ["turbo.keep_rato=0.5"])


@pytest.mark.unit
@pytest.mark.parametrize("overrides, message", [
    (["turbo.schedule=linear", "turbo.keep_ratio_end=0.5"], "turbo.schedule=constant"),
    (["turbo.full_token_steps=10"], "turbo.full_token_steps=0"),
    (["task=video_language", "text.tokenizer=x", "text.train_tokenizer_if_missing=true"], "task=video_language"),
    (["turbo.memory_budget_gb=-1"], "turbo.memory_budget_gb=-1"),
])
def test_auto_keep_ratio_checks(overrides, message):
    sets = ["turbo.keep_ratio=auto", "turbo.memory_budget_gb=2", *overrides]
    assert load_config("configs/demo_action_cls.yaml", sets[:2]).turbo.keep_ratio == "auto"
    with pytest.raises(ConfigError, match=message):
        checked(load_config("configs/demo_action_cls.yaml", sets))  # the task's rules too, as train.py runs them


RECIPES = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.unit
def test_recipes_are_found():
    assert len(RECIPES) >= 9  # resolved from this file: the test below cannot silently collect nothing


@pytest.mark.unit
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_matches_its_ds_configs(recipe):
    """Shipped recipes stay valid as the config tree changes (weights and tokenizer paths are the user's)."""
    cfg = checked(load_config(recipe, ["model.pretrained=null", "text.pretrained=null", "text.train_tokenizer_if_missing=true",
                                       "text.tokenizer=tokenizer.model",  # CLIP recipes: from text.pretrained
                                       "train.head_lr_scale=1"]))  # scales pretrained runs only
    for ds in sorted((REPO / "ds_configs").glob("*.json")):
        plan_batches(cfg, load_ds_config(ds), world=2)


@pytest.mark.unit
def test_config_admits_exactly_the_tasks_of_the_table():
    import typing

    assert set(typing.get_args(typing.get_type_hints(Config)["task"])) == set(TASKS)


@pytest.mark.e2e
def test_manifest_without_class_names_is_a_config_error(tiny_demo, tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    manifest = json.loads((tiny_demo / "train" / "manifest.json").read_text())
    for shard in manifest["shards"]:
        (train / shard["name"]).symlink_to(tiny_demo / "train" / shard["name"])
    (train / "manifest.json").write_text(json.dumps({**manifest, "class_names": None}))
    proc = run_train(tiny_overrides(tiny_demo, tmp_path / "run", f"data.train={train}"), ranks=None, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"config error: data.train={train}: its manifest has no class_names"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.unit
def test_compile_is_refused_with_zero3_only():
    cfg = Config()
    cfg.model.compile = True
    plan_batches(cfg, load_ds_config(REPO / "ds_configs/zero2_bf16.json"), world=1)
    with pytest.raises(ConfigError, match="model.compile=true: not with ZeRO stage 3"):
        plan_batches(cfg, load_ds_config(REPO / "ds_configs/zero3_bf16.json"), world=1)


@pytest.mark.unit
def test_repeat_aug_must_divide_the_micro_batch():
    cfg = Config()
    cfg.data.repeat_aug = 4
    plan_batches(cfg, load_ds_config(REPO / "ds_configs/zero2_bf16.json"), world=1)  # micro 16
    cfg.data.repeat_aug = 3
    with pytest.raises(ConfigError, match=r"data.repeat_aug=3: must divide the micro-batch \(ds_config "
                                          r"train_micro_batch_size_per_gpu=16\)"):
        plan_batches(cfg, load_ds_config(REPO / "ds_configs/zero2_bf16.json"), world=1)


@pytest.mark.unit
def test_compile_without_a_cxx_compiler_is_a_config_error(monkeypatch):
    from turbo_ds.models.vit import check_compiler
    cfg = Config()
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    check_compiler(cfg.model)  # not asked to compile: no compiler needed
    cfg.model.compile = True
    with pytest.raises(ConfigError, match=r"model.compile=true: .*/nonexistent/g\+\+"):
        check_compiler(cfg.model)


@pytest.mark.unit
def test_fused_adamw_needs_torch_adam(tmp_path):
    """The shipped JSONs run torch's fused AdamW kernel (one pass over the fp32 masters instead of a dozen
    elementwise ops); ``fused`` without ``torch_adam`` would reach DeepSpeed's own FusedAdam, which takes no
    such argument, so the JSON is refused before any engine starts."""
    for path in sorted((REPO / "ds_configs").glob("*.json")):
        params = load_ds_config(str(path)).optimizer["params"]
        assert params["torch_adam"] is True and params["fused"] is True, path.name
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4,
                              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "fused": True}}}))
    with pytest.raises(ConfigError, match="torch_adam"):
        load_ds_config(str(ds))
