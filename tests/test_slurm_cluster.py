"""Slurm infrastructure on a real one-node cluster (slurm/local_cluster.sh), no mocks.

The `slurm_cluster` fixture starts munged + slurmctld + slurmd under a temp dir once per
session (installing Slurm with apt if missing, as root) and stops them at the end. The
job tests run the sbatch templates with `LAUNCH_CMD` set to a fake trainer (a bash script
that traps SIGUSR1 like the real trainer), so they exercise the same launch/trap/requeue
code as a real run. Slurm 22.05 has no sacct here, so jobs are polled with
`scontrol show job`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, free_port, read_metrics, tiny_overrides

pytestmark = pytest.mark.slurm

LOCAL_CLUSTER = REPO / "slurm" / "local_cluster.sh"
LAUNCH = REPO / "slurm" / "launch.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

# A stand-in for turbo_ds/train.py: on SIGUSR1 it "checkpoints" and exits 0; in a
# restarted job (SLURM_RESTART_COUNT >= 1) it finishes training and writes COMPLETED.
# Slurm delivers a step signal to EVERY process of the step, children included, so the
# child `sleep` must ignore USR1 (else it may die first and `wait` returns before the trap
# runs). The real trainer's DataLoader workers need the same care.
FAKE_TRAINER = r"""
echo "fake trainer rank=$RANK/$WORLD_SIZE restart=${SLURM_RESTART_COUNT:-0} run_dir=$RUN_DIR"
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then
    touch "$RUN_DIR/COMPLETED"; echo "fake trainer rank=$RANK finished"; exit 0
