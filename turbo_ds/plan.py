"""Memory planner: which frames per video, micro-batch and keep ratio fit in a memory budget.

    python -m turbo_ds.plan --config configs/breakfast_vitb.yaml --ds_config ds_configs/zero2_bf16.json --memory-gb 40

Nothing is estimated from formulas: every setting is measured by a few real training
steps (forward + backward + optimizer step of the task's model on synthetic inputs of
the right shape, in the JSON's precision with fp32 master weights and the JSON's
optimizer, as DeepSpeed runs them) in a fresh subprocess, so settings never share
allocator state:

* CUDA: ``torch.cuda.max_memory_allocated`` (the process is capped at the budget, so an
  out-of-memory error means "does not fit");
* CPU: growth of the peak resident set (VmHWM) from just before the model is built; a
  watchdog stops the child as soon as it passes the budget, so an over-budget setting
  never takes the machine's memory.

The figure is one rank's need without ZeRO partitioning; ``--ranks N`` subtracts the
share of parameters, gradients and optimizer state that the JSON's ZeRO stage spreads
over N ranks. Framework overhead outside the training step (CUDA context, DeepSpeed
buffers, data loader workers) is not included: leave some headroom.

Memory grows with frames, micro-batch and keep ratio (nearly affinely in the first two),
so the largest fitting value is searched for: grow where a line through the needs measured
so far meets the budget, then narrow the bracket the same way, bisecting when that stalls
(about 4-6 measurements per search). ``pick_keep_ratio`` serves ``turbo.keep_ratio: auto``.
"""

from __future__ import annotations

import argparse
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

from turbo_ds.config import Config, ConfigError, DeepSpeedConfig, load_config, load_ds_config, plan_batches, to_dict
from turbo_ds.data.source import ShardSource
from turbo_ds.memory import available_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes

KEEP_RATIOS = (1.0, 0.5, 0.25, 0.125)
AUTO_KEEP_RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.1875, 0.125)  # turbo.keep_ratio: auto picks among these
_GB = 1024**3
_OVER_BUDGET = 3  # exit status of a child stopped by its memory watchdog


class PlanError(ConfigError):
    """No setting fits, or the config cannot be planned; the message names the smallest setting's need."""


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


# ----------------------------------------------------------------- one setting


def with_setting(cfg: Config, frames: int, keep_ratio: float) -> Config:
    """``cfg`` training ``frames`` per video at a constant ``keep_ratio``, without pretrained weights (no size change)."""
    from turbo_ds.tasks import task_type

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
        env = {**os.environ, **visible, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                       os.environ.get("PYTHONPATH", "")])}
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
    job = json.loads(Path(job_path).read_text())
    result = run_steps(load_config(job["config"]), DeepSpeedConfig(job["ds_config"]), Setting(**job["setting"]), job["device"],
                       job["steps"], job["limit_bytes"], job["ranks"], job["num_classes"])
    print(json.dumps(result))


# ---------------------------------------------------------------------- search


