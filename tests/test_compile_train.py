"""model.compile: true through turbo_ds/train.py on ZeRO 0, 1 and 2 (DeepSpeed's bf16 engine casting the compiled
blocks, ZeRO-1/2's gradient hooks), with gradient accumulation, a checkpoint and a resume: the resumed run repeats
the per-step losses of the run that went through. ZeRO-3 is refused at start-up (tests/test_config.py)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, read_metrics, run_train, tiny_overrides
from test_compile import no_cxx

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(no_cxx(), reason="torch.compile needs a C++ compiler (g++, or $CXX) on the CPU")]

# A tiny encoder, 4 optimizer steps of 2 micro-batches of 8 clips, the end evaluated with every token.
SETS = ("model.compile=true", "model.width=32", "model.depth=1", "model.heads=2", "train.steps=4",
        "train.log_every=1", "train.ckpt_every=2", "train.eval_every=4")


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_compiled_model_trains_checkpoints_and_resumes(tiny_demo, tmp_path, zero):
    ds = tmp_path / f"zero{zero}_accum2.json"
    ds.write_text(json.dumps({**json.loads((REPO / f"ds_configs/zero{zero}_bf16.json").read_text()),
                              "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2}))
    whole = run_train(tiny_overrides(tiny_demo, tmp_path / "whole", *SETS), ranks=None, ds_config=str(ds))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "model.compile: the encoder blocks compile" in whole.stdout
    assert "8 clips x 2 accumulation x 1 ranks = 16 clips/step" in whole.stdout

    split = tiny_overrides(tiny_demo, tmp_path / "split", *SETS)
    first = run_train([*split, "--set", "train.stop_at_step=2"], ranks=None, ds_config=str(ds))
    assert first.returncode == 0 and "stopping at step 2 on train.stop_at_step" in first.stdout, first.stderr[-3000:]
    second = run_train(split, ranks=None, ds_config=str(ds))
    assert second.returncode == 0 and "resuming from checkpoint" in second.stdout, second.stderr[-3000:]

    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}: {got[step]} != {expected[step]}"
    top1 = [r["eval/top1"] for r in read_metrics(tmp_path / "split") if "eval/top1" in r]
    assert len(top1) == 1 and (tmp_path / "split" / "COMPLETED").is_file()
