#!/usr/bin/env python
"""Training clips/s three ways, for one model and batch: what the trainer keeps of the model's speed.

    python bench/train_throughput.py --json out.json                   # demo dims + ViT-S/16, keep 1.0 and 0.25, CPU
    python bench/train_throughput.py --device cuda --json out.json     # on a GPU
    python bench/train_throughput.py --quick --json out.json           # tiny settings: checks the plumbing
    python bench/train_throughput.py --dims vits16 --compile --json out.json
    python bench/train_throughput.py --count-syncs --json syncs.json    # host syncs per step, by call site

For each model size (``demo``: configs/demo_action_cls.yaml's model, 16 x 64^2, 512 tokens;
``vits16``: ViT-S/16 at 16 x 224^2, 1568 tokens) and keep ratio, the same task, batch and dtype:

  bare_clips_per_s               the task's loss, backward and the optimizer step in the trainer's precision
                                 setup without DeepSpeed (bench/mixed_precision.py: weights in the JSON's dtype,
                                 fp32 master weights, the JSON's gradient clipping and AdamW), on one random
                                 batch already on the device: the model's bound (median step, one fresh
                                 process per model size)
  engine_clips_per_s             the same batch through DeepSpeed's engine alone (one rank, the JSON's
                                 optimizer, precision and ZeRO stage), no trainer: DeepSpeed's share
  trainer_synthetic_clips_per_s  turbo_ds/train.py with data.repeat_batch=true: the real DeepSpeed engine,
                                 trainer loop and logging on the loader's first batch repeated from memory
  trainer_clips_per_s            turbo_ds/train.py on real shards: everything (decoding in --workers workers)

Trainer figures are the trainer's own ``train/clips_per_s`` (metrics.jsonl) over the log windows after
the first (warm-up) one; each (size, keep ratio, data) is one fresh train.py run of one rank.
efficiency = trainer / bare; the Turbo speed-up is keep 0.25 over keep 1.0 in each of the three ways.
Shards: demo clips rendered once into --data (64 px, 16 frames for demo; 256 px, 32 frames for vits16,
the short side build_shards.py gives) unless --shards-demo / --shards-vits16 name a dataset folder.

--count-syncs counts instead what makes the host wait for the device in each optimizer step, by call
site (works on a CPU: reads of tensor values, DeepSpeed's synchronize calls). On a GPU some of them read
CPU tensors and do not wait (torch AdamW's step counters).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from bench.mixed_precision import MasterWeightAdamW  # noqa: E402
from turbo_ds.engine.distributed import free_port  # noqa: E402

RECIPE = "configs/demo_action_cls.yaml"
# model.* overrides of each model size (the demo recipe's model is "demo")
DIMS = {
    "demo": {},
    "vits16": {"num_frames": 16, "img_size": 224, "patch_size": 16, "tubelet_size": 2, "width": 384, "depth": 12,
               "heads": 6},
}
# (frames, size) of the generated clips per model size: the crop comes from a larger frame, as in real data
CLIPS = {"demo": (16, 64), "vits16": (32, 256)}
CPU_ENV = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}  # DeepSpeed's CPU accelerator, even on a GPU host


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="write {'results': [...]} here")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dims", nargs="+", choices=list(DIMS), default=list(DIMS))
    p.add_argument("--keep-ratios", nargs="+", type=float, help="default: 1.0 0.25 (0.25 with --quick)")
    p.add_argument("--batch-demo", type=int, help="micro-batch at demo dims (default: 16 on cpu, 64 on cuda)")
    p.add_argument("--batch-vits16", type=int, help="micro-batch at vits16 dims (default: 2 on cpu, 32 on cuda)")
    p.add_argument("--workers", type=int, help="data.num_workers of the real-shard runs (default: cores - 1, at "
                                                "most 8, at least 1)")
    p.add_argument("--ds-config", default="ds_configs/zero2_bf16.json",
                   help="DeepSpeed JSON (its micro-batch is replaced by --batch-*); its dtype is the bare step's too")
    p.add_argument("--window", type=int, help="steps per log window (default: 5 cpu / 10 cuda; 2 with --quick)")
    p.add_argument("--windows", type=int, help="measured windows after the warm-up one (default 3; 1 with --quick)")
    p.add_argument("--compile", action="store_true", help="model.compile: true (torch.compile of the encoder blocks)")
    p.add_argument("--shards-demo", type=Path, help="a dataset folder for the demo-dims real-shard runs")
    p.add_argument("--shards-vits16", type=Path, help="a dataset folder for the vits16 real-shard runs")
    p.add_argument("--data", type=Path, help="where generated shards are kept (default: next to --json)")
    p.add_argument("--quick", action="store_true", help="tiny settings (demo dims at 32 px, batch 4, a few steps, keep "
                                                        "0.25): checks the plumbing in seconds, figures mean nothing")
    p.add_argument("--count-syncs", action="store_true",
                   help="only count what makes the host wait for the device per step (value reads of tensors, "
                        "DeepSpeed's synchronize calls) by call site, in a short demo-dims run; works on a CPU")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: the bare step of one model size, in this process
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    a.window = a.window or (2 if a.quick else 10 if cuda else 5)
    a.windows = a.windows or (1 if a.quick else 3)
    a.batch = {"demo": a.batch_demo or (4 if a.quick else 64 if cuda else 16),
               "vits16": a.batch_vits16 or (32 if cuda else 2)}
    a.workers = a.workers if a.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    a.data = a.data or a.json.resolve().parent / "train_throughput_data"
    a.keep_ratios = a.keep_ratios or ([0.25] if a.quick else [1.0, 0.25])
    if a.quick:
        a.dims = ["demo"]
    return a


def model_sets(dims: str, quick: bool) -> dict[str, object]:
    sets = dict(DIMS[dims])
    if quick:  # a smaller demo model: 4 frames of 32^2 (32 tokens)
        sets.update(num_frames=4, img_size=32)
    return {f"model.{k}": v for k, v in sets.items()}


def compile_set(a: argparse.Namespace) -> dict[str, object]:
    return {"model.compile": True} if a.compile else {}


# ------------------------------------------------------------------ data


def shards(a: argparse.Namespace, dims: str) -> tuple[Path, Path]:
    """(train, val) dataset folders of ``dims``: given, or demo clips generated once into --data."""
    from turbo_ds.data.shards import MANIFEST
    from turbo_ds.prep.demo import DemoSettings, generate_demo

    frames, size = CLIPS[dims]
    if a.quick:
        frames, size = 8, 40
    out = a.data / f"{dims}{'_quick' if a.quick else ''}"
    if not (out / "val" / MANIFEST).is_file() or not (out / "train" / MANIFEST).is_file():
        # enough shards for --workers loader workers; a small val set (train.py evaluates once, at the end)
        train = 32 if a.quick else max(128, 16 * a.workers)
        generate_demo(out, train, 16, DemoSettings(frames=frames, size=size), shard_size=8 if a.quick else 16,
                      workers=max(1, min(8, os.cpu_count() or 1)))
    given = a.shards_demo if dims == "demo" else a.shards_vits16
    return (given or out / "train"), out / "val"


# ------------------------------------------------------------------ the bare step


def ds_json(dims: str, a: argparse.Namespace) -> dict[str, object]:
    """--ds-config with the micro-batch of ``dims`` (--batch-*), for the bare child and the trainer runs alike."""
    return {**json.loads((REPO / a.ds_config).read_text()), "train_micro_batch_size_per_gpu": a.batch[dims]}


def config(dims: str, keep: float, a: argparse.Namespace, extra: dict[str, object] | None = None):
    from turbo_ds.config import load_config

    sets = {**model_sets(dims, a.quick), "turbo.keep_ratio": keep, **compile_set(a), **(extra or {})}
    return load_config(str(REPO / RECIPE), [f"{k}={v}" for k, v in sets.items()])


def bare(dims: str, a: argparse.Namespace) -> dict[float, dict[str, float]]:
    """Clips/s at each keep ratio of the bare step and of DeepSpeed's engine alone (this process)."""
    import deepspeed
    import torch

    from turbo_ds.config import BatchPlan, DeepSpeedConfig
    from turbo_ds.data.shards import read_manifest
    from turbo_ds.engine.optim import param_groups
    from turbo_ds.tasks import build_task

    ds = DeepSpeedConfig(ds_json(dims, a))
    plan = BatchPlan(a.batch[dims], ds.accumulation, 1)
    device, dtype = torch.device(a.device), ds.dtype
    train, _ = shards(a, dims)
    cfg = config(dims, a.keep_ratios[0], a, {"data.train": train, "data.generate_demo": False})
    torch.manual_seed(0)
    task = build_task(cfg, read_manifest(train))
    model = task.model.to(device=device, dtype=dtype).train()
    # The trainer's precision setup (bench/mixed_precision.py): the JSON's dtype for the weights, fp32 masters,
    # its gradient clipping, its AdamW settings.
    params = ds.optimizer["params"]
    opt = MasterWeightAdamW(model.parameters(), lr=ds.peak_lr(plan), betas=tuple(params.get("betas", (0.9, 0.999))),
                            weight_decay=params.get("weight_decay", 0.0), clip=ds.raw.get("gradient_clipping", 0.0))
    batch = task.synthetic_batch(a.batch[dims], device)  # normalised float pixels, as the trainer's to_device gives
    selectors = [m for m in model.modules() if hasattr(m, "set_keep_ratio")]

    def rates(step, clips: int) -> dict[float, dict[str, float]]:
        """Median clips/s and CPU ms per clip of ``step()`` (``clips`` clips a call) at each keep ratio, after a
        warm-up window."""
        out = {}
        for keep in a.keep_ratios:
            for s in selectors:
                s.set_keep_ratio(keep)
            times, cpu = [], 0.0
            for i in range(a.window * (1 + a.windows)):
                torch.manual_seed(i)
                usage, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= a.window:  # the first window warms up (allocator, thread pools, compilation)
                    times.append(time.perf_counter() - t0)
                    end = resource.getrusage(resource.RUSAGE_SELF)
                    cpu += end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
            out[keep] = {"clips_per_s": clips / statistics.median(times),
                         "cpu_ms_per_clip": cpu * 1e3 / (len(times) * clips)}
        return out

    def bare_step() -> None:
        opt.zero_grad()
        task.loss(model, batch, dtype).backward()
        opt.step()

    bare_rates = rates(bare_step, a.batch[dims])
    # The same model, batch and JSON in DeepSpeed's engine (one rank; run_bare sets the rendezvous), without
    # the trainer: the engine's share of what the trainer loses to the bare step.
    deepspeed.init_distributed("nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, ds.peak_lr(plan)),
                                      config=ds.engine_config(plan))

    def engine_step() -> None:  # one optimizer step, as the trainer's: every micro-batch of it
        for _ in range(ds.accumulation):
            engine.backward(task.loss(engine, batch, dtype))
            engine.step()

    engine_rates = rates(engine_step, a.batch[dims] * ds.accumulation)
    return {keep: {**bare_rates[keep], "engine_clips_per_s": engine_rates[keep]["clips_per_s"]}
            for keep in a.keep_ratios}