class Planner:
    """Measures settings of one config against one budget, each at most once.

    ``measure_fn`` (signature of ``measure``) is what measures one setting; tests pass a model of memory.
    """

    def __init__(self, cfg: Config, ds: DeepSpeedConfig, budget_gb: float, device: str = "cpu", steps: int = 3,
                 ranks: int = 1, num_classes: int = 10, log: Callable[[str], None] | None = None,
                 measure_fn: Callable[..., Measurement] | None = None):
        from turbo_ds.tasks import task_type

        if not task_type(cfg.task).plannable:
            raise PlanError(f"task={cfg.task}: the memory planner cannot measure this task (it measures tasks "
                            "trained on labelled clips)")
        self.cfg, self.ds, self.budget_gb = cfg, ds, budget_gb
        self.device, self.steps, self.ranks, self.num_classes = device, steps, ranks, num_classes
        self.log = log or (lambda msg: None)
        self.measure_fn = measure_fn or measure
        self.results: dict[Setting, Measurement] = {}

    def _measure(self, setting: Setting, limit_gb: float | None = None) -> Measurement:
        return self.measure_fn(self.cfg, self.ds, setting, self.budget_gb, self.device, self.steps, self.ranks,
                               self.num_classes, limit_gb)

    def __call__(self, setting: Setting) -> Measurement:
        if setting not in self.results:
            m = self._measure(setting)
            self.log(f"  {setting.frames} frames x micro {setting.micro} @ keep {setting.keep_ratio:g}: "
                     + (f"{m.peak_gb:.2f} GB, {m.step_s:.2f} s/step" if m.peak_gb is not None else m.note)
                     + ("" if m.fits else "  (does not fit)"))
            self.results[setting] = m
        return self.results[setting]

    def largest(self, make: Callable[[int], Setting], unit: int, cap: int) -> Measurement | None:
        """The fitting measurement of the largest multiple of ``unit`` up to ``cap``, or None.

        Memory is close to affine in frames and micro-batch, so the next size tried is where a
        line through the measured needs meets the budget (extrapolating at most 4x); when that
        does not at least halve the open interval, the next try bisects it.
        """
        top = cap // unit
        lo, hi = 0, top + 1  # multiples of unit: lo fits (0: none yet), hi does not (top + 1: not tried)
        needs: dict[int, float | None] = {}
        k, bisect = 1, False
        while hi - lo > 1:
            m = self(make(k * unit))
            needs[k] = m.peak_gb
            width = hi - lo
            lo, hi = (k, hi) if m.fits else (lo, k)
            bisect = hi <= top and not bisect and 2 * (hi - lo) > width  # bracketed, slow progress: bisect next
            k = (lo + hi) // 2 if bisect else self._guess(lo, hi, needs, top)
        return self(make(lo * unit)) if lo else None

    def _guess(self, lo: int, hi: int, needs: dict[int, float | None], top: int) -> int:
        """Where an affine fit of the measured needs reaches the budget, inside (lo, hi)."""
        if lo == 0:
            return hi // 2
        fits = sorted(k for k in needs if k <= lo and needs[k] is not None)
        if hi <= top and needs.get(hi) is not None:
            (k0, n0), (k1, n1) = (lo, needs[lo]), (hi, needs[hi])
        elif len(fits) >= 2:  # extrapolate from a baseline of at least half of lo: neighbours' noise can flip the slope
            k0 = max((k for k in fits if k <= lo // 2), default=fits[0])
            (k0, n0), (k1, n1) = (k0, needs[k0]), (lo, needs[lo])
        else:
            return min(2 * lo, hi - 1, top)  # one point: double
        slope = (n1 - n0) / (k1 - k0)
        guess = lo + int((self.budget_gb - needs[lo]) / slope) if slope > 0 else 4 * lo
        return max(lo + 1, min(guess, 4 * lo, hi - 1, top))

    def max_frames(self, keep_ratio: float, micro: int, unit: int, cap: int) -> Measurement | None:
        return self.largest(lambda f: Setting(f, micro, keep_ratio), unit, cap)

    def max_micro(self, keep_ratio: float, frames: int, cap: int) -> Measurement | None:
        return self.largest(lambda b: Setting(frames, b, keep_ratio), 1, cap)

    def best_keep_ratio(self, frames: int, micro: int, ratios: tuple[float, ...] = AUTO_KEEP_RATIOS) -> Measurement:
        """The fitting measurement of the largest ratio in ``ratios`` (bisection: memory grows with the ratio)."""
        ratios = sorted(ratios, reverse=True)
        lo, hi = -1, len(ratios)  # ratios[hi] fits, ratios[lo] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self(Setting(frames, micro, ratios[mid])).fits:
                hi = mid
            else:
                lo = mid
        if hi == len(ratios):
            raise self.nothing_fits(Setting(frames, micro, ratios[-1]))
        return self(Setting(frames, micro, ratios[hi]))

    def nothing_fits(self, smallest: Setting) -> PlanError:
        """The error for a budget that ``smallest`` (the least demanding setting tried) exceeds, with its need."""
        m, spare = self(smallest), _spare_gb(self.device)
        if m.peak_gb is None:  # stopped at the budget: measure its need, up to what the machine can spare
            m = self._measure(smallest, limit_gb=spare)
        need = f"needs {m.peak_gb:.2f} GB" if m.peak_gb is not None else f"needs more than {spare:.1f} GB"
        return PlanError(f"memory budget {self.budget_gb:g} GB: nothing fits; the smallest setting ({smallest.frames} "
                         f"frames x micro-batch {smallest.micro} at keep ratio {smallest.keep_ratio:g}) {need}. Raise "
                         "the budget, or lower the frames or the micro-batch (train_micro_batch_size_per_gpu, with more "
                         "gradient_accumulation_steps), or set model.activation_checkpointing=true")


def _spare_gb(device: str) -> float:
    """The most a measurement may take to report a need: 70% of available RAM (CPU), the whole GPU (CUDA)."""
    if device.startswith("cuda"):
        return 1e6  # the child's memory fraction is capped at 1
    available = available_bytes()
    return 4.0 if available is None else 0.7 * available / _GB


def frame_unit(cfg: Config) -> int:
    """Frames grow in steps of model.num_frames (segments mode needs whole segments)."""
    return cfg.model.num_frames


def pick_keep_ratio(cfg: Config, ds: DeepSpeedConfig, budget_gb: float, device: str | None = None,
                    ratios: tuple[float, ...] = AUTO_KEEP_RATIOS, ranks: int = 1,
                    log: Callable[[str], None] | None = None, measure_fn: Callable[..., Measurement] | None = None
                    ) -> float:
    """The largest keep ratio in ``ratios`` whose training step fits ``budget_gb`` at the config's frames and
    the JSON's micro-batch (for ``turbo.keep_ratio: auto``); PlanError when even the smallest does not fit."""
    from turbo_ds.tasks import task_type

    micro = plan_batches(cfg, ds, ranks).micro
    planner = Planner(cfg, ds, budget_gb, device or _default_device(), ranks=ranks, log=log, measure_fn=measure_fn)
    return planner.best_keep_ratio(task_type(cfg.task).frames(cfg), micro, ratios).setting.keep_ratio


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------- CLI


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
    from turbo_ds.tasks import task_type

    args = parse_args(argv)
    if args._measure:
        _child(args._measure)
        return 0
    try:
        cfg = load_config(args.config, args.set)
        ds = load_ds_config(args.ds_config)
        if args.ranks < 1 or args.memory_gb <= 0:
            raise PlanError("--ranks must be >= 1 and --memory-gb > 0")
        micro = plan_batches(cfg, ds, args.ranks).micro
        device = args.device or _default_device()
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


if __name__ == "__main__":
    sys.exit(main())
