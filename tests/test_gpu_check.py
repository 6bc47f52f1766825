"""bench/gpu_check.sh's plumbing, on the CPU: every step runs and the report says what it measured."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e


def test_gpu_check_smoke_runs_every_step_and_reports(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    for step in ("env", "demo", "batch", "turbo_speed", "compiled", "throughput", "loader"):
        assert report["status"][step] == "ok", report["status"]
    assert report["env"]["torch"] and report["demo"]["eval_top1"] is not None and report["batch"] >= 1
    assert {r["keep_ratio"] for r in report["turbo_speed"]["results"]} == {1.0, 0.5, 0.25}
    compiled = report["compiled"]
    assert compiled["settings"]["compile"] and {r["keep_ratio"] for r in compiled["results"]} == {1.0, 0.25}
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("gpu_check on cpu, 2 rank(s)") and "bare step at batch" in summary
    assert "turbo_ds compiled keep 1: " in summary and "VideoMAE's step time" in summary
