"""Memory planner: which frames per video, micro-batch and keep ratio fit in a memory budget.

    python -m turbo_ds.plan --config configs/breakfast_vitb.yaml --ds_config ds_configs/zero2_bf16.json --memory-gb 40

The command line (``__main__`` runs ``main``; the first paragraph above is ``--help``'s
description): per keep ratio, the most frames at the JSON's micro-batch and the largest
micro-batch at the config's frames, as a table, then the largest keep ratio that fits the
recipe as it is. Its hidden ``--_measure JOB`` is the measuring child's entry (``measure``
starts it; ``_child`` runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from turbo_ds.config import ConfigError, load_config, load_ds_config, plan_batches
from turbo_ds.data.source import ShardSource
from turbo_ds.plan.measure import Setting, _child, default_device
from turbo_ds.plan.search import KEEP_RATIOS, Planner, PlanError, frame_unit
from turbo_ds.tasks import checked, task_type


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m turbo_ds.plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML experiment recipe")
    p.add_argument("--ds_config", help="DeepSpeed JSON (micro-batch, precision, optimizer, ZeRO stage)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--memory-gb", type=float, help="memory budget of one rank, in GiB")
    p.add_argument("--keep-ratios", type=float, nargs="+", default=list(KEEP_RATIOS))
    p.add_argument("--search", choices=["frames", "micro", "both"], default="both",
                   help="per keep ratio: the most frames at the JSON's micro-batch, the largest micro-batch at "
                        "the config's frames, or both")
    p.add_argument("--max-frames", type=int, default=1024, help="stop the frames search here")
    p.add_argument("--max-micro", type=int, default=256, help="stop the micro-batch search here")
    p.add_argument("--ranks", type=int, default=1, help="ranks the JSON's ZeRO stage partitions state over")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--steps", type=int, default=3, help="training steps per measurement (the first is warm-up)")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    p.add_argument("--_measure", help=argparse.SUPPRESS)  # internal: measure the job file in this process
    args = p.parse_args(argv)
    if not args._measure and not (args.config and args.ds_config and args.memory_gb):
        p.error("--config, --ds_config and --memory-gb are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._measure:
        _child(args._measure)
        return 0
    try:
        cfg = checked(load_config(args.config, args.set))
        ds = load_ds_config(args.ds_config)
        if args.ranks < 1 or args.memory_gb <= 0:
            raise PlanError("--ranks must be >= 1 and --memory-gb > 0")
        micro = plan_batches(cfg, ds, args.ranks).micro
        device = args.device or default_device()
        try:  # the head's size: the dataset's class count when it is there
            num_classes = len(ShardSource.from_config(cfg.data, "train").manifest["class_names"] or []) or 10
        except (OSError, ValueError):
            num_classes = 10
        planner = Planner(cfg, ds, args.memory_gb, device, args.steps, args.ranks, num_classes, log=print)
        key, frames, unit = task_type(cfg.task).frames_key, task_type(cfg.task).frames(cfg), frame_unit(cfg)
        ratios = sorted(args.keep_ratios, reverse=True)
        print(f"memory plan for {args.config}: task {cfg.task}, encoder width {cfg.model.width} x depth "
              f"{cfg.model.depth}, {cfg.model.img_size} px, {key}={frames}, micro-batch {micro}, ZeRO stage "
              f"{ds.zero_stage} over {args.ranks} rank(s), {device}, budget {args.memory_gb:g} GB")
        smallest = Setting(min(unit, frames), 1, min(ratios))
        if not planner(smallest).fits:
            raise planner.nothing_fits(smallest)
        rows = []
        for r in ratios:
            row: dict[str, Any] = {"keep_ratio": r}
            if args.search in ("frames", "both"):
                m = planner.max_frames(r, micro, unit, args.max_frames)
                row.update(max_frames=m and m.setting.frames, frames_gb=m and m.peak_gb, frames_step_s=m and m.step_s)
            if args.search in ("micro", "both"):
                m = planner.max_micro(r, frames, args.max_micro)
                row.update(max_micro=m and m.setting.micro, micro_gb=m and m.peak_gb, micro_step_s=m and m.step_s)
            rows.append(row)
        _print_table(rows, micro, frames)
        try:
            best = planner.best_keep_ratio(frames, micro, tuple(ratios)).setting.keep_ratio
            print(f"\nrecommendation: at {key}={frames} and micro-batch {micro}, the largest keep ratio that fits is "
                  f"{best:g} (turbo.keep_ratio: {best:g})")
        except PlanError:
            print(f"\nrecommendation: {key}={frames} x micro-batch {micro} fits at no keep ratio tried; use fewer "
                  "frames or a smaller micro-batch (see the table)")
        most = max((r for r in rows if r.get("max_frames")), key=lambda r: r["max_frames"], default=None)
        if most:
            print(f"  most frames per video at micro-batch {micro}: {most['max_frames']} (keep ratio "
                  f"{most['keep_ratio']:g})")
        if args.json:
            args.json.write_text(json.dumps({"budget_gb": args.memory_gb, "rows": rows, "measurements": [
                {**dataclasses.asdict(m.setting), **{k: v for k, v in dataclasses.asdict(m).items() if k != "setting"}}
                for m in planner.results.values()]}, indent=2) + "\n")
    except ConfigError as e:
        print(f"plan error: {e}", file=sys.stderr)
        return 2
    return 0


def _print_table(rows: list[dict[str, Any]], micro: int, frames: int) -> None:
    def cell(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)

    print(f"\n{'keep_ratio':>10} | {'max frames @ micro ' + str(micro):>20} {'GB':>6} {'s/step':>7} | "
          f"{'max micro @ ' + str(frames) + ' frames':>22} {'GB':>6} {'s/step':>7}")
    for row in rows:
        print(f"{row['keep_ratio']:>10g} | {cell(row.get('max_frames')):>20} {cell(row.get('frames_gb'), '{:.2f}'):>6} "
              f"{cell(row.get('frames_step_s'), '{:.2f}'):>7} | {cell(row.get('max_micro')):>22} "
              f"{cell(row.get('micro_gb'), '{:.2f}'):>6} {cell(row.get('micro_step_s'), '{:.2f}'):>7}")
