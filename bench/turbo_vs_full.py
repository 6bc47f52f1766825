#!/usr/bin/env python
"""Turbo (keep 0.25) vs all tokens (keep 1.0) on the demo action task, through the real trainer.

    python bench/turbo_vs_full.py --budget-s 240 --steps 600 --json out.json

Equal wall-clock: each setting first times a short calibration run, then trains for as
many steps as fit in --budget-s with a full warmup-cosine schedule. Equal steps: both
train --steps steps. Every run is a real `turbo_ds/train.py` process (1 rank, DeepSpeed
engine, WebDataset shards) and evaluates with all tokens on the validation set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(run_dir: Path, args: argparse.Namespace, keep: float, steps: int, sets: tuple[str, ...] = ()) -> dict:
    """One real training run; returns its final eval record plus wall time and step time."""
    sets = [f"run_dir={run_dir}", f"turbo.keep_ratio={keep}", "turbo.eval_keep_ratio=1.0", f"train.steps={steps}",
            f"train.warmup_steps={max(1, steps // 10)}", f"train.eval_every={steps}", f"train.ckpt_every={steps}",
            f"train.log_every={max(1, min(50, steps // 4))}", *args.set, *sets]
    cmd = [sys.executable, "turbo_ds/train.py", "--config", args.config, "--ds_config", args.ds_config]
    cmd += [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"training failed (keep {keep}, {steps} steps):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/top1" in r]
    rates = [r["train/clips_per_s"] for r in records if "train/clips_per_s" in r]
    # the first log window holds the first epoch's decoding; later ones are steady state
    return {"top1": evals[-1]["eval/top1"], "steps": steps, "wall_s": wall, "clips_per_s": max(rates)}


def train_for(budget_s: float, run_dir: Path, args: argparse.Namespace, keep: float, sets: tuple[str, ...] = ()) -> dict:
    """Equal time: a short calibration run measures this setting's throughput, then a run trains for as many
    steps as fit in ``budget_s`` with a full warmup-cosine schedule."""
    calib = train(run_dir.with_name(run_dir.name + "_calib"), args, keep, args.calibration_steps, sets)
    step_s = args.micro_batch / calib["clips_per_s"]  # training steps only: no start-up or eval
    return train(run_dir, args, keep, max(1, int(budget_s / step_s)), sets)


def add_arguments(p: argparse.ArgumentParser, config: str, budget_s: float, steps: int, calibration_steps: int) -> None:
    p.add_argument("--budget-s", type=float, default=budget_s, help="training wall-clock budget per setting (equal time)")
    p.add_argument("--steps", type=int, default=steps, help="steps per setting (equal steps)")
    p.add_argument("--calibration-steps", type=int, default=calibration_steps,
                   help="long enough to reach the steady state (second epoch)")
    p.add_argument("--config", default=config)
    p.add_argument("--ds_config", default="ds_configs/zero0_bf16.json", help="copied with --micro-batch set")
    p.add_argument("--micro-batch", type=int, default=32, help="clips per step (the demo uses 2 ranks x 16)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--json", help="write the results here")


def write_ds_config(args: argparse.Namespace, folder: Path, lr: float | None = None) -> str:
    """A copy of --ds_config with --micro-batch (and ``lr``) set; returns its path."""
    ds = json.loads((REPO / args.ds_config).read_text())
    ds["train_micro_batch_size_per_gpu"] = args.micro_batch
    if lr is not None:
        ds["optimizer"] = {**ds["optimizer"], "params": {**ds["optimizer"]["params"], "lr": lr}}
    path = folder / f"ds_config_{lr}.json"
    path.write_text(json.dumps(ds))
    return str(path)


SETTINGS = {"turbo": 0.25, "full": 1.0}


def compare(args: argparse.Namespace, tmp: Path, settings: dict[str, float] = SETTINGS) -> dict:
    """Each setting trained at equal wall-clock and at equal steps; prints a line per run."""
    equal_time, equal_steps = {}, {}
    for name, keep in settings.items():
        run = equal_time[name] = train_for(args.budget_s, tmp / f"time_{name}", args, keep)
        print(f"equal time  | {name:5s} keep {keep:<4} | {run['steps']:5d} steps | {run['wall_s']:6.0f} s | "
              f"top-1 {run['top1']:.3f}", flush=True)
    for name, keep in settings.items():
        run = equal_steps[name] = train(tmp / f"steps_{name}", args, keep, args.steps)
        print(f"equal steps | {name:5s} keep {keep:<4} | {args.steps:5d} steps | {run['wall_s']:6.0f} s | "
              f"top-1 {run['top1']:.3f}", flush=True)
    return {"equal_time": {**{k: v["top1"] for k, v in equal_time.items()}, "budget_s": args.budget_s, "runs": equal_time},
            "equal_steps": {**{k: v["top1"] for k, v in equal_steps.items()}, "steps": args.steps, "runs": equal_steps}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, "configs/demo_action_cls.yaml", budget_s=240, steps=600, calibration_steps=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.ds_config = write_ds_config(args, Path(tmp))
        result = compare(args, Path(tmp))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in result.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
