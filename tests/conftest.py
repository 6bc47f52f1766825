"""Shared fixtures: a tiny real demo dataset and a runner for the real training entry point."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


def free_port() -> int:
    """A free TCP port, so concurrent launches (tests, a user's run) do not collide on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(args: list[str], ranks: int | None = 2, ds_config: str = "ds_configs/zero0_bf16.json",
              config: str = "configs/demo_action_cls.yaml", timeout: int = 600) -> subprocess.CompletedProcess:
    """Run turbo_ds/train.py through the real deepspeed launcher (``ranks``) or directly (None)."""
    launcher = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port())] if ranks else [sys.executable]
    cmd = [*launcher, "turbo_ds/train.py", "--ds_config", ds_config, "--config", config, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
