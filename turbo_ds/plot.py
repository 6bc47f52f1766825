"""Plot runs from their metrics.jsonl: loss, learning rate, clips/s, TFLOP/s and every eval metric against step and
against training wall-clock, several runs overlaid with their keep ratios in the legend.

    python -m turbo_ds.plot runs/turbo runs/full --out runs.png

Eval metrics are every numeric ``eval/*`` value that changes somewhere (constants such as
``eval/num_clips`` or ``eval/chance`` are left out, and so is ``eval/seconds``). Wall-clock is
``wall_s``: training time of the run across resumed invocations (evaluations and checkpoints
included). It also prints one summary line per run.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from turbo_ds.fileio import read_json_lines

TRAIN_METRICS = ("train/loss", "train/lr", "train/clips_per_s", "train/tflops")
NOT_PLOTTED = ("eval/seconds",)


@dataclass
class Run:
    path: Path
    label: str
    records: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str, x: str) -> tuple[list[float], list[float]]:
        """(x values, ``key`` values) of the records holding both."""
        points = [(r[x], r[key]) for r in self.records if isinstance(r.get(key), (int, float)) and x in r]
        return [p[0] / (60 if x == "wall_s" else 1) for p in points], [p[1] for p in points]


def keep_label(config: dict[str, Any]) -> str:
    """``keep 0.25`` (or ``keep 0.25->1 linear``, ``+N full-token steps``) from a run's resolved config."""
    turbo = config.get("turbo", {})
    ratio = turbo.get("keep_ratio", "?")
    label = f"keep {ratio:g}" if isinstance(ratio, (int, float)) else f"keep {ratio}"
    if turbo.get("schedule", "constant") != "constant":
        label += f"->{turbo.get('keep_ratio_end'):g} {turbo['schedule']}"
    if turbo.get("full_token_steps"):
        label += f" +{turbo['full_token_steps']} full-token steps"
    return label


def read_run(path: Path) -> Run:
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl; give run directories (run_dir of a training run)")
    config_file = path / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    records, torn = read_json_lines(metrics)
    if torn:  # a write cut short (full disk, crash): the rest still plots; the next resume drops it from the file
        print(f"warning: {metrics}: skipped {torn} torn line(s) (not whole JSON)", file=sys.stderr)
    return Run(path, f"{path.name} ({keep_label(config)})" if config else path.name, [r for _, r in records])


def eval_metrics(runs: list[Run]) -> list[str]:
    """Numeric eval/* keys whose value changes somewhere, in first-seen order."""
    values: dict[str, set] = {}
    for run in runs:
        for r in run.records:
            for k, v in r.items():
                if k.startswith("eval/") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    values.setdefault(k, set()).add(v)
    return [k for k, seen in values.items() if len(seen) > 1 and k not in NOT_PLOTTED]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: str | Path) -> None:
    """Write the figure as PNG atomically (a reader never sees half an image), then free it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)
    pyplot().close(fig)


def plot_runs(runs: list[Run], out: Path) -> list[str]:
    """Draw the runs into ``out``; returns the metrics drawn (one row each: vs step, vs wall-clock)."""
    plt = pyplot()
    keys = [k for k in TRAIN_METRICS if any(run.series(k, "step")[0] for run in runs)] + eval_metrics(runs)
    if not keys:
        raise ValueError("no train/ or eval/ metrics in these runs' metrics.jsonl yet")
    fig, axes = plt.subplots(len(keys), 2, figsize=(12, 2.4 * len(keys) + 0.9), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, key in zip(axes, keys):
        for i, run in enumerate(runs):
            for ax, x in zip(row, ("step", "wall_s")):
                xs, ys = run.series(key, x)
                style = {"marker": "o", "markersize": 4} if key.startswith("eval/") else {}
                ax.plot(xs, ys, color=colors[i % len(colors)], label=run.label, **style)
        for ax, x in zip(row, ("step", "wall-clock (min)")):
            ax.set_title(key, fontsize=10, loc="left")
            ax.set_xlabel(x, fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
        if key == "train/lr":
            for ax in row:
                ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    save(fig, out)
    return keys


def summary(run: Run) -> str:
    train = [r for r in run.records if "train/loss" in r]
    evals = [r for r in run.records if any(k.startswith("eval/") for k in r)]
    parts = [run.label, f"{run.records[-1]['step'] if run.records else 0} steps"]
    if run.records and "wall_s" in run.records[-1]:
        parts.append(f"{run.records[-1]['wall_s'] / 60:.1f} min")
    if train:
        parts.append(f"last loss {train[-1]['train/loss']:.4f}")
    for key in ("eval/top1", "eval/t2v_r1"):
        if evals and key in evals[-1]:
            parts.append(f"last {key} {evals[-1][key]:.4f} (step {evals[-1]['step']})")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.jsonl)")
    p.add_argument("--out", type=Path, default=Path("runs.png"), help="PNG to write (default: runs.png)")
    args = p.parse_args(argv)
    try:
        runs = [read_run(path) for path in args.runs]
        keys = plot_runs(runs, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot error: {e}", file=sys.stderr)
        return 2
    for run in runs:
        print(summary(run))
    print(f"wrote {args.out}: {', '.join(keys)} vs step and vs wall-clock, {len(runs)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
