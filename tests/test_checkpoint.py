"""The checkpoint manager on real DeepSpeed engines: layout, pruning, what a resumed run keeps."""

from __future__ import annotations

import pytest

import json

from conftest import read_metrics, run_train, tiny_overrides

pytestmark = pytest.mark.e2e


def test_keep_last_checkpoints_prunes_old_ones_and_resume_still_works(tiny_demo, tmp_path):
    run_dir = tmp_path / "run"
    # train.deterministic rides along: torch's deterministic kernels must serve every op of a training step
    sets = tiny_overrides(tiny_demo, run_dir, "train.ckpt_every=1", "train.keep_last_checkpoints=2",
                          "train.eval_every=100", "train.deterministic=true")
    proc = run_train(sets, ranks=None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_00000003", "step_00000004"]
    assert (ckpts / "latest").read_text() == "step_00000004" and (run_dir / "COMPLETED").read_text() == "4\n"
    state = json.loads((ckpts / "step_00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 1 and state["config"]["turbo"]["keep_ratio"] == 0.25
    assert state["ds_config"]["train_batch_size"] == 16 and "rank0/worker0" in state["data_position"]

    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # a write the last run cut short (a full disk, a crash on NFS)
    more = run_train([*sets, "--set", "train.steps=5"], ranks=None)
    assert more.returncode == 0 and "resuming from checkpoint" in more.stdout and "at step 4" in more.stdout
    assert "metrics.jsonl: dropped 1 torn line(s) (not whole JSON" in more.stdout
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [2, 4, 5]
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_00000004", "step_00000005"]