fi
trap 'echo "fake trainer rank=$RANK got USR1"; touch "$RUN_DIR/ckpt.$RANK"; kill $! 2>/dev/null; exit 0' USR1
echo "fake trainer rank=$RANK ready"
(trap '' USR1; exec sleep 600) &
wait
"""


@dataclass
class SlurmCluster:
    """Handle on a running local cluster: client env and small polling helpers."""

    dir: Path
    env: dict[str, str]

    def run(self, *cmd: str, check: bool = True, cwd: Path | None = None, env: dict | None = None, timeout: float = 30):
        out = subprocess.run(
            cmd, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def sbatch(self, *args: str, cwd: Path, env: dict | None = None) -> str:
        return self.run("sbatch", "--parsable", *args, cwd=cwd, env=env).stdout.strip().split(";")[0]

    def job(self, jobid: str) -> dict[str, str] | None:
        """`scontrol show job` fields (None once the job has been purged)."""
        out = self.run("scontrol", "show", "job", "-o", jobid, check=False)
        if out.returncode != 0:
            return None
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait_for(self, what: str, predicate, timeout: float, log: Path | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(0.5)
        text = log.read_text() if log and log.exists() else "(no output file)"
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n--- job output:\n{text}")

    def wait_job_done(self, jobid: str, timeout: float, log: Path | None = None) -> dict[str, str]:
        def done():
            info = self.job(jobid)
            return info if info is None or info["JobState"] in TERMINAL else None

        info = self.wait_for(f"job {jobid} to finish", lambda: done() or False, timeout, log)
        assert info is not None, f"job {jobid} was purged before it was seen finished"
        return info


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        if shutil.which("slurmctld") is None:
            pytest.skip("Slurm is not installed and installing/starting it needs root")
        pytest.skip("starting the local Slurm daemons needs root")
    cluster_dir = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TURBO_DS_ROOT"}
    ports = {"LOCAL_SLURM_CTLD_PORT": str(free_port()), "LOCAL_SLURM_SLURMD_PORT": str(free_port())}
    start = subprocess.run(
        ["bash", str(LOCAL_CLUSTER), "start", str(cluster_dir)],
        env={**env, **ports}, capture_output=True, text=True, timeout=900,  # may apt-get install
    )
    assert start.returncode == 0, f"local cluster did not start:\n{start.stdout}\n{start.stderr}"
    try:
        yield SlurmCluster(dir=cluster_dir, env={**env, "SLURM_CONF": str(cluster_dir / "slurm.conf")})
    finally:
        stop = subprocess.run(
            ["bash", str(LOCAL_CLUSTER), "stop", str(cluster_dir)], env=env, capture_output=True, text=True, timeout=120
        )
        assert stop.returncode == 0, f"local cluster did not stop:\n{stop.stdout}\n{stop.stderr}"
        status = subprocess.run(
            ["bash", str(LOCAL_CLUSTER), "status", str(cluster_dir)], capture_output=True, text=True
        )
        assert status.returncode != 0 and "running (" not in status.stdout, status.stdout


def test_cluster_runs_two_task_job(slurm_cluster, tmp_path):
    out = tmp_path / "hostname.out"
    jobid = slurm_cluster.sbatch("-n", "2", "-o", str(out), "--wrap", "srun hostname", cwd=tmp_path)
    info = slurm_cluster.wait_job_done(jobid, timeout=60, log=out)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    assert out.read_text().split() == [socket.gethostname()] * 2


def _print_env(cluster: SlurmCluster, **slurm_vars: str) -> dict[str, str]:
    # fake job env, real `scontrol show hostnames` (it needs a slurm.conf, not a controller)
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": cluster.env["SLURM_CONF"], **slurm_vars}
    out = subprocess.run(["bash", str(LAUNCH), "print-env"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.split())


def test_rank_wiring_4_nodes_x_8_gpus(slurm_cluster):
    got = _print_env(
        slurm_cluster,
        SLURM_JOB_NODELIST="gpu[001-003,010]", SLURM_NNODES="4", SLURM_NODEID="3", SLURM_JOB_ID="4242",
        SLURM_PROCID="13", SLURM_LOCALID="5", SLURM_NTASKS="32", SLURM_NTASKS_PER_NODE="8",
    )
    assert got == {"MASTER_ADDR": "gpu001", "MASTER_PORT": "24242", "RANK": "13", "LOCAL_RANK": "5", "WORLD_SIZE": "32",
                   "NODE_RANK": "3", "LOCAL_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}  # gpu001 does not resolve: no IFNAME


def test_rank_wiring_odd_node_list(slurm_cluster):
    got = _print_env(
        slurm_cluster,
        SLURM_JOB_NODELIST="node[7,9-10]", SLURM_NNODES="3", SLURM_JOB_ID="123456",
        SLURM_PROCID="2", SLURM_LOCALID="0", SLURM_NTASKS="3",
    )
    assert got == {"MASTER_ADDR": "node7", "MASTER_PORT": "23456", "RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "3",
                   "NODE_RANK": "0", "LOCAL_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}


def test_a_task_bound_to_one_gpu_uses_local_rank_0(slurm_cluster):
    """--gpus-per-task=1 leaves each task one visible id: its GPU is cuda:0 there, whatever SLURM_LOCALID says."""
    job = dict(SLURM_JOB_NODELIST="gpu[001-002]", SLURM_NNODES="2", SLURM_NODEID="1", SLURM_JOB_ID="9",
               SLURM_PROCID="13", SLURM_LOCALID="5", SLURM_NTASKS="16", SLURM_NTASKS_PER_NODE="8")
    assert _print_env(slurm_cluster, **job, CUDA_VISIBLE_DEVICES="5")["LOCAL_RANK"] == "0"
    assert _print_env(slurm_cluster, **job, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")["LOCAL_RANK"] == "5"
    assert _print_env(slurm_cluster, **job, CUDA_VISIBLE_DEVICES="")["LOCAL_RANK"] == "5"  # CPU: no binding


def _run_batch(cluster: SlurmCluster, tmp_path: Path, nvidia_smi: str | None, **env: str) -> subprocess.CompletedProcess:
    """``launch.sh run`` as a batch script starts it, up to srun (which fails: job 77 does not exist); ``nvidia_smi``:
    what an ``nvidia-smi`` first on PATH prints for ``-L`` (this machine has no GPU, so the node's view is
    stood in for by that script; None: no nvidia-smi at all)."""
    bin_dir = tmp_path / f"bin_{len(list(tmp_path.glob('bin_*')))}"
    bin_dir.mkdir()
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{nvidia_smi}'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_NNODES": "1", "CONFIG": "c.yaml",
           "DS_CONFIG": "d.json", "RUN_DIR": str(tmp_path / "run"), "SLURM_CONF": cluster.env["SLURM_CONF"], **env}
    return subprocess.run(["bash", str(LAUNCH), "run"], env=env, capture_output=True, text=True, timeout=60)


def test_gpus_requested_but_not_visible_stop_the_job(slurm_cluster, tmp_path):
    for nvidia_smi in (None, "No devices were found\n", "GPU 0: NVIDIA H100 (UUID: GPU-1)\n"):
        out = _run_batch(slurm_cluster, tmp_path, nvidia_smi, SLURM_GPUS_ON_NODE="2")
        assert out.returncode == 1 and "2 GPU(s) per node requested" in out.stderr and "srun" not in out.stdout, out


def test_gpu_count_falls_back_to_nvidia_smi(slurm_cluster, tmp_path):
    gpus = "GPU 0: NVIDIA H100 (UUID: GPU-1)\nGPU 1: NVIDIA H100 (UUID: GPU-2)\n"
    out = _run_batch(slurm_cluster, tmp_path, gpus)  # the job says nothing about GPUs
    assert "x 2 rank(s), world size 2, 2 GPU(s)/node" in out.stdout, out
    out = _run_batch(slurm_cluster, tmp_path, None)  # no driver: CPU ranks, one per task slot
    assert "CPU only" in out.stdout, out


def test_task_mode_exports_rank_env_and_rejects_missing_vars(slurm_cluster):
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": slurm_cluster.env["SLURM_CONF"], "SLURM_JOB_NODELIST": "a1,b2",
           "SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}
    show = 'echo "$MASTER_ADDR $MASTER_PORT $RANK $LOCAL_RANK $WORLD_SIZE"'
    out = subprocess.run(
        ["bash", str(LAUNCH), "task", "--", "bash", "-c", show], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.split() == ["a1", "20007", "1", "0", "2"], out
    del env["SLURM_PROCID"]
    out = subprocess.run(["bash", str(LAUNCH), "task", "--", "true"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "SLURM_PROCID is not set" in out.stderr


def _submit_fake_training(
    cluster: SlurmCluster, tmp_path: Path, template: str, *sbatch_args: str, root_env: bool = True
):
    """Submit a real template, CPU-only, 2 ranks, running FAKE_TRAINER; returns (jobid, output, run_dir)."""
    fake = tmp_path / "fake_trainer.sh"
    fake.write_text(FAKE_TRAINER)
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    exports = f"ALL,RUN_DIR={run_dir},LAUNCH_CMD=bash {fake}"
    jobid = cluster.sbatch(
        "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "-o", str(out), f"--export={exports}",
        *sbatch_args, str(REPO / "slurm" / template),
        # submitted from tmp_path: without TURBO_DS_ROOT the template must find the repo itself
        cwd=tmp_path, env={"TURBO_DS_ROOT": str(REPO)} if root_env else None,
    )
    return jobid, out, run_dir


def _output_has(out: Path, text: str):
    return lambda: out.exists() and out.read_text().count(text)


def _requeued_then_finish(cluster: SlurmCluster, jobid: str, out: Path, timeout: float) -> dict[str, str]:
    def requeued():
        info = cluster.job(jobid)
        return bool(info) and info["JobState"] == "PENDING" and info["Restarts"] == "1"

    cluster.wait_for(f"job {jobid} to be requeued", requeued, timeout, out)
    # A requeued job would wait ~120 s (BeginTime); start it now. Not within the second of
    # the requeue though: slurmd then refuses the new launch ("Job credential revoked",
    # credential times have 1 s resolution) and the job FAILS.
    time.sleep(2.5)
    cluster.run("scontrol", "update", f"JobId={jobid}", "StartTime=now")
    return cluster.wait_job_done(jobid, timeout=max(60, timeout), log=out)


def _assert_preempted_and_resumed(text: str, info: dict, run_dir: Path):
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", info
    assert text.count("fake trainer rank=0/2 restart=0") == 1 and text.count("fake trainer rank=1/2 restart=0") == 1
    assert text.count("got USR1") == 2 and (run_dir / "ckpt.0").exists() and (run_dir / "ckpt.1").exists()
    assert text.count("requeueing job") == 1
    assert text.count("restart=1 run_dir=") == 2 and "(restart 1)" in text and "training completed" in text
    assert (run_dir / "COMPLETED").exists()


def test_usr1_requeue_round_trip(slurm_cluster, tmp_path):
    jobid, out, run_dir = _submit_fake_training(slurm_cluster, tmp_path, "action_cls.sh", root_env=False)
    slurm_cluster.wait_for("both fake ranks to be ready", lambda: _output_has(out, " ready")() == 2, 60, out)
    # what --signal=B:USR1@N does at the time limit: USR1 to the batch shell only
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", jobid)
    info = _requeued_then_finish(slurm_cluster, jobid, out, timeout=30)
    text = out.read_text()
    _assert_preempted_and_resumed(text, info, run_dir)
    assert "DS_ACCELERATOR=cpu" in text and "configs/demo_action_cls.yaml" in text and "zero2_bf16.json" in text


def test_time_limit_signal_requeues(slurm_cluster, tmp_path):
    # --time=2 with USR1 100 s before the end: Slurm signals after ~20 s (checks every ~30 s)
    jobid, out, run_dir = _submit_fake_training(
        slurm_cluster, tmp_path, "long_video.sh", "--time=2", "--signal=B:USR1@100"
    )
    info = _requeued_then_finish(slurm_cluster, jobid, out, timeout=110)
    text = out.read_text()
    _assert_preempted_and_resumed(text, info, run_dir)
    assert "configs/demo_long_video.yaml" in text and "zero3_bf16.json" in text


# Fails every time; in the first run, rank 0 first moves the checkpoint pointer (progress was made).
FAILING_TRAINER = r"""
echo "failing trainer rank=$RANK restart=${SLURM_RESTART_COUNT:-0}"
if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ] && [ "$RANK" -eq 0 ]; then
    mkdir -p "$RUN_DIR/checkpoints" && echo step_00000003 > "$RUN_DIR/checkpoints/latest"
