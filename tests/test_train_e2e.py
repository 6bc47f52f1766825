"""CPU end-to-end: the real entry point, real DeepSpeed engines on 2 ranks, real mp4 shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, run_train, tiny_overrides

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_every_ds_config_trains_evaluates_and_resumes(tiny_demo, tmp_path, zero):
    run_dir = tmp_path / f"zero{zero}"
    ds_config = f"ds_configs/zero{zero}_bf16.json"
    args = tiny_overrides(tiny_demo, run_dir)
    shm_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    proc = run_train(args, ds_config=ds_config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= shm_before  # DeepSpeed's CPU buffers unlinked
    records = read_metrics(run_dir)
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/top1" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert evals and evals[-1]["step"] == 4 and evals[-1]["num_classes"] == 8 and evals[-1]["eval/num_clips"] == 32
    assert 0 <= evals[-1]["eval/top1"] <= evals[-1]["eval/top5"] <= 1
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000004"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "ds_config.json").is_file()

    again = run_train(args, ds_config=ds_config)  # same run dir: resume, do not retrain
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint" in again.stdout and "already finished at step 4" in again.stdout
    assert read_metrics(run_dir) == records


def test_resume_mid_run_continues_steps(tiny_demo, tmp_path):
    run_dir = tmp_path / "mid"
    first = run_train(tiny_overrides(tiny_demo, run_dir, "train.ckpt_every=2", "train.steps=2", "train.eval_every=100"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_train(tiny_overrides(tiny_demo, run_dir, "train.ckpt_every=2", "train.steps=4"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from checkpoint" in second.stdout and "at step 2" in second.stdout
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == [2, 4]


def test_a_finished_run_exits_0_whatever_interpreter_teardown_does(tiny_demo, tmp_path, monkeypatch):
    """Interpreter teardown (destroying torch.distributed's and DeepSpeed's leftovers) sometimes aborted a
    finished run (std::terminate, exit 250): train.py exits without it once everything is saved. Here an
    atexit hook that aborts stands in for that teardown."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import atexit, os\natexit.register(os.abort)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    run_dir = tmp_path / "run"
    proc = run_train(tiny_overrides(tiny_demo, run_dir, "train.steps=2", "train.eval_every=2", "train.ckpt_every=2"),
                     ranks=None)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000002"
    assert any("eval/top1" in r for r in read_metrics(run_dir))  # evaluated, logged and flushed before the exit


def test_a_stop_signal_during_start_up_stops_at_the_first_step_with_a_checkpoint(tiny_demo, tmp_path):
    """Slurm's USR1 (or a TERM) that arrives before the engine exists (here: as soon as the first log line says the
    ranks are up, before the task and DeepSpeed's engine are built) is handled: the run stops after its first
    step with a checkpoint and exits 0, instead of dying of the signal's default action."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "turbo_ds/train.py", "--ds_config", "ds_configs/zero0_bf16.json", "--config",
           "configs/demo_action_cls.yaml", *tiny_overrides(tiny_demo, run_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("turbo_ds: task"):
            proc.send_signal(signal.SIGUSR1)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=300) == 0, "".join(lines)[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "stopping at step 1 on SIGUSR1: checkpoint saved" in log, log
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000001"


def test_a_run_whose_run_dir_lock_is_taken_away_stops_every_rank_at_one_step(tiny_demo, tmp_path):
    """The lock's heartbeat finds lock.json gone (another trainer, or a person, took the run dir): rank 0's
    `RunDirLock.lost` travels in the step's all-reduce, and both ranks stop at the same step with exit 3 and
    the lock's one-line reason (before: a warning, and two trainers in one run dir)."""
    run_dir = tmp_path / "run"
    sets = tiny_overrides(tiny_demo, run_dir, "train.steps=100000", "train.log_every=1", "train.eval_every=100000",
                          "train.ckpt_every=100000")

    def take_the_lock_away() -> None:
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and '"step": 2' in metrics.read_text()):
            time.sleep(0.1)
        (run_dir / "lock.json").unlink()

    remover = threading.Thread(target=take_the_lock_away, daemon=True)
    remover.start()
    proc = run_train(sets, timeout=300)
    remover.join(timeout=1)
    assert proc.returncode == 3, proc.stderr[-3000:]
    reason = [line for line in proc.stderr.splitlines() if line.startswith("run dir lock lost:")]
    assert len(reason) == 1 and "was removed" in reason[0], proc.stderr[-3000:]
    assert reason[0] in (run_dir / "train.log").read_text()
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 1000  # it stopped, within a heartbeat or two
