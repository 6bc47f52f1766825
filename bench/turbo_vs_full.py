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


def train(run_dir: Path, args: argparse.Namespace, keep: float, steps: int) -> dict:
    """One real training run; returns its final eval record plus wall time and step time."""
    sets = [f"run_dir={run_dir}", f"turbo.keep_ratio={keep}", "turbo.eval_keep_ratio=1.0", f"train.steps={steps}",
            f"train.warmup_steps={max(1, steps // 10)}", f"train.eval_every={steps}", f"train.ckpt_every={steps}",
            f"train.log_every={max(1, min(50, steps // 4))}", *args.set]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=240, help="training wall-clock budget per setting (equal time)")
    p.add_argument("--steps", type=int, default=600, help="steps per setting (equal steps)")
    p.add_argument("--calibration-steps", type=int, default=100, help="long enough to reach the steady state (second epoch)")
    p.add_argument("--config", default="configs/demo_action_cls.yaml")
    p.add_argument("--ds_config", default="ds_configs/zero0_bf16.json", help="copied with --micro-batch set")
    p.add_argument("--micro-batch", type=int, default=32, help="clips per step (the demo uses 2 ranks x 16)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    settings = {"turbo": 0.25, "full": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = json.loads((REPO / args.ds_config).read_text())
        args.ds_config = str(tmp / "ds_config.json")
        Path(args.ds_config).write_text(json.dumps({**ds, "train_micro_batch_size_per_gpu": args.micro_batch}))
        # Equal time: the step budget of each setting comes from its own measured throughput.
        equal_time = {}
        for name, keep in settings.items():
            calib = train(tmp / f"calib_{name}", args, keep, args.calibration_steps)
            step_s = args.micro_batch / calib["clips_per_s"]  # training steps only: no start-up or eval
            steps = max(1, int(args.budget_s / step_s))
            run = train(tmp / f"time_{name}", args, keep, steps)
            equal_time[name] = run
            print(f"equal time  | {name:5s} keep {keep:<4} | {steps:5d} steps | {run['wall_s']:6.0f} s | top-1 {run['top1']:.3f}")
        equal_steps = {}
        for name, keep in settings.items():
            run = train(tmp / f"steps_{name}", args, keep, args.steps)
            equal_steps[name] = run
            print(f"equal steps | {name:5s} keep {keep:<4} | {args.steps:5d} steps | {run['wall_s']:6.0f} s | top-1 {run['top1']:.3f}")
    result = {"equal_time": {"turbo": equal_time["turbo"]["top1"], "full": equal_time["full"]["top1"], "budget_s": args.budget_s,
                             "runs": equal_time},
              "equal_steps": {"turbo": equal_steps["turbo"]["top1"], "full": equal_steps["full"]["top1"], "steps": args.steps,
                              "runs": equal_steps}}
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in result.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