fi
sleep 1
exit 1
"""


def test_failure_after_a_checkpoint_requeues_once(slurm_cluster, tmp_path):
    # e.g. a rank lost while its node stays up: the job requeues itself when it checkpointed,
    # and a failure that recurs before the next checkpoint ends it (no loop)
    fake = tmp_path / "failing_trainer.sh"
    fake.write_text(FAILING_TRAINER)
    out = tmp_path / "job.out"
    jobid = slurm_cluster.sbatch("--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "-o", str(out),
                                 f"--export=ALL,RUN_DIR={tmp_path / 'run'},LAUNCH_CMD=bash {fake}",
                                 str(REPO / "slurm" / "action_cls.sh"), cwd=tmp_path)
    info = _requeued_then_finish(slurm_cluster, jobid, out, timeout=60)
    text = out.read_text()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "1", text
    assert text.count("srun failed (status 1) after this job checkpointed step_00000003 (it started from nothing)") == 1
    assert text.count("requeueing job") == 1 and text.count("restart=1") == 2


def test_scancel_does_not_requeue(slurm_cluster, tmp_path):
    jobid, out, run_dir = _submit_fake_training(slurm_cluster, tmp_path, "video_language.sh")
    slurm_cluster.wait_for("both fake ranks to be ready", lambda: _output_has(out, " ready")() == 2, 60, out)
    slurm_cluster.run("scancel", jobid)
    info = slurm_cluster.wait_job_done(jobid, timeout=60, log=out)
    slurm_cluster.wait_for("the batch shell to finish", _output_has(out, "srun exited"), 30, out)
    text = out.read_text()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    assert "got SIGTERM" in text and "requeueing" not in text


# --------------------------------------------------------------- the real trainer on Slurm


def _submit_training(cluster: SlurmCluster, tmp_path: Path, demo: Path, *extra_sets: str, steps: int):
    """The real action_cls template and trainer, 2 CPU ranks on the local node, tiny demo data."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    sets = tiny_overrides(demo, run_dir, f"train.steps={steps}", "train.log_every=1", f"train.eval_every={steps}",
                          f"train.ckpt_every={steps}", *extra_sets)[1::2]  # values only: EXTRA_SETS is a list
    exports = f"ALL,RUN_DIR={run_dir},EXTRA_SETS={' '.join(sets)},PYTHON={sys.executable}"
    jobid = cluster.sbatch("--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "-o", str(out),
                           f"--export={exports}", str(REPO / "slurm" / "action_cls.sh"), cwd=REPO)
    return jobid, out, run_dir


