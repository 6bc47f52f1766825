"""Shared fixtures: a tiny real demo dataset and a runner for the real training entry point.

Every test belongs to exactly one layer (``pytest -m unit|parity|e2e|slurm``, see pyproject.toml),
set for a whole module by ``pytestmark`` or, in a module that mixes layers, on each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from turbo_ds.engine.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
# The suite tests the CPU build of every path, also on a GPU host (bench/gpu_check.sh covers the GPU):
# pin DeepSpeed's CPU accelerator and hide GPUs from this process and every process it starts.
os.environ.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
LAYERS = ("unit", "parity", "e2e", "slurm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is in exactly one layer, so ``-m`` selections partition the suite."""
    for item in items:
        layers = [m.name for m in item.iter_markers() if m.name in LAYERS]
        if not layers:
            raise pytest.UsageError(f"{item.nodeid}: mark it with one layer: {', '.join(LAYERS)}")
        if len(set(layers)) > 1:
            raise pytest.UsageError(f"{item.nodeid}: in more than one layer ({', '.join(sorted(set(layers)))})")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """64 train + 32 val real mp4 clips in 4 + 2 shards, generated once per session."""
    out = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, "data_prep/make_demo_data.py", "--out", str(out), "--train", "64", "--val", "32",
                    "--shard-size", "16"], cwd=REPO, check=True, capture_output=True)
    return out


def tiny_overrides(demo: Path, run_dir: Path, *extra: str) -> list[str]:
    sets = [f"run_dir={run_dir}", f"data.train={demo}/train", f"data.val={demo}/val", "data.generate_demo=false",
            "train.steps=4", "train.warmup_steps=1", "train.log_every=2", "train.eval_every=4", "train.ckpt_every=4",
            "eval.batch_size=16", "data.shuffle_buffer=8", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def run_train(args: list[str], ranks: int | None = 2, ds_config: str = "ds_configs/zero0_bf16.json",
              config: str = "configs/demo_action_cls.yaml", timeout: int = 600) -> subprocess.CompletedProcess:
    """Run turbo_ds/train.py through the real deepspeed launcher (``ranks``) or directly (None)."""
    launcher = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port())] if ranks else [sys.executable]
    cmd = [*launcher, "turbo_ds/train.py", "--ds_config", ds_config, "--config", config, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def resumed(stream, positions: dict, layout: dict | None = None):
    """``stream`` resumed at ``positions`` (stream name -> position), as a checkpoint resumes it."""
    stream.load_state_dict({"data_position": positions, "data_layout": layout})
    return stream


def eval_read(stream, workers: int = 0) -> tuple[list[dict], list[dict]]:
    """An evaluation stream read whole: its batches, and each reader's closing record (where it stands)."""
    from turbo_ds.data.streams import make_loader

    items = list(make_loader(stream, workers))
    return [b for b in items if not b.get("end")], [b for b in items if b.get("end")]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
