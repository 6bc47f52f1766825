"""Checkpoints survive what long runs meet: a kill -9 at any moment of a save, a disk that fills up
mid-save, and a second trainer started on the same run dir."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from conftest import REPO, free_port, read_metrics, run_train, tiny_overrides
from turbo_ds.config import BatchPlan, DeepSpeedConfig, TrainConfig
from turbo_ds.engine.checkpoint import CheckpointManager
from turbo_ds.engine.distributed import DistInfo
from turbo_ds.engine.errors import CheckpointLoadError
from turbo_ds.engine.lock import Holder

pytestmark = pytest.mark.e2e


def load_checkpoint_files(folder: Path) -> dict:
    """A complete checkpoint: trainer_state.json and DeepSpeed's files, every one of them readable."""
    state = json.loads((folder / "trainer_state.json").read_text())
    files = sorted(folder.glob("*.pt"))
    assert any(f.name.endswith("model_states.pt") for f in files)  # + *optim_states.pt with ZeRO-1/2/3
    for f in files:
        torch.load(f, map_location="cpu", weights_only=False)
    return state


def check_checkpoints(ckpts: Path) -> int | None:
    """What a kill at any moment must leave: `latest` absent (no save finished yet) or naming a complete
    checkpoint, and no folder under a final step_X name that is not complete. Returns the latest step."""
    for folder in ckpts.glob("step_*"):
        if folder.name.count(".") == 0:
            assert (folder / "trainer_state.json").is_file(), f"{folder.name} looks final but is incomplete"
    pointer = ckpts / "latest"
    if not pointer.is_file():
        return None
    state = load_checkpoint_files(ckpts / pointer.read_text())
    return state["step"]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.05):
    end = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"process ended (rc {proc.returncode}) while waiting for {what}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(poll)


def test_a_kill_at_any_moment_of_a_save_leaves_a_resumable_run(tmp_path):
    """A process saving back to back (real CheckpointManager, real DeepSpeed engine) is frozen at random
    moments, and the disk state it left is checked: a frozen process writes nothing more, so that state
    is exactly what kill -9 at that moment leaves. Each life ends with a real kill -9 at a random moment;
    the next life resumes from the newest complete checkpoint and checks the weights it loaded."""
    run_dir, snap, rng = tmp_path / "run", tmp_path / "snapshot", random.Random(0)
    resumed, frozen, inside_a_save, latest = [], 0, 0, None
    for life in range(3):
        out = tmp_path / f"life{life}.out"
        with open(out, "w") as f:
            proc = subprocess.Popen([sys.executable, "tests/checkpoint_harness.py", str(run_dir)], cwd=REPO,
                                    stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for(lambda: "saving" in out.read_text(), 300, "the first save", proc)
            lines = out.read_text().splitlines()
            resumed.append(int(next(x for x in lines if x.startswith("resumed")).split()[1]))
            assert resumed[-1] == (latest or 0), f"life {life} resumed at {resumed[-1]}, the newest complete is {latest}"
            for _ in range(12):
                time.sleep(rng.uniform(0.0, 0.25))
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    shutil.rmtree(snap, ignore_errors=True)
                    shutil.copytree(run_dir / "checkpoints", snap)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                saving = int(out.read_text().split("saving ")[-1].split()[0])  # the save begun last
                frozen += 1
                inside_a_save += check_checkpoints(snap) != saving  # begun, not finished
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            proc.kill()
            proc.wait()
        latest = check_checkpoints(run_dir / "checkpoints")
        assert latest is not None
    assert resumed[0] == 0 and resumed[1] < resumed[2], resumed
    assert frozen == 36 and inside_a_save >= 18, f"only {inside_a_save} of {frozen} moments fell inside a save"


def mounted_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs (needs root, as in CI): {e}")


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint(tiny_demo, tmp_path):
    """A 16 MiB file system holds one 12 MiB checkpoint of the demo model, not two: the save at step 4
    fails (train.ckpt_failure=continue: training goes on), the one at the last step fails and stops the
    run; step 2 stays `latest`, complete and loadable, and nothing partial is left."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    mounted_tmpfs(ckpts, "16m")
    try:
        dead = subprocess.Popen(["true"])  # a lock left by a trainer that died on this host is taken over
        dead.wait()
        gone = replace(Holder.me(time.time() - 60), pid=dead.pid, start_ticks=None, token="dead")
        (run_dir / "lock.json").write_text(json.dumps(asdict(gone)))
        proc = run_train(tiny_overrides(tiny_demo, run_dir, "train.steps=6", "train.ckpt_every=2",
                                        "train.eval_every=100", "train.ckpt_failure=continue"),
                         ds_config="ds_configs/zero2_bf16.json")
        assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "run dir lock: took over from a dead trainer (PID" in proc.stdout
        assert "warning: checkpoint error: step 4 could not be written" in proc.stdout
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith("checkpoint error: step 6 could not be written") and "MiB free" in error, error
        assert "the previous checkpoint step_00000002 and `latest` are intact" in error, error
        assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [2, 4, 6]  # trained on
        assert (ckpts / "latest").read_text() == "step_00000002"
        assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002"]  # no partial folder left
        assert load_checkpoint_files(ckpts / "step_00000002")["step"] == 2
        assert not (run_dir / "COMPLETED").exists() and not (run_dir / "lock.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], check=False)


def test_a_second_trainer_is_refused_and_a_kill_mid_save_resumes(tiny_demo, tmp_path):
    """Trainer A (2 ranks, a checkpoint every step) holds the run dir: the same command again stops at once
    naming A. A is then killed with kill -9 (its whole process group) in the middle of a save; the rerun
    takes over A's lock, resumes from the newest complete checkpoint and logs every step exactly once."""
    run_dir = tmp_path / "run"
    sets = tiny_overrides(tiny_demo, run_dir, "train.steps=400", "train.ckpt_every=1", "train.log_every=1",
                          "train.keep_last_checkpoints=2", "train.eval_every=1000")
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "turbo_ds/train.py",
           "--ds_config", "ds_configs/zero0_bf16.json", "--config", "configs/demo_action_cls.yaml", *sets]
    with open(tmp_path / "a.out", "w") as f:
        trainer_a = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), 300, "A's first checkpoint", trainer_a)
        holder = json.loads((run_dir / "lock.json").read_text())
        config_written = (run_dir / "config.yaml").stat().st_mtime_ns
        second = run_train(sets, ranks=None)
        assert second.returncode == 3, second.stdout[-2000:] + second.stderr[-2000:]
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith(f"run dir locked: {run_dir} is in use by the trainer PID {holder['pid']} on "), error
        assert (run_dir / "config.yaml").stat().st_mtime_ns == config_written  # the second one wrote nothing
        assert "run dir locked" not in (run_dir / "train.log").read_text()
        assert trainer_a.poll() is None
        partial = lambda: any(p.name.endswith(".partial") for p in (run_dir / "checkpoints").iterdir())  # noqa: E731
        wait_for(partial, 120, "a save in progress", trainer_a, poll=0.002)
        time.sleep(random.Random(1).uniform(0.0, 0.05))
        os.killpg(trainer_a.pid, signal.SIGKILL)
    finally:
        if trainer_a.poll() is None:
            os.killpg(trainer_a.pid, signal.SIGKILL)
        trainer_a.wait()
    last = check_checkpoints(run_dir / "checkpoints")
    assert last is not None and (run_dir / "lock.json").is_file()  # a killed trainer leaves its lock
    rerun = run_train(tiny_overrides(tiny_demo, run_dir, f"train.steps={last + 2}", "train.ckpt_every=1",
                                     "train.log_every=1", "train.keep_last_checkpoints=2", "train.eval_every=1000"))
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"took over from a dead trainer (PID {holder['pid']}" in rerun.stdout
    assert f"resuming from checkpoint {run_dir / 'checkpoints' / f'step_{last:08d}'} at step {last}" in rerun.stdout
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == list(range(1, last + 3))


