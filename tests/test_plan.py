"""Memory planner: search logic on a model of memory, then real measured steps of a tiny model."""

from __future__ import annotations

import json

import pytest

from turbo_ds.config import Config, LongVideoConfig, ModelConfig
from turbo_ds.plan import Measurement, Planner, PlanError, Setting, main, pick_keep_ratio

DS = {"train_micro_batch_size_per_gpu": 16, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}


def tiny_config(frames: int = 16) -> Config:
    # Joint mode: one encoder over all frames, 8 x 8 patches of 4 px per tubelet slice.
    return Config(task="long_video", model=ModelConfig(num_frames=8, img_size=32, patch_size=4, width=64, depth=2,
                                                       heads=2), long_video=LongVideoConfig(frames=frames, mode="joint"))


def fake_measure(calls: list[Setting]):
    """Memory model: 0.1 GB of state + 1 MB per kept token-frame-video; records what was measured."""

    def measure(cfg, ds_config, setting, budget_gb, *args) -> Measurement:
        calls.append(setting)
        need = 0.1 + setting.frames * setting.micro * setting.keep_ratio / 1024
        return Measurement(setting, need <= budget_gb, need, 0.1)

    return measure


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


def test_nothing_fits_names_the_smallest_setting_and_its_need():
    planner = Planner(tiny_config(), DS, budget_gb=0.05, measure_fn=fake_measure([]))
    assert planner.max_frames(0.125, 1, unit=8, cap=64) is None
    with pytest.raises(PlanError, match=r"memory budget 0.05 GB: nothing fits; the smallest setting \(64 frames x "
                                        r"micro-batch 16 at keep ratio 0.125\) needs 0.23 GB"):
        pick_keep_ratio(tiny_config(frames=64), DS, 0.05, "cpu", measure_fn=fake_measure([]))


def test_measured_keep_quarter_trains_more_frames():
    """Real steps in subprocesses: at the same budget, keep 0.25 fits more frames than keep 1.0."""
    planner = Planner(tiny_config(), DS, budget_gb=0.1, steps=2)
    full = planner.max_frames(1.0, 16, unit=8, cap=24)
    quarter = planner.max_frames(0.25, 16, unit=8, cap=24)
    assert full is not None and quarter is not None, planner.results
    assert quarter.setting.frames > full.setting.frames, planner.results
    assert quarter.peak_gb <= 0.1 and quarter.step_s > 0


def test_cli_errors_clearly_when_nothing_fits(tmp_path, capsys):
    config, ds = tmp_path / "tiny.yaml", tmp_path / "ds.json"
    config.write_text("task: long_video\nmodel: {num_frames: 8, img_size: 32, patch_size: 4, width: 64, depth: 2, "
                      "heads: 2}\nlong_video: {frames: 16, mode: joint}\n")
    ds.write_text(json.dumps(DS))
    assert main(["--config", str(config), "--ds_config", str(ds), "--memory-gb", "0.001", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "plan error: memory budget 0.001 GB: nothing fits; the smallest setting (8 frames x micro-batch 1 at keep " \
           "ratio 0.125) needs" in err and "Raise the budget" in err
