"""Measuring one setting: a few real training steps in a fresh child process, and their memory need.

Nothing is estimated from formulas: ``measure`` writes the setting's config and a job file,
and starts ``python -m turbo_ds.plan --_measure JOB`` (the command line hands the job to
``_child``, which runs ``run_steps`` and prints the result as one JSON line). The child trains
forward + backward + optimizer step of the task's model on synthetic inputs of the right
shape, in the JSON's precision with fp32 master weights and the JSON's optimizer, as DeepSpeed
runs them. A fresh process per setting means settings never share allocator state:

* CUDA: ``torch.cuda.max_memory_allocated`` (the process is capped at the budget, so an
  out-of-memory error means "does not fit");
* CPU: growth of the peak resident set (VmHWM) from just before the model is built; a
  watchdog stops the child as soon as it passes the budget, so an over-budget setting
  never takes the machine's memory.

The figure is one rank's need without ZeRO partitioning; ``ranks`` subtracts the share of
parameters, gradients and optimizer state that the JSON's ZeRO stage spreads over that many
ranks. Framework overhead outside the training step (CUDA context, DeepSpeed buffers, data
loader workers) is not included: leave some headroom.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from turbo_ds.config import Config, DeepSpeedConfig, load_config, to_dict
from turbo_ds.memory import available_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes
from turbo_ds.tasks import task_type

_GB = 1024**3
_OVER_BUDGET = 3  # exit status of a child stopped by its memory watchdog


@dataclass(frozen=True)
class Setting:
    frames: int
    "frames per video (the task's frames_key: model.num_frames, or long_video.frames)"
    micro: int
    "videos per micro-batch on one rank"
    keep_ratio: float
    "training keep ratio"


@dataclass
class Measurement:
    setting: Setting
    fits: bool
    peak_gb: float | None
    "the rank's need (after --ranks adjustment); None when the child was stopped over the budget"
    step_s: float | None
    "median step time after one warm-up step"
    note: str = ""


def with_setting(cfg: Config, frames: int, keep_ratio: float) -> Config:
    """``cfg`` training ``frames`` per video at a constant ``keep_ratio``, without pretrained weights (no size change)."""
    turbo = dataclasses.replace(cfg.turbo, keep_ratio=keep_ratio, schedule="constant", keep_ratio_end=None,
                                full_token_steps=0)
    cfg = dataclasses.replace(cfg, turbo=turbo, model=dataclasses.replace(cfg.model, pretrained=None))
    return task_type(cfg.task).with_frames(cfg, frames)


def _cpu_meter(limit: list[int]) -> Callable[[], int]:
    """Start measuring CPU memory growth now; returns a function giving the peak growth in bytes.

    The peak resident set is reset to the current one (Linux clear_refs), and a watchdog
    thread ends the process with status 3 once growth passes ``limit[0]`` (which may be raised later).
    """
    if not reset_peak_rss():
        raise OSError("the CPU memory planner needs Linux's /proc/self/clear_refs to reset the peak resident set")
    base = rss_bytes()

    def watch() -> None:
        while True:
            if rss_bytes() - base > limit[0]:
                os._exit(_OVER_BUDGET)
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()
    return lambda: max(peak_rss_bytes() - base, 0)


def _optimizer(params: list, ds: DeepSpeedConfig):
    import torch

    spec = ds.optimizer
    kwargs = {k: v for k, v in spec.get("params", {}).items() if k in ("lr", "betas", "eps", "weight_decay")}
    cls = torch.optim.Adam if spec.get("type", "").lower() == "adam" else torch.optim.AdamW  # others: AdamW-sized
    return cls(params, **kwargs)


def _warm_up(device: str) -> None:
    """One tiny training step, so thread pools and kernel caches exist before memory is measured."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(2, 4, 8, device=device, requires_grad=True)  # (B, N, D)
    F.scaled_dot_product_attention(x, x, x).square().mean().backward()
    torch.optim.AdamW([x]).step()  # the first optimizer step loads ~70 MB of torch modules


