"""bench/gpu_check.sh's plumbing, on the CPU: every step runs and the report says what it measured; the loader
step sizes its workers to the shards; a rerun into the same folder measures afresh; GPUs that torch cannot use
stop the check (and train.py) in one line."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO, tiny_overrides

pytestmark = pytest.mark.e2e


def gpu_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One full --smoke run: (its output folder, the finished process)."""
    out = tmp_path_factory.mktemp("check")
    return out, gpu_check("--smoke", str(out))


@pytest.fixture
def gpus_torch_cannot_use(tmp_path) -> dict[str, str]:
    """The environment of a GPU node with a CPU build of torch: a stand-in nvidia-smi on PATH listing 8 GPUs,
    and none of the suite's settings that ask for the CPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo \"GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)\"; done\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES")}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}"}


def test_gpu_check_smoke_runs_every_step_and_reports(smoke):
    out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    for step in ("env", "demo", "compile_train", "batch", "turbo_speed", "compiled", "throughput", "loader"):
        assert report["status"][step] == "ok", report["status"]
    assert report["env"]["torch"] and report["env"]["devices"].startswith("cpu (asked for)")
    assert report["demo"]["eval_top1"] is not None and report["batch"] >= 1
    assert "device: cpu (asked for)" in (out / "demo_run" / "train.log").read_text()  # train.py names its device
    compiled_run = report["compile_train"]  # model.compile through train.py: ZeRO-2, accumulation 2, resumed
    assert compiled_run["resumed"] and compiled_run["completed"] and sorted(compiled_run["losses"]) == ["2", "4"]
    assert json.loads((out / "compile_zero2_accum2.json").read_text())["gradient_accumulation_steps"] == 2
    assert {r["keep_ratio"] for r in report["turbo_speed"]["results"]} == {1.0, 0.5, 0.25}
    compiled = report["compiled"]
    assert compiled["settings"]["compile"] and compiled["settings"]["trainer_precision"]
    assert {r["keep_ratio"] for r in compiled["results"]} == {1.0, 0.25}
    loader = report["loader"]  # more workers asked for than the real-content clips have shards
    assert loader["workers_requested"] == 4 > loader["shard_count"] == loader["workers"] == 1
    assert loader["clip_hw"][0] == 256 and loader["sampling"] == "dense"  # transcoded as build_shards stores them
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("gpu_check on cpu, 2 rank(s)") and "bare step at batch" in summary
    assert "turbo_ds compiled keep 1: " in summary and "VideoMAE's step time" in summary
    assert "loader: " in summary and "(4 asked, 1 shard(s))" in summary


def test_a_rerun_into_the_same_folder_measures_afresh(smoke):
    out, first = smoke
    assert first.returncode == 0, first.stderr[-3000:]
    before = (out / "demo_run" / "metrics.jsonl").read_text()
    proc = gpu_check("--smoke", "--only", "demo", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    demo_log = (out / "demo.log").read_text()
    assert "starting a new run" in demo_log and "already finished" not in demo_log  # not the COMPLETED run
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["status"]["demo"] == "ok" and report["status"]["loader"] == "skipped (not in --only)"
    assert report["turbo_speed"] is None and report["loader"] is None  # nothing of the first run reported
    assert (out / "demo_run" / "metrics.jsonl").read_text() != before


def test_gpus_that_torch_cannot_use_stop_the_check_in_one_line(gpus_torch_cannot_use, tmp_path):
    proc = gpu_check(str(tmp_path / "check"), env=gpus_torch_cannot_use)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert lines[0].startswith("gpu_check: nvidia-smi lists 8 GPU(s), but torch ") and "DS_ACCELERATOR=cpu" in lines[0]
    assert "cannot use them (a CPU-only build: torch.version.cuda is None)" in lines[0]
    assert not (tmp_path / "check" / "demo.log").exists()  # the first step stopped it


def test_train_py_refuses_to_train_on_the_cpu_of_a_gpu_node(gpus_torch_cannot_use, tiny_demo, tmp_path):
    def train(run: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        sets = tiny_overrides(tiny_demo, tmp_path / run, "train.steps=2", "train.eval_every=2", "train.ckpt_every=2")
        return subprocess.run(["python", "turbo_ds/train.py", "--ds_config", "ds_configs/zero2_bf16.json", "--config",
                               "configs/demo_action_cls.yaml", *sets], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env=env)

    proc = train("run", gpus_torch_cannot_use)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "nvidia-smi lists 8 GPU(s), but torch" in errors[0] and not (tmp_path / "run").exists()
    asked = train("cpu", {**gpus_torch_cannot_use, "DS_ACCELERATOR": "cpu"})  # on purpose: it trains, and says so
    assert asked.returncode == 0 and "device: cpu (asked for)" in asked.stdout, asked.stderr[-3000:]