def test_sbatch_trains_demo_to_final_eval(slurm_cluster, tmp_path, tiny_demo):
    jobid, out, run_dir = _submit_training(slurm_cluster, tmp_path, tiny_demo, steps=4)
    info = slurm_cluster.wait_job_done(jobid, timeout=300, log=out)
    text = out.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-3000:]
    assert "world size 2" in text and "2 rank(s)" in text and f"run dir:    {run_dir}" in text
    assert "----- " + str(run_dir / "config.yaml") in text  # resolved configs in the job output
    evals = [r for r in read_metrics(run_dir) if "eval/top1" in r]
    assert evals[-1]["step"] == 4 and evals[-1]["num_classes"] == 8 and (run_dir / "COMPLETED").exists()


def test_preemption_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path, tiny_demo):
    steps = 60
    jobid, out, run_dir = _submit_training(slurm_cluster, tmp_path, tiny_demo, steps=steps)
    slurm_cluster.wait_for("training to reach step 5", _output_has(out, "step 5/"), 300, out)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", jobid)  # what --signal=B:USR1@N sends
    info = _requeued_then_finish(slurm_cluster, jobid, out, timeout=300)
    text = out.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-3000:]
    stopped = int(re.search(r"stopping at step (\d+) on SIGUSR1", text).group(1))
    resumed = int(re.search(r"resuming from checkpoint \S+ at step (\d+)", text).group(1))
    assert 5 <= stopped < steps and resumed == stopped
    print(f"preemption signal landed at step {stopped}; the requeued run resumed from step {resumed}")
    train_steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert train_steps == list(range(1, steps + 1))  # no step lost or duplicated across the requeue
    assert (run_dir / "COMPLETED").exists()