def test_a_failed_universal_conversion_stops_with_one_line_and_keeps_the_checkpoint(tmp_path):
    """An elastic resume whose conversion fails (DeepSpeed's ds_to_universal, for real, on a checkpoint whose
    files are gone) leaves the checkpoint and `latest` as they were and no partial universal copy."""
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_00000004").mkdir(parents=True)
    zero2 = json.loads((REPO / "ds_configs" / "zero2_bf16.json").read_text())
    (ckpts / "step_00000004" / "trainer_state.json").write_text(json.dumps({"step": 4, "world_size": 2,
                                                                            "ds_config": {**zero2, "train_batch_size": 32}}))
    (ckpts / "latest").write_text("step_00000004")
    manager = CheckpointManager(tmp_path, DistInfo(0, 1, 0), TrainConfig())
    with pytest.raises(CheckpointLoadError, match=r"^checkpoint error: converting checkpoint .*step_00000004 to a "
                                                  r"universal checkpoint failed: [^\n]*; fix the cause and rerun"):
        manager.prepare_resume(torch.nn.Linear(2, 2), DeepSpeedConfig(zero2), BatchPlan(16, 1, 1), print)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000004"]
    assert (ckpts / "latest").read_text() == "step_00000004"


def test_a_pruning_failure_after_latest_moved_is_logged_and_the_save_counts(tmp_path):
    """keep_last_checkpoints 2 (the harness's) must delete step_1 at the third save, but a leftover file named
    step_00000001.deleting is in the way (the rename there fails for real): the save is complete and `latest` has
    moved, so it counts, with one warning, and the harness saves on."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000001.deleting").write_text("not a folder")
    out = tmp_path / "harness.out"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "tests/checkpoint_harness.py", str(run_dir)], cwd=REPO,
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: "saving 5" in out.read_text(), 300, "the fifth save", proc)
    finally:
        proc.kill()
        proc.wait()
    text = out.read_text()
    assert "checkpoint error" not in text and "Traceback" not in text, text[-3000:]
    assert (f"warning: checkpoint pruning in {run_dir / 'checkpoints'} failed (Not a directory: " in text), text[-3000:]
    assert check_checkpoints(run_dir / "checkpoints") >= 4
    assert (run_dir / "checkpoints" / "step_00000003").is_dir()