def run_steps(cfg: Config, ds: DeepSpeedConfig, setting: Setting, device: str, steps: int,
              limit_bytes: int, ranks: int, num_classes: int) -> dict[str, Any]:
    """Train ``steps`` steps of ``setting`` in this process: the rank's need in bytes (peak memory growth
    less what ZeRO over ``ranks`` ranks takes off) and the median step time.

    ``cfg`` is already ``with_setting(..., setting)`` (``measure`` writes it so). Run in a fresh
    process (``measure`` does): the CPU figure is this process's peak RSS growth. The process
    stops (CPU: exit status 3; CUDA: out-of-memory error) once the need passes ``limit_bytes``.
    """
    import torch

    from turbo_ds.tasks import build_task  # imports are not training memory: load them first

    _warm_up(device)
    dtype, cuda = ds.dtype, device.startswith("cuda")
    limit = [limit_bytes]
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        peak = lambda: torch.cuda.max_memory_allocated(device)  # noqa: E731
    else:
        peak = _cpu_meter(limit)
    torch.manual_seed(0)
    task = build_task(cfg, {"class_names": [f"class{i}" for i in range(num_classes)]})
    params = [p for p in task.model.parameters() if p.requires_grad]
    saving = ds.zero_saving_bytes(sum(p.numel() for p in params), ranks)
    limit[0] += saving
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit[0] / total), device)
    model = task.model.to(device).train()
    # DeepSpeed's bf16/fp16 training: low-precision weights and gradients, fp32 master weights and optimizer.
    master = [p.detach().float().clone().requires_grad_() for p in params] if dtype != torch.float32 else params
    model.to(dtype)
    opt = _optimizer(master, ds)
    batch = task.synthetic_batch(setting.micro, device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = task.loss(model, batch, dtype)
        loss.backward()
        if master is not params:
            for m, p in zip(master, params):
                m.grad, p.grad = p.grad.float(), None
        opt.step()
        opt.zero_grad(set_to_none=True)
        if master is not params:
            with torch.no_grad():
                for m, p in zip(master, params):
                    p.copy_(m)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        assert torch.isfinite(loss), f"non-finite loss {loss.item()} in a planning step"
    return {"need_bytes": peak() - saving, "step_s": statistics.median(times[1:] or times)}


def measure(cfg: Config, ds: DeepSpeedConfig, setting: Setting, budget_gb: float, device: str = "cpu",
            steps: int = 3, ranks: int = 1, num_classes: int = 10, limit_gb: float | None = None) -> Measurement:
    """Measure ``setting`` in a fresh subprocess; it fits when the rank's need is at most ``budget_gb``.

    The child is stopped once it needs more than ``limit_gb`` (default: just over the budget),
    and the measurement then says only that it does not fit.
    """
    limit = int((limit_gb or budget_gb * 1.02) * _GB) + 64 * 2**20
    device, visible = child_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        job, config = Path(tmp) / "job.json", Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(to_dict(with_setting(cfg, setting.frames, setting.keep_ratio)), sort_keys=False))
        job.write_text(json.dumps({"config": str(config), "ds_config": ds.raw, "setting": dataclasses.asdict(setting),
                                   "device": device, "steps": steps, "limit_bytes": limit, "ranks": ranks,
                                   "num_classes": num_classes}))
        # The repository root (turbo_ds/plan/measure.py -> parents[2]): the child imports this copy of turbo_ds.
        env = {**os.environ, **visible, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                                       os.environ.get("PYTHONPATH", "")])}
        # The command line's hidden --_measure hands the job file to _child.
        proc = subprocess.run([sys.executable, "-m", "turbo_ds.plan", "--_measure", str(job)], capture_output=True,
                              text=True, env=env)
    if proc.returncode == _OVER_BUDGET or "OutOfMemoryError" in proc.stderr:
        return Measurement(setting, False, None, None, f"over {limit / _GB:.2f} GB")
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {setting} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    need = out["need_bytes"]
    return Measurement(setting, need <= budget_gb * _GB, need / _GB, out["step_s"])


def child_device(device: str) -> tuple[str, dict[str, str]]:
    """The device a measuring child uses for the parent's ``device``, and the environment that shows it.

    A child on ``cuda:k`` sees only that GPU (as cuda:0): it creates no context on the node's other
    GPUs, which belong to other ranks, and its memory cap applies to the right one.
    """
    if not device.startswith("cuda"):
        return device, {}
    index = int(device.partition(":")[2] or 0)
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return "cuda:0", {"CUDA_VISIBLE_DEVICES": visible[index] if index < len(visible) else str(index)}


def _child(job_path: str) -> None:
    """The child's side of ``measure``: run the job file's setting here and print the result as one JSON line."""
    job = json.loads(Path(job_path).read_text())
    result = run_steps(load_config(job["config"]), DeepSpeedConfig(job["ds_config"]), Setting(**job["setting"]), job["device"],
                       job["steps"], job["limit_bytes"], job["ranks"], job["num_classes"])
    print(json.dumps(result))


def spare_gb(device: str) -> float:
    """The most a measurement may take to report a need: 70% of available RAM (CPU), the whole GPU (CUDA)."""
    if device.startswith("cuda"):
        return 1e6  # the child's memory fraction is capped at 1
    available = available_bytes()
    return 4.0 if available is None else 0.7 * available / _GB


def default_device() -> str:
    """Where measurements run when no device is named: cuda when available, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
