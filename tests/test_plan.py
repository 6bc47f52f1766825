"""Memory planner: search logic on a model of memory, then real measured steps of a tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import read_metrics, run_train, tiny_overrides
from turbo_ds.config import Config, DeepSpeedConfig, LongVideoConfig, ModelConfig, load_config, load_ds_config
from turbo_ds.plan import AUTO_KEEP_RATIOS, Measurement, Planner, PlanError, Setting, main, measure, pick_keep_ratio

DS = DeepSpeedConfig({"train_micro_batch_size_per_gpu": 16, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}})


def tiny_config(frames: int = 16) -> Config:
    # Joint mode: one encoder over all frames, 8 x 8 patches of 4 px per tubelet slice.
    return Config(task="long_video", model=ModelConfig(num_frames=8, img_size=32, patch_size=4, width=64, depth=2,
                                                       heads=2), long_video=LongVideoConfig(frames=frames, mode="joint"))


def fake_measure(calls: list[Setting]):
    """Memory model: 0.1 GB of state + 1 MB per kept token-frame-video; records what was measured."""

    def measure(cfg, ds, setting, budget_gb, *args) -> Measurement:
        calls.append(setting)
        need = 0.1 + setting.frames * setting.micro * setting.keep_ratio / 1024
        return Measurement(setting, need <= budget_gb, need, 0.1)

    return measure


@pytest.mark.unit
def test_search_finds_the_largest_fitting_setting():
    calls: list[Setting] = []
    planner = Planner(tiny_config(), DS, budget_gb=0.5, measure_fn=fake_measure(calls))
    # 0.1 + F * 16 * r / 1024 <= 0.5  <=>  F * r <= 25.6
    assert planner.max_frames(1.0, 16, unit=8, cap=1024).setting.frames == 24
    assert planner.max_frames(0.25, 16, unit=8, cap=1024).setting.frames == 96
    assert planner.max_frames(0.125, 16, unit=8, cap=128).setting.frames == 128  # capped
    assert planner.max_micro(1.0, 16, cap=256).setting.micro == 25
    assert planner.best_keep_ratio(64, 16).setting.keep_ratio == 0.375
    assert len(calls) == len(set(calls))  # every setting measured once
    assert pick_keep_ratio(tiny_config(frames=64), DS, 0.5, "cpu", measure_fn=fake_measure([])) == 0.375


@pytest.mark.unit
def test_nothing_fits_names_the_smallest_setting_and_its_need():
    planner = Planner(tiny_config(), DS, budget_gb=0.05, measure_fn=fake_measure([]))
    assert planner.max_frames(0.125, 1, unit=8, cap=64) is None
    with pytest.raises(PlanError, match=r"memory budget 0.05 GB: nothing fits; the smallest setting \(64 frames x "
                                        r"micro-batch 16 at keep ratio 0.125\) needs 0.23 GB"):
        pick_keep_ratio(tiny_config(frames=64), DS, 0.05, "cpu", measure_fn=fake_measure([]))


@pytest.mark.e2e
def test_measured_keep_quarter_trains_more_frames():
    """Real steps in subprocesses: at the same budget, keep 0.25 fits more frames than keep 1.0."""
    planner = Planner(tiny_config(), DS, budget_gb=0.1, steps=2)
    full = planner.max_frames(1.0, 16, unit=8, cap=24)
    quarter = planner.max_frames(0.25, 16, unit=8, cap=24)
    assert full is not None and quarter is not None, planner.results
    assert quarter.setting.frames > full.setting.frames, planner.results
    assert quarter.peak_gb <= 0.1 and quarter.step_s > 0


@pytest.mark.e2e
def test_cli_errors_clearly_when_nothing_fits(tmp_path, capsys):
    config, ds = tmp_path / "tiny.yaml", tmp_path / "ds.json"
    config.write_text("task: long_video\nmodel: {num_frames: 8, img_size: 32, patch_size: 4, width: 64, depth: 2, "
                      "heads: 2}\nlong_video: {frames: 16, mode: joint}\n")
    ds.write_text(json.dumps(DS.raw))
    assert main(["--config", str(config), "--ds_config", str(ds), "--memory-gb", "0.001", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "plan error: memory budget 0.001 GB: nothing fits; the smallest setting (8 frames x micro-batch 1 at keep " \
           "ratio 0.125) needs" in err and "Raise the budget" in err


@pytest.mark.e2e
def test_train_picks_keep_ratio_auto_and_keeps_it_on_resume(tiny_demo, tmp_path):
    """turbo.keep_ratio: auto through the real entry point on 2 ranks: rank 0 measures, both ranks train at
    the chosen ratio, and the resumed run keeps it without measuring again."""
    run_dir = tmp_path / "auto"
    sets = tiny_overrides(tiny_demo, run_dir, "turbo.keep_ratio=auto", "train.steps=2", "train.log_every=1",
                          "train.ckpt_every=2", "train.eval_every=2")
    # A budget half way between what keep 0.125 and keep 1.0 need on this machine (2 ranks, ZeRO-0).
    cfg = load_config("configs/demo_action_cls.yaml", [*sets[1::2], "turbo.memory_budget_gb=1"])
    ds = load_ds_config("ds_configs/zero0_bf16.json")
    least, most = (measure(cfg, ds, Setting(16, 16, r), 1e3, num_classes=8).peak_gb for r in (0.125, 1.0))
    budget = (least + most) / 2
    proc = run_train([*sets, "--set", f"turbo.memory_budget_gb={budget}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    chosen = yaml.safe_load((run_dir / "config.yaml").read_text())["turbo"]["keep_ratio"]
    assert "turbo.keep_ratio auto: measuring" in proc.stdout and f"auto: {chosen:g} is the largest" in proc.stdout
    assert chosen in AUTO_KEEP_RATIOS and 0.125 <= chosen < 1.0, proc.stdout
    assert {r["train/keep_ratio"] for r in read_metrics(run_dir) if "train/loss" in r} == {chosen}

    more = [*sets, "--set", f"turbo.memory_budget_gb={budget}", "--set", "train.steps=3"]
    again = run_train(more)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"turbo.keep_ratio auto: {chosen:g}, as chosen when this run started" in again.stdout
    assert "measuring" not in again.stdout
    assert [r["train/keep_ratio"] for r in read_metrics(run_dir) if "train/loss" in r] == [chosen] * 3


@pytest.mark.e2e
def test_train_keep_ratio_auto_over_budget_stops_every_rank(tiny_demo, tmp_path):
    sets = tiny_overrides(tiny_demo, tmp_path / "tight", "turbo.keep_ratio=auto", "turbo.memory_budget_gb=0.001")
    proc = run_train(sets, timeout=300)
    assert proc.returncode != 0
    assert "config error: memory budget 0.001 GB: nothing fits; the smallest setting (16 frames x micro-batch 16 at " \
           "keep ratio 0.125) needs" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("config error:") == 1  # said once, by rank 0; both ranks stop
    assert not (tmp_path / "tight" / "checkpoints").exists()