def run_bare(dims: str, argv: list[str], device: str) -> dict[float, dict[str, float]]:
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), **(CPU_ENV if device == "cpu" else {})}
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", dims], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bare step at {dims} dims failed:\n{proc.stderr[-3000:]}")
    return {float(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


# ------------------------------------------------------------------ the trainer


def run_trainer(dims: str, keep: float, repeat: bool, a: argparse.Namespace, ds_json: Path) -> float:
    """Clips/s of one turbo_ds/train.py run (one rank) from its log windows after the first."""
    train, val = shards(a, dims)
    steps = a.window * (1 + a.windows)
    run_dir = Path(tempfile.mkdtemp(prefix=f"throughput_{dims}_", dir=a.data))
    sets = {**model_sets(dims, a.quick), **compile_set(a), "run_dir": run_dir, "turbo.keep_ratio": keep,
            "data.train": train, "data.val": val, "data.generate_demo": False, "data.repeat_batch": repeat,
            "data.num_workers": a.workers, "data.decoded_cache_clips": 0, "data.shuffle_buffer": 16,
            "train.steps": steps, "train.warmup_steps": 1, "train.log_every": a.window,
            "train.eval_every": 10 * steps, "train.ckpt_every": 10 * steps, "eval.batch_size": 16}
    cmd = [sys.executable, "turbo_ds/train.py", "--ds_config", str(ds_json), "--config", RECIPE,
           *[arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]]
    env = {**os.environ, "MASTER_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    if a.device == "cpu":
        env.update(CPU_ENV)
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"train.py at {dims} dims, keep {keep}, repeat_batch {repeat} failed:\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        windows = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                   if "train/clips_per_s" in r][1:]
        return len(windows) / sum(1 / w["train/clips_per_s"] for w in windows)  # equal windows: clips / seconds
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------ host syncs

READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy"}  # tensor values to the host


def count_host_syncs(a: argparse.Namespace, steps: int) -> dict[str, int]:
    """What makes the host wait for the device, counted on any machine during a ``steps``-step train.py run
    (this process, one rank, demo dims, a repeated batch): reads of tensor values (``item``, ``tolist``,
    ``float(t)``...: each waits for the device when the tensor lives there) and DeepSpeed's
    ``accelerator.synchronize()`` calls, by call site."""
    import traceback

    from deepspeed.accelerator import get_accelerator
    from torch.overrides import TorchFunctionMode

    from turbo_ds import train

    counts: dict[str, int] = {}

    def record(what: str) -> None:
        frame = next(f for f in reversed(traceback.extract_stack()[:-2]) if "/torch/" not in f.filename)
        site = f"{what} at {Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"
        counts[site] = counts.get(site, 0) + 1

    class HostReads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in READS:
                record(f"Tensor.{func.__name__}")
            return func(*args, **(kwargs or {}))

    accelerator = get_accelerator()
    synchronize = accelerator.synchronize

    def counted_synchronize(*args, **kwargs):
        record("accelerator.synchronize")
        return synchronize(*args, **kwargs)

    train_dir, val_dir = shards(a, "demo")
    run_dir = Path(tempfile.mkdtemp(prefix="host_syncs_", dir=a.data))
    sets = {**model_sets("demo", a.quick), "run_dir": run_dir, "turbo.keep_ratio": 0.25, "data.train": train_dir,
            "data.val": val_dir, "data.generate_demo": False, "data.repeat_batch": True, "data.shuffle_buffer": 16,
            "train.steps": steps, "train.warmup_steps": 1, "train.log_every": steps, "train.eval_every": 10 * steps,
            "train.ckpt_every": 10 * steps, "eval.batch_size": 16}
    argv = ["--ds_config", str(REPO / a.ds_config), "--config", str(REPO / RECIPE),
            *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    accelerator.synchronize = counted_synchronize
    try:
        with HostReads():
            assert train.main(argv) == 0
    finally:
        accelerator.synchronize = synchronize
        shutil.rmtree(run_dir, ignore_errors=True)
    return counts


def host_syncs_per_step(argv: list[str], device: str, steps: int = 6) -> dict[str, object]:
    """Per optimizer step, by call site: the counts of a 2 x ``steps`` run minus those of a ``steps`` run, over
    ``steps`` (start-up, the one log line, the evaluation and the checkpoint at the end cancel out)."""
    runs = []
    for n in (steps, 2 * steps):  # fresh processes: train.py's process group and DeepSpeed stay out of this one
        env = {**os.environ, "MASTER_PORT": str(free_port()),
               **(CPU_ENV if device == "cpu" else {})}
        proc = subprocess.run([sys.executable, __file__, *argv, "--child", f"syncs:{n}"], text=True,
                              capture_output=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"counting host syncs failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    per_step = {site: (runs[1].get(site, 0) - runs[0].get(site, 0)) / steps for site in {*runs[0], *runs[1]}}
    per_step = dict(sorted(((k, v) for k, v in per_step.items() if v), key=lambda kv: -kv[1]))
    return {"per_step": per_step, "per_step_total": sum(per_step.values()), "runs": runs, "steps": [steps, 2 * steps]}


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.child:
        what, _, steps = a.child.partition(":")
        print(json.dumps(count_host_syncs(a, int(steps)) if what == "syncs" else bare(a.child, a)))
        return
    a.data.mkdir(parents=True, exist_ok=True)
    if a.count_syncs:
        syncs = host_syncs_per_step(argv, a.device)
        print(f"host syncs per optimizer step (demo dims, keep 0.25, a repeated batch, {a.ds_config}): "
              f"{syncs['per_step_total']:g}")
        for site, n in syncs["per_step"].items():
            print(f"  {n:g}  {site}")
        a.json.write_text(json.dumps({"host_syncs": syncs}, indent=1) + "\n")
        print(f"wrote {a.json}")
        return
    print(f"{a.device} | {a.ds_config} | windows of {a.window} steps, {a.windows} measured | real-shard runs with "
          f"{a.workers} loader worker(s){' | model.compile' if a.compile else ''}{' | quick' if a.quick else ''}",
          flush=True)
    print(f"{'dims':<7} {'keep':>5} {'batch':>5} {'bare':>9} {'engine':>9} {'synthetic':>10} {'trainer':>9} "
          f"{'engine/bare':>12} {'synth/bare':>11} {'trainer/bare':>13}   (clips/s)", flush=True)
    results = []
    for dims in a.dims:
        shards(a, dims)  # generate the data before anything is timed
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=a.data, delete=False) as f:
            json.dump(ds_json(dims, a), f)
        try:
            bare_rates = run_bare(dims, argv, a.device)
            for keep in a.keep_ratios:
                r = {"dims": dims, "keep_ratio": keep, "batch": a.batch[dims],
                     "bare_clips_per_s": bare_rates[keep]["clips_per_s"],
                     "bare_cpu_ms_per_clip": bare_rates[keep]["cpu_ms_per_clip"],
                     "engine_clips_per_s": bare_rates[keep]["engine_clips_per_s"],
                     "trainer_synthetic_clips_per_s": run_trainer(dims, keep, True, a, Path(f.name)),
                     "trainer_clips_per_s": run_trainer(dims, keep, False, a, Path(f.name))}
                r["efficiency_synthetic"] = r["trainer_synthetic_clips_per_s"] / r["bare_clips_per_s"]
                r["efficiency"] = r["trainer_clips_per_s"] / r["bare_clips_per_s"]
                results.append(r)
                print(f"{dims:<7} {keep:>5.2f} {r['batch']:>5} {r['bare_clips_per_s']:>9.1f} "
                      f"{r['engine_clips_per_s']:>9.1f} {r['trainer_synthetic_clips_per_s']:>10.1f} "
                      f"{r['trainer_clips_per_s']:>9.1f} {r['engine_clips_per_s'] / r['bare_clips_per_s']:>12.2f} "
                      f"{r['efficiency_synthetic']:>11.2f} {r['efficiency']:>13.2f}", flush=True)
        finally:
            os.unlink(f.name)
    speedups = []
    for dims in a.dims:
        by = {r["keep_ratio"]: r for r in results if r["dims"] == dims}
        if 1.0 in by and len(by) > 1:
            low = by[min(by)]
            s = {"dims": dims, "keep_ratio": low["keep_ratio"],
                 **{f"{way}_speedup": low[f"{way}_clips_per_s"] / by[1.0][f"{way}_clips_per_s"]
                    for way in ("bare", "trainer_synthetic", "trainer")}}
            s["trainer_vs_bare_speedup"] = s["trainer_speedup"] / s["bare_speedup"]
            speedups.append(s)
            print(f"{dims}: Turbo speed-up at keep {low['keep_ratio']:g}: bare {s['bare_speedup']:.2f}x, trainer on "
                  f"a repeated batch {s['trainer_synthetic_speedup']:.2f}x, trainer on shards "
                  f"{s['trainer_speedup']:.2f}x ({s['trainer_vs_bare_speedup']:.2f} of the bare speed-up)")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in ("json", "child")}
    a.json.write_text(json.dumps({"settings": settings, "results": results, "speedups": speedups}, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
