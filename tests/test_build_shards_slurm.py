"""slurm/build_shards.sh on the local 2-node cluster (slurm/local_cluster.sh --nodes 2): a Slurm array builds one
dataset in 4 parts on both nodes; one part is preempted (USR1, what --signal=B:USR1@120 sends before the time
limit) and another has its builder killed with kill -9, each in the middle of a shard, and both requeue
themselves; the dependent merge job writes the manifest. The result has the bytes of a one-process build, inspects
the same and trains.

TURBO_DS_REAL_VIDEOS=DIR adds every video under DIR to the manifest (e.g. the 16 real sample videos that
`bash ../shared/real_videos/fetch.sh DIR` fetches); without it the test uses generated clips only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, run_train, tiny_overrides
from test_build_shards import build_files, make_video, run_build, write_csv
from test_slurm_cluster import SlurmCluster, _requeued_then_finish
from test_slurm_multinode import two_nodes  # noqa: F401 - this module's own 2-node cluster
from turbo_ds.prep.manifest_rows import VIDEO_EXTS
from turbo_ds.prep.shard_builder import Part

pytestmark = pytest.mark.slurm

PARTS, SHARD_SIZE = 4, 2
PREEMPTED, KILLED = 1, 2  # parts interrupted in the middle of a shard
INSPECT = str(REPO / "data_prep" / "inspect_shards.py")


def _shards(part: int, rows: int) -> range:
    return Part(part, PARTS).shards(-(-rows // SHARD_SIZE))


def _manifest(tmp_path: Path) -> tuple[Path, Path, int]:
    """(manifest, video root, rows): 24 generated clips in 3 classes, a missing and a corrupt file, then the real
    videos of $TURBO_DS_REAL_VIDEOS. The clips of parts PREEMPTED and KILLED are longer, so that the signals land
    inside them."""
    root = tmp_path / "videos"
    root.mkdir()
    rows = [f"v{i:02d}.mp4,c{i % 3}" for i in range(24)] + ["gone.mp4,c0", "bad.mp4,c1"]
    real = os.environ.get("TURBO_DS_REAL_VIDEOS")
    if real:
        videos = sorted(p for p in Path(real).rglob("*") if p.suffix[1:].lower() in VIDEO_EXTS)
        for k, path in enumerate(videos):
            (root / f"real{k:02d}{path.suffix}").symlink_to(path.resolve())
            rows.append(f"real{k:02d}{path.suffix},{path.parent.name}")
    slow = {i for k in (PREEMPTED, KILLED) for i in range(len(rows)) if i // SHARD_SIZE in _shards(k, len(rows))}
    for i in range(24):
        size, frames = ((320, 240), 600) if i in slow else ((64, 48), 20)  # slow: seconds to transcode a part
        make_video(root / f"v{i:02d}.mp4", "mp4", "libx264", size=size, frames=frames, fps=30, texture=i)
    (root / "bad.mp4").write_bytes(b"not a video" * 20)
    return write_csv(tmp_path / "m.csv", "path,label", rows), root, len(rows)


def _pid_of_part(out: Path) -> int | None:
    """The builder's pid, as the template logs it."""
    found = re.search(r"builder pid (\d+)", out.read_text()) if out.is_file() else None
    return int(found.group(1)) if found else None


def _interrupt(cluster: SlurmCluster, part: int, log: Path, out: Path, rows: int, action) -> None:
    """``action(pid of the builder)`` once the part's first shard is written and before its last."""
    span = _shards(part, rows)
    first, last = out / f"shard-{span.start:06d}.tar", out / f"shard-{span.stop - 1:06d}.tar"
    cluster.wait_for(f"part {part}'s first shard", lambda: first.exists() and _pid_of_part(log), 180, log)
    action(_pid_of_part(log))
    assert not last.exists() and not (out / ".build" / f"part-{part:06d}.json").exists(), "interrupted too late"


def _batch_shell(pid: int) -> int:
    """The parent of the builder: the batch shell that runs the template."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_array_build_with_interrupted_parts_gives_the_one_process_bytes_and_trains(two_nodes, tmp_path):  # noqa: F811
    manifest, root, rows = _manifest(tmp_path)
    args = ["--task", "action_cls", "--manifest", str(manifest), "--video-root", str(root), "--short-side", "32",
            "--fps", "10", "--shard-size", str(SHARD_SIZE), "--workers", "1"]
    reference, out = tmp_path / "one", tmp_path / "parts"
    run_build(*args, "--out", reference)

    # one task per node at a time (a task asks for all of a node's CPUs), so that both nodes build
    cpus = two_nodes.run("sinfo", "-h", "-N", "-o", "%c").stdout.split()[0]
    logs = tmp_path / "logs"
    logs.mkdir()
    array = two_nodes.sbatch(f"--array=0-{PARTS - 1}", f"--cpus-per-task={cpus}", "-o", str(logs / "part-%A_%a.out"),
                             f"--export=ALL,PYTHON={sys.executable}", str(REPO / "slurm" / "build_shards.sh"), *args,
                             "--out", str(out), cwd=tmp_path)
    log = {k: logs / f"part-{array}_{k}.out" for k in range(PARTS)}
    # what --signal=B:USR1@120 does (not scancel --signal: Slurm 22.05 then keeps retrying a job that requeued at once)
    _interrupt(two_nodes, PREEMPTED, log[PREEMPTED], out, rows, lambda pid: os.kill(_batch_shell(pid), signal.SIGUSR1))
    _interrupt(two_nodes, KILLED, log[KILLED], out, rows, lambda pid: os.kill(pid, signal.SIGKILL))
    for part, why in ((PREEMPTED, "stopped before the time limit"), (KILLED, "killed by signal 9")):
        info = _requeued_then_finish(two_nodes, f"{array}_{part}", log[part], timeout=120)  # they requeued themselves
        text = log[part].read_text()
        assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text
        assert f"{why}: requeueing {array}_{part}" in text and f"(job {array}_{part}, restart 1)" in text

    merge_id = re.search(r"submitted the merge: job (\d+)", log[0].read_text()).group(1)
    merge_log = logs / f"slurm-turbo-build-shards-merge-{merge_id}.out"
    info = two_nodes.wait_job_done(merge_id, timeout=180, log=merge_log)
    assert info["JobState"] == "COMPLETED", merge_log.read_text()
    built = json.loads((reference / "manifest.json").read_text())
    assert f"merged: {built['num_samples']} written, {built['num_skipped']} skipped" in merge_log.read_text()
    hosts = {re.search(r"\) on (\S+):", log[k].read_text()).group(1) for k in range(PARTS)}
    assert hosts == {"node1", "node2"}, hosts

    assert build_files(out) == build_files(reference)  # every shard, errors.jsonl and manifest.json
    inspect = [subprocess.run([sys.executable, INSPECT, str(d)], capture_output=True, text=True, cwd=REPO).stdout
               for d in (reference, out)]
    assert inspect[0] == inspect[1] and f"total: {built['num_samples']} samples" in inspect[1], inspect
    assert "undecodable: 0" in inspect[1], inspect[1]

    data = tmp_path / "data"  # the merged shards as the train and val split of a 2-step run
    data.mkdir()
    for split in ("train", "val"):
        (data / split).symlink_to(out)
    run_dir = tmp_path / "run"
    proc = run_train(tiny_overrides(data, run_dir, "model.num_frames=4", "model.img_size=32", "train.steps=2",
                                    "train.log_every=1", "train.eval_every=2", "train.ckpt_every=2",
                                    "data.decoded_cache_clips=0"), ranks=None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [1, 2]
