"""Exact resume: interrupted at step k and resumed, a run repeats the uninterrupted per-step losses."""

from __future__ import annotations

import pytest

import shutil

from conftest import read_metrics, run_train, tiny_overrides

pytestmark = pytest.mark.e2e


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


COMMON = ["train.steps=12", "train.log_every=1", "train.eval_every=100"]


@pytest.mark.parametrize("augment", [[], ["data.repeat_aug=2", "data.randaug.n=2"]], ids=["plain", "repeat2_randaug"])
def test_interrupted_run_matches_uninterrupted(tiny_demo, tmp_path, augment):
    ds = "ds_configs/zero0_bf16.json"
    # 12 steps of 16 clips per rank: the 32-clip epochs of each rank roll over twice, so the
    # resumed data stream must continue mid-epoch and across epoch boundaries (data.repeat_aug 2:
    # 8 videos x 2 copies a step, an epoch every 4 steps; RandAugment's draws resume with them).
    common = [*COMMON, "train.ckpt_every=100", *augment]
    whole = run_train(tiny_overrides(tiny_demo, tmp_path / "whole", *common), ds_config=ds)
    assert whole.returncode == 0, whole.stderr[-3000:]

    first = run_train(tiny_overrides(tiny_demo, tmp_path / "split", *common, "train.stop_at_step=5"), ds_config=ds)
    assert first.returncode == 0 and "stopping at step 5 on train.stop_at_step" in first.stdout, first.stderr[-3000:]
    second = run_train(tiny_overrides(tiny_demo, tmp_path / "split", *common), ds_config=ds)
    assert second.returncode == 0 and "resuming from checkpoint" in second.stdout, second.stderr[-3000:]

    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(got) == list(range(1, 13)) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}: {got[step]} != {expected[step]}"


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_resume_is_exact_on_every_zero_stage(tiny_demo, tmp_path, zero):
    """A run resumed from its step-5 checkpoint repeats the per-step losses of the run that wrote it.

    (With DeepSpeed's FusedAdam the ZeRO-1/2/3 optimizers restored a wrong Adam step count and drifted by
    ~2e-5 from the second resumed step: DeepSpeed#4396, #8471; the shipped JSONs use torch's AdamW.)
    """
    ds = f"ds_configs/zero{zero}_bf16.json"
    whole = run_train(tiny_overrides(tiny_demo, tmp_path / "whole", *COMMON, "train.ckpt_every=5"), ds_config=ds)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # The run dir as an interruption right after step 5 leaves it: checkpoint 5 is the latest, records end there.
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "whole", split, ignore=shutil.ignore_patterns("step_00000010", "step_00000012"))
    (split / "checkpoints" / "latest").write_text("step_00000005")
    (split / "COMPLETED").unlink()
    resumed = run_train(tiny_overrides(tiny_demo, split, *COMMON, "train.ckpt_every=5"), ds_config=ds)
    assert resumed.returncode == 0 and "resuming from checkpoint" in resumed.stdout, resumed.stderr[-3000:]

    expected, got = losses(tmp_path / "whole"), losses(split)
    assert sorted(got) == list(range(1, 13)) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}: {got[step]} != {expected[step]}"
