"""python -m turbo_ds.plot: runs' metrics.jsonl drawn against step and wall-clock, keep ratios in the legend."""

from __future__ import annotations

import json

import pytest
import yaml

from turbo_ds.plot import eval_metrics, main, read_run

pytestmark = pytest.mark.unit


def fake_run(path, keep: float, steps: int = 4) -> None:
    """A run dir as training writes it: config.yaml and metrics.jsonl (train records + two evals)."""
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump({"turbo": {"keep_ratio": keep, "schedule": "constant"}}))
    records = [{"step": s, "train/loss": 2.0 / s, "train/lr": 1e-3, "train/clips_per_s": 40 * keep,
                "train/tflops": 0.01, "wall_s": s * keep} for s in range(1, steps + 1)]
    records += [{"step": s, "eval/top1": s / steps, "eval/num_clips": 32, "eval/seconds": 0.1 * s, "wall_s": s}
                for s in (steps // 2, steps)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_draws_two_runs_with_their_keep_ratios(tmp_path, capsys):
    fake_run(tmp_path / "turbo", 0.25)
    fake_run(tmp_path / "full", 1.0)
    runs = [read_run(tmp_path / "turbo"), read_run(tmp_path / "full")]
    assert [r.label for r in runs] == ["turbo (keep 0.25)", "full (keep 1)"]
    assert eval_metrics(runs) == ["eval/top1"]  # constants and eval/seconds are not drawn
    assert main([str(tmp_path / "turbo"), str(tmp_path / "full"), "--out", str(tmp_path / "runs.png")]) == 0
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "turbo (keep 0.25) | 4 steps" in out and "last eval/top1 1.0000 (step 4)" in out
    assert "train/loss, train/lr, train/clips_per_s, train/tflops, eval/top1 vs step and vs wall-clock" in out
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    fake_run(tmp_path / "run", 0.25)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # a write cut short by a full disk
    run = read_run(tmp_path / "run")
    assert [r["step"] for r in run.records] == [1, 2, 3, 4, 2, 4]
    assert capsys.readouterr().err == f"warning: {tmp_path / 'run' / 'metrics.jsonl'}: skipped 1 torn line(s) (not whole JSON)\n"
