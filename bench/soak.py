#!/usr/bin/env python
"""Soak: the demo training for M minutes, watching every rank for leaks.

    python bench/soak.py --minutes 20 --json soak.json          # the README figure (a quiet machine)
    python bench/soak.py --minutes 1.5                          # a quick check that it works

Runs the real trainer (`deepspeed --num_gpus R turbo_ds/train.py`, the demo recipe, checkpoints
and evaluations included) on freshly generated demo data in a temporary folder, and at each log
step records per rank: resident memory of the rank process (and of its children, e.g. loader
workers), its open file descriptors, and /dev/shm use. After M minutes the ranks get SIGTERM
(they checkpoint and exit, as on a preemption) and the temporary folder is removed (--keep DIR
keeps the run).

Growth is judged on the log steps after the first epoch (caches filled, allocator warmed up):
per rank, the median of the first and of the last quarter of those samples, and a least-squares
slope. "no growth beyond noise" means growth below 3x the samples' residual scatter around that
line plus 1%; --max-growth-mb makes a larger growth fail (exit 1). Memory is read from /proc
(Linux only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from turbo_ds.data.shards import read_manifest  # noqa: E402
from turbo_ds.engine.distributed import free_port  # noqa: E402

MB = 2**20
STARTUP_S = 900  # launch to first log step at most (engine start, first compilation of DeepSpeed's CPU ops)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True,
                   help="how long to train, wall clock from the first log step (start-up not counted)")
    p.add_argument("--ranks", type=int, default=2, help="ranks started by the deepspeed launcher")
    p.add_argument("--config", default="configs/demo_action_cls.yaml")
    p.add_argument("--ds-config", default="ds_configs/zero2_bf16.json")
    p.add_argument("--train-clips", type=int, default=256, help="demo training clips (an epoch is clips / batch steps)")
    p.add_argument("--log-every", type=int, default=10, help="train.log_every: one sample per log step")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides for train.py")
    p.add_argument("--json", type=Path, help="write the samples and the summary here")
    p.add_argument("--keep", type=Path, help="keep the run dir and demo data in this folder")
    p.add_argument("--max-growth-mb", type=float, help="exit 1 when a rank's resident memory grows more than this")
    a = p.parse_args(argv)
    if a.minutes <= 0 or a.ranks < 1 or a.log_every < 1:
        p.error("--minutes must be > 0, --ranks and --log-every >= 1")
    if a.keep is not None and a.keep.exists() and any(a.keep.iterdir()):
        p.error(f"--keep {a.keep}: folder is not empty; pick a new one")
    return a


# ------------------------------------------------------------------ /proc readings


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (one pass over /proc: ppid links)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _rss(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _rank_of(pid: int) -> int | None:
    """RANK from the process's environment, for the launcher's rank processes (None for anything else)."""
    try:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        cmd = Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return None
    is_rank = "turbo_ds/train.py" in cmd and "deepspeed.launcher" not in cmd  # not the launcher itself
    return int(env["RANK"]) if is_rank and "RANK" in env else None


def rank_pids(launcher: int) -> dict[int, int]:
    """rank -> PID of the rank processes the launcher started (a rank's own children are not ranks)."""
    ranks = {}
    for pid in sorted(_children(launcher)):  # parents have lower PIDs than the workers they fork
        rank = _rank_of(pid)
        if rank is not None and rank not in ranks:
            ranks[rank] = pid
    return ranks


def shm_used() -> int:
    try:
        return shutil.disk_usage("/dev/shm").used
    except OSError:
        return 0


def sample(step: int, elapsed: float, ranks: dict[int, int]) -> dict:
    per_rank = {}
    for rank, pid in sorted(ranks.items()):
        kids = _children(pid)
        per_rank[str(rank)] = {"rss_mb": _rss(pid) / MB, "children_rss_mb": sum(map(_rss, kids)) / MB,
                               "children": len(kids), "fds": _fds(pid)}
    return {"step": step, "t_s": round(elapsed, 1), "ranks": per_rank, "shm_mb": shm_used() / MB}


# ------------------------------------------------------------------ the run


def train_records(metrics: Path, seen: int) -> tuple[list[dict], int]:
    """New complete training records of metrics.jsonl past byte ``seen``."""
    if not metrics.is_file():
        return [], seen
    with open(metrics, "rb") as f:
        f.seek(seen)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # a line being written is read next time
    records = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return [r for r in records if "train/loss" in r], seen + end


def soak(a: argparse.Namespace, work: Path) -> dict:
    demo, run_dir = work / "demo", work / "run"
    print(f"generating {a.train_clips} demo clips in {demo} ...", flush=True)
    subprocess.run([sys.executable, "data_prep/make_demo_data.py", "--out", str(demo), "--train", str(a.train_clips),
                    "--val", "64"], cwd=REPO, check=True, capture_output=True)
    sets = [f"run_dir={run_dir}", f"data.train={demo}/train", f"data.val={demo}/val", "data.generate_demo=false",
            "train.steps=10000000", f"train.log_every={a.log_every}", "train.keep_last_checkpoints=2", *a.set]
    cmd = ["deepspeed", "--num_gpus", str(a.ranks), "--master_port", str(free_port()), "turbo_ds/train.py",
           "--ds_config", a.ds_config, "--config", a.config, *[x for s in sets for x in ("--set", s)]]
    log = open(work / "soak_stdout.log", "w")
    start = time.monotonic()
    launcher = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    samples, seen, ranks, end = [], 0, {}, start + STARTUP_S  # until the first log step, then M minutes
    print(f"training for {a.minutes:g} min ({a.ranks} ranks, {a.ds_config}); log in {work / 'soak_stdout.log'}",
          flush=True)
    try:
        while time.monotonic() < end and launcher.poll() is None:
            time.sleep(0.5)
            ranks = ranks if len(ranks) == a.ranks else rank_pids(launcher.pid)
            records, seen = train_records(run_dir / "metrics.jsonl", seen)
            if records and not samples:
                end = time.monotonic() + a.minutes * 60
            for r in records:
                s = sample(r["step"], time.monotonic() - start, ranks)
                samples.append(s)
                mem = " ".join(f"r{k} {v['rss_mb']:.0f}+{v['children_rss_mb']:.0f} MB {v['fds']} fds"
                               for k, v in s["ranks"].items())
                print(f"step {s['step']:>6} | {s['t_s']:>6.0f} s | {mem} | shm {s['shm_mb']:.0f} MB", flush=True)
        if not samples:
            sys.exit(f"no log step within {STARTUP_S} s of the launch; see {work / 'soak_stdout.log'}")
        if launcher.poll() is not None:
            sys.exit(f"training ended early (exit {launcher.returncode}); see {work / 'soak_stdout.log'}:\n"
                     + (work / "soak_stdout.log").read_text()[-3000:])
        for pid in ranks.values():  # as a preemption: each rank checkpoints and exits
            os.kill(pid, signal.SIGTERM)
        try:
            launcher.wait(timeout=300)
        except subprocess.TimeoutExpired:
            print("ranks still running 300 s after SIGTERM: killed", flush=True)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        log.close()
    global_batch = json.loads((run_dir / "ds_config.json").read_text())["train_batch_size"]
    epoch_steps = math.ceil(sum(s["num_samples"] for s in read_manifest(demo / "train")["shards"]) / global_batch)
    return {"minutes": a.minutes, "ranks": a.ranks, "ds_config": a.ds_config, "epoch_steps": epoch_steps,
            "exit_code": launcher.returncode, "samples": samples,
            "summary": summarize([s for s in samples if s["step"] > epoch_steps])}


# ------------------------------------------------------------------ the figure


def trend(points: list[tuple[float, float]]) -> dict:
    """Growth of a series (t_s, value): medians of its first and last quarter, slope per minute, scatter."""
    quarter = max(1, len(points) // 4)
    first = statistics.median(v for _, v in points[:quarter])
    last = statistics.median(v for _, v in points[-quarter:])
    ts, vs = [t for t, _ in points], [v for _, v in points]
    t0, v0 = statistics.fmean(ts), statistics.fmean(vs)
    var = sum((t - t0) ** 2 for t in ts)
    slope = sum((t - t0) * (v - v0) for t, v in points) / var if var else 0.0
    scatter = statistics.pstdev(v - (v0 + slope * (t - t0)) for t, v in points)
    return {"first": round(first, 1), "last": round(last, 1), "growth": round(last - first, 1),
            "per_min": round(slope * 60, 2), "scatter": round(scatter, 2), "min": round(min(vs), 1),
            "max": round(max(vs), 1)}


def summarize(samples: list[dict]) -> dict:
    if len(samples) < 2:
        return {"error": "fewer than 2 log steps after the first epoch: run longer or lower --log-every"}
    out = {"log_steps": len(samples), "from_step": samples[0]["step"], "to_step": samples[-1]["step"], "ranks": {}}
    for rank in samples[0]["ranks"]:
        series = {k: [(s["t_s"], s["ranks"][rank][k]) for s in samples if rank in s["ranks"]]
                  for k in ("rss_mb", "children_rss_mb", "fds")}
        out["ranks"][rank] = {k: trend(v) for k, v in series.items()}
        rss = out["ranks"][rank]["rss_mb"]
        rss["beyond_noise"] = rss["growth"] > 3 * rss["scatter"] + 0.01 * rss["first"]
    out["shm_mb"] = trend([(s["t_s"], s["shm_mb"]) for s in samples])
    return out


def report(result: dict) -> str:
    s = result["summary"]
    if "error" in s:
        return f"soak: {s['error']}"
    lines = [f"soak: {result['minutes']:g} min, {result['ranks']} ranks, {result['ds_config']}; "
             f"log steps {s['from_step']}..{s['to_step']} after the first epoch ({result['epoch_steps']} steps), "
             f"{s['log_steps']} samples"]
    for rank, r in s["ranks"].items():
        rss, kids, fds = r["rss_mb"], r["children_rss_mb"], r["fds"]
        verdict = "GROWS beyond noise" if rss["beyond_noise"] else "no growth beyond noise"
        lines.append(f"  rank {rank}: RSS {rss['first']:.0f} -> {rss['last']:.0f} MB ({rss['growth']:+.1f} MB, "
                     f"{rss['per_min']:+.2f} MB/min, scatter {rss['scatter']:.1f}): {verdict}; children "
                     f"{kids['first']:.0f} -> {kids['last']:.0f} MB; fds {fds['first']:.0f} -> {fds['last']:.0f}")
    shm = s["shm_mb"]
    lines.append(f"  /dev/shm: {shm['first']:.0f} -> {shm['last']:.0f} MB (machine-wide)")
    return "\n".join(lines)


def main(argv=None) -> None:
    a = parse_args(argv)
    work = a.keep or Path(tempfile.mkdtemp(prefix="turbo_ds_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = soak(a, work)
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(report(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    growth = [r["rss_mb"]["growth"] for r in result["summary"].get("ranks", {}).values()]
    if a.max_growth_mb is not None and (not growth or max(growth) > a.max_growth_mb):
        sys.exit(f"soak: resident memory grew past --max-growth-mb={a.max_growth_mb:g} (or too few samples)")


if __name__ == "__main__":
    main()
