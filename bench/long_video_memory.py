#!/usr/bin/env python
"""The most frames per video that train within a fixed memory budget, per Turbo keep ratio.

For each keep ratio, the memory planner (``turbo_ds.plan``, its search and measuring code)
measures real training steps (forward + backward + AdamW step, bf16 weights with fp32
master weights as DeepSpeed runs them) in a fresh subprocess per setting, searching in
steps of ``--frame-unit`` frames for the longest clip whose step fits the budget.
Reported per ratio: max_frames, the step time at that length (step_s; one timed step
after a warm-up by default, so noisy on a shared machine) and its measured need
(peak_gb; CPU: peak RSS growth, CUDA: max allocated).

Default: a ViT-S/16-like encoder (width 384, depth 12, 6 heads) at 224 px in joint mode
(one encoder over all frames: attention spans every kept token of the clip), micro-batch
1, 1 GB: a few minutes on a 2-core CPU.

    python bench/long_video_memory.py --json /tmp/lv_mem.json
    python bench/long_video_memory.py --budget-gb 20 --keep-ratios 1 0.25 --device cuda --json /tmp/lv_mem.json
    python bench/long_video_memory.py --plot lv_mem.png                    # also draw the table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from turbo_ds.config import Config, DeepSpeedConfig, LongVideoConfig, ModelConfig  # noqa: E402
from turbo_ds.plan.search import KEEP_RATIOS, Planner  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write {'results': [{keep_ratio, max_frames, step_s, peak_gb}, ...]} here")
    p.add_argument("--plot", type=Path, help="draw max frames (and step time) vs keep ratio into this PNG")
    p.add_argument("--budget-gb", type=float, default=1.0, help="memory budget of one training process, GiB")
    p.add_argument("--keep-ratios", type=float, nargs="+", default=list(KEEP_RATIOS))
    p.add_argument("--mode", choices=["joint", "segments"], default="joint")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--frame-unit", type=int, default=8,
                   help="frames grow in steps of this (the segment length in segments mode)")
    p.add_argument("--max-frames", type=int, default=512)
    p.add_argument("--micro", type=int, default=1, help="videos per step")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--checkpointing", action="store_true", help="model.activation_checkpointing")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=2, help="steps per measurement (the first is warm-up; step_s: median of the rest)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    model = ModelConfig(num_frames=a.frame_unit, img_size=a.size, patch_size=a.patch, tubelet_size=2, width=a.width,
                        depth=a.depth, heads=a.heads, activation_checkpointing=a.checkpointing)
    cfg = Config(task="long_video", model=model, long_video=LongVideoConfig(frames=a.frame_unit, mode=a.mode,
                                                                            temporal_heads=a.heads))
    ds_config = DeepSpeedConfig({"train_micro_batch_size_per_gpu": a.micro, "bf16": {"enabled": a.precision == "bf16"},
                                 "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.05}}})
    planner = Planner(cfg, ds_config, a.budget_gb, a.device, a.steps, log=lambda msg: print(msg, flush=True))
    print(f"long-video memory: {a.mode} ViT {a.width}x{a.depth} at {a.size} px, patch {a.patch}, micro-batch {a.micro}, "
          f"{a.precision}, {a.device}, budget {a.budget_gb:g} GB", flush=True)
    start, results = time.time(), []
    for ratio in sorted(a.keep_ratios, reverse=True):
        best = planner.max_frames(ratio, a.micro, a.frame_unit, a.max_frames)
        results.append({"keep_ratio": ratio, "max_frames": best.setting.frames if best else 0,
                        "step_s": best.step_s if best else None, "peak_gb": best.peak_gb if best else None})
    print(f"\n{'keep_ratio':>10} {'max_frames':>10} {'x keep 1':>8} {'step_s':>7} {'peak_gb':>7}")
    base = next((r["max_frames"] for r in results if r["keep_ratio"] == 1.0), None)
    for r in results:
        gain = f"{r['max_frames'] / base:.1f}" if base else "-"
        step = f"{r['step_s']:.2f}" if r["step_s"] is not None else "-"
        peak = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else "-"
        print(f"{r['keep_ratio']:>10g} {r['max_frames']:>10} {gain:>8} {step:>7} {peak:>7}")
    print(f"({len(planner.results)} settings measured in {time.time() - start:.0f} s)")
    out = {"budget_gb": a.budget_gb, "mode": a.mode, "model": {"width": a.width, "depth": a.depth, "heads": a.heads,
                                                                 "img_size": a.size, "patch": a.patch},
           "micro_batch": a.micro, "precision": a.precision, "device": a.device, "results": results}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    if a.plot:
        plot(out, a.plot)
        print(f"wrote {a.plot}")
    return out


def plot(out: dict, path: Path) -> None:
    """Max frames per video vs keep ratio (bars, gain over keep 1 on top) and the step time at that length."""
    from turbo_ds.plot import pyplot, save

    rows = sorted(out["results"], key=lambda r: r["keep_ratio"])
    labels = [f"{r['keep_ratio']:g}" for r in rows]
    base = next((r["max_frames"] for r in rows if r["keep_ratio"] == 1.0), 0)
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    bars = left.bar(labels, [r["max_frames"] for r in rows], color="tab:blue")
    left.bar_label(bars, [f"{r['max_frames']}" + (f" ({r['max_frames'] / base:.1f}x)" if base else "") for r in rows],
                   fontsize=8)
    left.set(xlabel="keep ratio", ylabel="frames", title=f"most frames per video within {out['budget_gb']:g} GB")
    right.plot(labels, [r["step_s"] if r["step_s"] is not None else float("nan") for r in rows], marker="o")
    right.set(xlabel="keep ratio", ylabel="s", title="training step time at that length")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, axis="y")
    m = out["model"]
    fig.suptitle(f"long video, {out['mode']} mode: ViT {m['width']}x{m['depth']} at {m['img_size']} px, patch "
                 f"{m['patch']}, micro-batch {out['micro_batch']}, {out['precision']}, {out['device']}", fontsize=10)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
