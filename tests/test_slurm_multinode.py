"""Multi-node Slurm on one machine: every node a network + UTS namespace (slurm/local_cluster.sh --nodes 2).

The `two_nodes` fixture starts a 2-node cluster (node1, node2 on a bridge, nothing routed
out) once per module, next to the one-node cluster of test_slurm_cluster.py, and checks at
the end that `stop` leaves no daemon, namespace or bridge. Training jobs run the real
templates, launch.sh, DeepSpeed on CPU over gloo between the namespaces, on tiny demo data.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port, read_metrics, tiny_overrides
from servers import Nginx
from test_slurm_cluster import LAUNCH, LOCAL_CLUSTER, SlurmCluster, _output_has, _requeued_then_finish

pytestmark = pytest.mark.slurm

COLLECTIVE_TIMEOUT_S = 8  # the lost-node test's train.collective_timeout_s
SLURMD_TIMEOUT_S = 20  # the cluster's SlurmdTimeout: when Slurm declares a silent node DOWN


def _cluster_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TURBO_DS_ROOT"}


def _local_cluster(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_CLUSTER), *args], env=env or _cluster_env(), capture_output=True,
                          text=True, timeout=timeout)


def _network_of(cluster_dir: Path) -> tuple[list[str], list[str]]:
    """The namespaces and links of the cluster in ``cluster_dir`` that exist now (its names hash the dir)."""
    tag = subprocess.run(["sha1sum"], input=str(cluster_dir.resolve()), capture_output=True, text=True).stdout[:8]
    namespaces = [line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                             text=True).stdout.splitlines()]
    links = [line.split(":")[1].strip().split("@")[0] for line in subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines()]
    return [n for n in namespaces if n.startswith(f"tds-{tag}-")], [x for x in links if x.startswith(f"tds{tag}")
                                                                       or x == f"tdsb{tag}"]


def _assert_all_gone(cluster_dir: Path) -> None:
    status = _local_cluster("status", str(cluster_dir))
    assert status.returncode != 0 and "running (" not in status.stdout, status.stdout
    assert _network_of(cluster_dir) == ([], []), _network_of(cluster_dir)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("network namespaces and the Slurm daemons need root")
    cluster_dir = tmp_path_factory.mktemp("slurm2")
    env = {**_cluster_env(), "LOCAL_SLURM_CTLD_PORT": str(free_port()), "LOCAL_SLURM_SLURMD_PORT": str(free_port()),
           "LOCAL_SLURM_SLURMD_TIMEOUT": str(SLURMD_TIMEOUT_S)}
    start = _local_cluster("start", str(cluster_dir), "--nodes", "2", env=env, timeout=900)  # may apt-get install
    assert start.returncode == 0, f"2-node cluster did not start:\n{start.stdout}\n{start.stderr}"
    try:
        yield SlurmCluster(dir=cluster_dir, env={**_cluster_env(), "SLURM_CONF": str(cluster_dir / "slurm.conf")})
    finally:
        stop = _local_cluster("stop", str(cluster_dir))
        assert stop.returncode == 0, f"2-node cluster did not stop:\n{stop.stdout}\n{stop.stderr}"
        _assert_all_gone(cluster_dir)


# ------------------------------------------------------------------------- the cluster


def test_nodes_are_namespaces_that_reach_only_each_other(two_nodes):
    show = ('echo "$(hostname) $(readlink /proc/self/ns/net) $(ip -4 -o addr show eth0 | awk \'{print $4}\')"; '
            'ip route; getent hosts node1 node2')
    out = two_nodes.run("srun", "--nodes=2", "--ntasks=2", "bash", "-c", show).stdout
    heads = sorted(line.split() for line in out.splitlines() if line.startswith("node") and "net:[" in line)
    assert [h[0] for h in heads] == ["node1", "node2"], out
    host_ns = os.readlink("/proc/self/ns/net")
    assert len({h[1] for h in heads} | {host_ns}) == 3, out  # two namespaces, neither the host's
    subnet = heads[0][2].rsplit(".", 1)[0]
    assert [h[2] for h in heads] == [f"{subnet}.1/24", f"{subnet}.2/24"], out
    assert "default" not in out and out.count(f"{subnet}.0/24 dev eth0") == 2, out  # no way out of the bridge
    assert f"{subnet}.1 " in out and f"{subnet}.2 " in out  # node names resolve in every node


def test_failed_start_cleans_up_and_limits_are_named(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with socket.socket() as busy:  # slurmctld cannot bind its port: the start fails half way
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        env = {**_cluster_env(), "LOCAL_SLURM_CTLD_PORT": str(busy.getsockname()[1]),
               "LOCAL_SLURM_SLURMD_PORT": str(free_port()), "LOCAL_SLURM_TIMEOUT": "10"}
        failed = _local_cluster("start", str(tmp_path / "c"), "--nodes", "2", env=env)
    assert failed.returncode != 0 and "local_cluster.sh: error:" in failed.stderr, failed
    _assert_all_gone(tmp_path / "c")
    too_many = _local_cluster("start", str(tmp_path / "c"), "--nodes", "300")
    assert too_many.returncode != 0 and "at most 253" in too_many.stderr
    huge = _local_cluster("start", str(tmp_path / "c"), "--nodes", "200", env={**_cluster_env(),
                                                                               "LOCAL_SLURM_NODE_MB": "10000000"})
    assert huge.returncode != 0 and "MB are available; use fewer nodes" in huge.stderr
    _assert_all_gone(tmp_path / "c")


def test_rank_wiring_per_node_sizes(two_nodes):
    base = {"PATH": os.environ["PATH"], "SLURM_CONF": two_nodes.env["SLURM_CONF"], "SLURM_JOB_NODELIST": "node[1-3]",
            "SLURM_JOB_ID": "9", "SLURM_NTASKS": "8", "SLURM_NNODES": "3", "SLURM_STEP_TASKS_PER_NODE": "3(x2),2"}

    def env_of(procid: int, nodeid: int, localid: int) -> dict[str, str]:
        out = subprocess.run(["bash", str(LAUNCH), "print-env"], capture_output=True, text=True, timeout=30, env={
            **base, "SLURM_PROCID": str(procid), "SLURM_NODEID": str(nodeid), "SLURM_LOCALID": str(localid)})
        assert out.returncode == 0, out.stderr
        return dict(line.split("=", 1) for line in out.stdout.split())

    assert env_of(7, 2, 1)["LOCAL_SIZE"] == "2" and env_of(4, 1, 1)["LOCAL_SIZE"] == "3"
    got = env_of(0, 0, 0)
    assert got["NODE_RANK"] == "0" and got["LOCAL_WORLD_SIZE"] == "3" and got["MASTER_ADDR"] == "node1"
    # node1 resolves here only inside the namespaces: on the host the interface stays unset
    assert "GLOO_SOCKET_IFNAME" not in got


# ------------------------------------------------------------------- jobs on 2 nodes

def _submit(cluster: SlurmCluster, out: Path, run_dir: Path, demo: Path, nodes: int, per_node: int, *sets: str,
            ds_config: str = "ds_configs/zero0_bf16.json") -> str:
    """The action_cls template with the real trainer on ``nodes`` x ``per_node`` CPU ranks, tiny demo data."""
    values = tiny_overrides(demo, run_dir, "train.log_every=1", *sets)[1::2]  # values only: EXTRA_SETS is a list
    exports = (f"ALL,RUN_DIR={run_dir},DS_CONFIG={ds_config},PYTHON={sys.executable},PYTHONPATH={REPO},"
               f"EXTRA_SETS={' '.join(values)}")
    return cluster.sbatch(f"--nodes={nodes}", f"--ntasks-per-node={per_node}", "--gpus-per-node=0",
                          "--cpus-per-task=1", "-o", str(out), f"--export={exports}",
                          str(REPO / "slurm" / "action_cls.sh"), cwd=REPO)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def test_an_evaluation_on_two_nodes_reads_each_validation_shard_once(two_nodes, tiny_demo, tmp_path):
    """2 nodes x 2 ranks x 2 loader workers (8 readers) evaluate 8 validation shards served by nginx on the host's
    end of the bridge: nginx serves each shard once (each reader used to read all 8: 8x the bytes), and the
    metrics are those of the same job reading the shards from the shared disk."""
    subnet = dict(line.split("=", 1) for line in (two_nodes.dir / "cluster.env").read_text().split())["SUBNET"]
    data = tmp_path / "www" / "many"
    subprocess.run([sys.executable, "data_prep/make_demo_data.py", "--out", str(data), "--train", "64", "--val", "64",
                    "--shard-size", "8"], cwd=REPO, check=True, capture_output=True)
    sets = ("data.num_workers=2", "train.steps=2", "train.eval_every=2", "train.ckpt_every=2")
    evals = {}
    with Nginx(tmp_path / "www", tmp_path / "nginx", host=f"{subnet}.254") as web:
        for name, location in (("http", f"{web.url}/many"), ("disk", str(data))):
            out, run_dir = tmp_path / f"{name}.out", tmp_path / name
            jobid = _submit(two_nodes, out, run_dir, tiny_demo, 2, 2, f"data.train={location}/train",
                            f"data.val={location}/val", *sets)
            info = two_nodes.wait_job_done(jobid, timeout=300, log=out)
            assert info["JobState"] == "COMPLETED", out.read_text()[-3000:]
            evals[name] = next(r for r in read_metrics(run_dir) if "eval/top1" in r)
        served = web.requests("/many/val/val-")
    shards = sorted((data / "val").glob("*.tar"))
    assert sorted(line.split()[6] for line in served) == [f"/many/val/{p.name}" for p in shards]  # each once
    assert sum(int(line.split()[9]) for line in served) == sum(p.stat().st_size for p in shards)
    keys = ("eval/top1", "eval/top5", "eval/num_clips", "eval/skipped_samples", "eval/skipped_shards")
    assert {k: evals["http"][k] for k in keys} == {k: evals["disk"][k] for k in keys}
    assert evals["http"]["eval/num_clips"] == 64


def test_two_nodes_train_like_one(two_nodes, tiny_demo, tmp_path):
    """2 nodes x 1 rank repeats the per-step losses of 1 node x 2 ranks (same global batch and seed)."""
    steps, common = 6, ("train.steps=6", "train.eval_every=6", "train.ckpt_every=100")
    jobs = {name: (_submit(two_nodes, tmp_path / f"{name}.out", tmp_path / name, tiny_demo, nodes, per_node, *common))
            for name, nodes, per_node in (("one", 1, 2), ("two", 2, 1))}
    for name, jobid in jobs.items():
        info = two_nodes.wait_job_done(jobid, timeout=300, log=tmp_path / f"{name}.out")
        assert info["JobState"] == "COMPLETED", (tmp_path / f"{name}.out").read_text()[-3000:]
    # DeepSpeed's CPU shm allreduce maps one buffer per rank when all ranks share a host, none otherwise
    assert "2 rank(s) on 1 host(s): node1: 0 1 | DeepSpeed shm buffers mapped by rank 0: 2" in (
        tmp_path / "one.out").read_text()
    assert "2 rank(s) on 2 host(s): node1: 0 | node2: 1 | DeepSpeed shm buffers mapped by rank 0: 0" in (
        tmp_path / "two.out").read_text()
    expected, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    worst = max(abs(got[s] - expected[s]) / abs(expected[s]) for s in expected)
    print(f"2 nodes x 1 rank vs 1 node x 2 ranks: largest relative per-step loss difference {worst:.1e} "
          f"over {steps} steps")
    assert worst <= 1e-5


def test_preemption_checkpoints_every_rank_on_both_nodes(two_nodes, tiny_demo, tmp_path):
    """2 nodes x 2 ranks, ZeRO-2 (each rank writes its optimizer shard): USR1 to the batch shell makes all
    4 ranks checkpoint the same step; the job requeues and resumes; every step is logged once."""
    steps, out, run_dir = 8, tmp_path / "job.out", tmp_path / "run"
    jobid = _submit(two_nodes, out, run_dir, tiny_demo, 2, 2, f"train.steps={steps}", f"train.eval_every={steps}",
                    "train.ckpt_every=100", ds_config="ds_configs/zero2_bf16.json")
    two_nodes.wait_for("training to reach step 2", _output_has(out, "step 2/"), 300, out)
    two_nodes.run("scancel", "--signal=USR1", "--batch", jobid)  # what --signal=B:USR1@N sends
    info = _requeued_then_finish(two_nodes, jobid, out, timeout=300)
    text = out.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-3000:]
    # LOCAL_SIZE 2 of world 4: the shm collectives stay off although the namespaces share /dev/shm
    layout = "4 rank(s) on 2 host(s): node1: 0 1 | node2: 2 3 | DeepSpeed shm buffers mapped by rank 0: 0"
    assert text.count(layout) == 2
    assert text.count("node node2: node rank 1, ranks 2,3 of 4 (LOCAL_SIZE=2), master node1:") == 2
    stopped = int(re.search(r"stopping at step (\d+) on SIGUSR1", text).group(1))
    resumed = int(re.search(r"resuming from checkpoint \S+ at step (\d+)", text).group(1))
    assert 2 <= stopped < steps and resumed == stopped, text[-3000:]
    ckpt = run_dir / "checkpoints" / f"step_{stopped:08d}"
    assert sorted(p.name for p in ckpt.glob("*optim_states.pt")) == [
        f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)]
    saved = json.loads((ckpt / "trainer_state.json").read_text())
    assert sorted(saved["data_position"]) == [f"rank{r}/worker0" for r in range(4)] and saved["step"] == stopped
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == list(range(1, steps + 1))
    print(f"preempted at step {stopped} on 2 nodes x 2 ranks; resumed there; steps 1..{steps} logged once")


def test_lost_node_ends_the_job_and_a_resubmission_resumes(two_nodes, tiny_demo, tmp_path):
    """kill-node: node2's link goes down and every process on it gets SIGKILL. The rank left on node1
    gives up after train.collective_timeout_s, Slurm declares node2 DOWN after SlurmdTimeout and
    ends (requeues) the job; the newest complete checkpoint resumes, losing < train.ckpt_every steps."""
    steps, every = 12, 3
    sets = (f"train.steps={steps}", f"train.eval_every={steps}", f"train.ckpt_every={every}",
            f"train.collective_timeout_s={COLLECTIVE_TIMEOUT_S}")
    out, out2, run_dir = tmp_path / "job.out", tmp_path / "again.out", tmp_path / "run"
    jobid = _submit(two_nodes, out, run_dir, tiny_demo, 2, 1, *sets, ds_config="ds_configs/zero3_bf16.json")
    two_nodes.wait_for("a checkpoint and step 5", lambda: _output_has(out, "step 5/")() and (
        run_dir / "checkpoints" / "step_00000003").is_dir(), 300, out)
    lost_at = time.monotonic()
    kill = _local_cluster("kill-node", str(two_nodes.dir), "node2")
    assert kill.returncode == 0, kill.stderr

    two_nodes.wait_for("the rank on node1 to give up", _output_has(out, "a collective failed"), 120, out)
    gave_up = time.monotonic() - lost_at
    last_step = max(int(s) for s in re.findall(r"step (\d+)/", out.read_text()))  # rank 0 printed all it did

    def ended():
        info = two_nodes.job(jobid)
        return info is not None and info["JobState"] not in ("RUNNING", "COMPLETING")

    two_nodes.wait_for("the job to end", ended, 120, out)
    job_end = time.monotonic() - lost_at
    info = two_nodes.job(jobid)
    print(f"node lost at step ~{last_step}: rank 0 gave up after {gave_up:.1f} s "
          f"(collective timeout {COLLECTIVE_TIMEOUT_S} s), the job left RUNNING after {job_end:.1f} s "
          f"(SlurmdTimeout {SLURMD_TIMEOUT_S} s) as {info['JobState']} (restarts {info['Restarts']})")
    assert gave_up < COLLECTIVE_TIMEOUT_S + 15 and job_end < SLURMD_TIMEOUT_S + 30
    assert info["JobState"] == "PENDING" and info["Restarts"] == "1"  # --requeue: Slurm requeued it

    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] % every == 0 and last_step - state["step"] <= every and not list(
        run_dir.glob("checkpoints/*.partial")), (latest, last_step)

    # Bring node2 back and resubmit (a new job id: requeued jobs keep theirs, and Slurm may still
    # deliver the old incarnation's kill to the revived node; on a real cluster the requeued job
    # waits ~120 s, or set StartTime, before it starts on the node's replacement).
    assert _local_cluster("start", str(two_nodes.dir)).returncode == 0
    two_nodes.run("scancel", jobid)
    again = _submit(two_nodes, out2, run_dir, tiny_demo, 2, 1, *sets, ds_config="ds_configs/zero3_bf16.json")
    info = two_nodes.wait_job_done(again, timeout=300, log=out2)
    text = out2.read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    resumed = int(re.search(r"resuming from checkpoint \S+ at step (\d+)", text).group(1))
    print(f"resubmitted: resumed at step {resumed}, {last_step - resumed} step(s) lost (train.ckpt_every={every})")
    assert resumed == state["step"]
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == list(range(1, steps + 1))
    assert (run_dir / "COMPLETED").exists()
