"""Training-step time and memory of our encoder vs transformers' VideoMAE at several keep ratios.

One step = forward + backward + AdamW step of encoder + linear head with cross-entropy.
``turbo_ds`` drops tokens before the patch projection (TokenSelector); ``videomae`` is
``transformers.VideoMAEModel`` built from a config (random init, nothing downloaded) whose
``bool_masked_pos`` drops the same number of random tokens per sample after embedding,
followed by the same head (mean pool, LayerNorm, Linear).

Each (impl, keep ratio) runs in a fresh subprocess so memory figures do not mix:
  step_s       median step time over --repeats steps after --warmup steps
  cpu_s        CPU time (user + system, all threads) per step: the work done, which other load on a
               shared machine distorts less than wall time (compare at --threads 1: idle threads spin)
  peak_mem_mb  peak memory of the steps above a baseline taken once weights, inputs,
               gradients and AdamW state exist, i.e. the per-step transient memory
               (activations and temporaries) that token dropout shrinks. CPU: peak RSS
               (VmHWM, reset at the baseline; ru_maxrss growth where it cannot be reset);
               CUDA: torch.cuda.max_memory_allocated.
  state_mb     memory of gradients + AdamW state (the same at every keep ratio)

--runs N repeats the whole table N times (settings alternating within each run) and reports each
figure as the median over runs with its spread [min - max]. --compile builds turbo_ds with
``model.compile: true`` (torch.compile of the encoder blocks; the first warm-up step compiles, or loads
the compiled kernels from torch's on-disk cache); VideoMAE runs eager, as transformers runs it.

    python bench/turbo_speed.py                                  # ViT-S/16, 16 x 224^2, batch 2, CPU
    python bench/turbo_speed.py --frames 8 --size 112 --repeats 2 --json /tmp/speed.json
    python bench/turbo_speed.py --device cuda --batch 8 --trainer-precision    # bf16 weights + fp32 masters
    python bench/turbo_speed.py --compile --runs 3 --keep-ratios 1.0 0.25      # the acceptance figures
    python bench/turbo_speed.py --plot turbo_speed.png                     # also draw the table
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.mixed_precision import MasterWeightAdamW  # noqa: E402
from turbo_ds.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402
from turbo_ds.turbo import STRATEGIES  # noqa: E402

IMPLS = ("turbo_ds", "videomae")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--keep-ratios", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.125])
    p.add_argument("--strategy", default="random", choices=list(STRATEGIES),
                   help="turbo_ds token selection (videomae always drops random tokens): "
                        + "; ".join(f"{name}: {s.doc}" for name, s in STRATEGIES.items()))
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--tubelet", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--amp", action="store_true", help="bf16 autocast over fp32 weights (not the trainer's setup)")
    precision.add_argument("--trainer-precision", action="store_true",
                           help="the trainer's setup (DeepSpeed bf16, as the shipped JSONs): bf16 weights and inputs, "
                                "no autocast, fp32 master weights updated by AdamW after clipping the gradient norm to 1")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="turbo_ds with model.compile: true (torch.compile of its "
                                                          "encoder blocks); VideoMAE stays eager")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole table; figures are medians with [min - max]")
    p.add_argument("--warmup", type=int, help="untimed steps first (allocator, thread pools, compilation); "
                                              "default 1, 2 with --compile")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per setting; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write {'results': [...]} here")
    p.add_argument("--plot", type=Path, help="draw step time and peak memory vs keep ratio into this PNG")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: 'impl:keep' measured in this process
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else 2 if args.compile else 1
    return args


# ------------------------------------------------------------------ models


class VideoMAEClassifier(nn.Module):
    """transformers' VideoMAE encoder + the same head as ours; drops tokens through bool_masked_pos."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        from transformers import VideoMAEConfig, VideoMAEModel
        cfg = VideoMAEConfig(hidden_size=args.width, num_hidden_layers=args.depth, num_attention_heads=args.heads,
                             intermediate_size=4 * args.width, num_frames=args.frames, image_size=args.size,
                             patch_size=args.patch, tubelet_size=args.tubelet, use_mean_pooling=True)
        self.videomae = VideoMAEModel(cfg)
        self.fc_norm = nn.LayerNorm(args.width)
        self.head = nn.Linear(args.width, args.classes)

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        tokens = self.videomae(pixel_values=video, bool_masked_pos=mask).last_hidden_state  # (B, K, D)
        return self.head(self.fc_norm(tokens.mean(dim=1)))  # (B, classes)


def build(impl: str, keep: float, args: argparse.Namespace):
    """Model and a ``step_input()`` giving the forward's arguments (token choice is drawn per step)."""
    grid = (args.frames // args.tubelet, args.size // args.patch, args.size // args.patch)
    num_tokens = grid[0] * grid[1] * grid[2]
    if impl == "turbo_ds":
        from turbo_ds.config import ModelConfig, TurboConfig
        from turbo_ds.models.vit import VideoClassifier, VideoViT
        cfg = ModelConfig(num_frames=args.frames, img_size=args.size, patch_size=args.patch, tubelet_size=args.tubelet,
                          width=args.width, depth=args.depth, heads=args.heads, compile=args.compile)
        model = VideoClassifier(VideoViT(cfg, TurboConfig(strategy=args.strategy, keep_ratio=keep)), args.classes)
        video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=args.device)  # (B, C, T, H, W)
        return model, lambda: (video,)
    from turbo_ds.turbo import num_kept, random_keep_indices
    model = VideoMAEClassifier(args)
    video = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=args.device)  # (B, T, C, H, W)
    keep_n = num_kept(num_tokens, keep)

    def step_input():
        if keep_n == num_tokens:
            return video, None
        kept = random_keep_indices(args.batch, num_tokens, keep_n, args.device)
        mask = torch.ones(args.batch, num_tokens, dtype=torch.bool, device=args.device)
        return video, mask.scatter_(1, kept, False)  # True = dropped, as VideoMAE expects

    return model, step_input


# --------------------------------------------------------------- measuring


def measure(impl: str, keep: float, args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cuda = args.device == "cuda"
    model, step_input = build(impl, keep, args)
    dtype = torch.bfloat16 if args.trainer_precision else torch.float32
    model = model.to(args.device, dtype).train()
    labels = torch.randint(0, args.classes, (args.batch,), device=args.device)

    def step() -> None:
        opt.zero_grad()  # gradients stay allocated: part of the resident state
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.amp):
            inputs = [x.to(dtype) if x is not None and x.is_floating_point() else x for x in step_input()]
            logits = model(*inputs)
        F.cross_entropy(logits.float(), labels).backward()
        opt.step()

    # Resident training state first (gradients, fp32 masters with --trainer-precision, AdamW moments), so the
    # peak below is per-step memory. Fused AdamW (CPU since torch 2.4, and CUDA) for both impls.
    before_state = torch.cuda.memory_allocated() if cuda else rss_bytes()
    opt = MasterWeightAdamW(model.parameters(), lr=1e-4, weight_decay=0.05, clip=1.0 if args.trainer_precision else 0)
    opt.step()
    state = (torch.cuda.memory_allocated() if cuda else rss_bytes()) - before_state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes() if reset_peak_rss() else peak_rss_bytes()
    times, cpu = [], 0.0
    for i in range(args.warmup + args.repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu += cpu_seconds() - c0
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {"impl": impl, "keep_ratio": keep, "step_s": statistics.median(times), "peak_mem_mb": (peak - base) / 2**20,
            "state_mb": state / 2**20, "cpu_s": cpu / args.repeats, "times_s": times,
            "threads": torch.get_num_threads(), "compile": args.compile and impl == "turbo_ds"}


def precision_name(args: argparse.Namespace) -> str:
    return "bf16 + fp32 masters" if args.trainer_precision else "bf16 autocast" if args.amp else "fp32"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(impl: str, keep: float, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--child", f"{impl}:{keep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} keep {keep} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        impl, keep = args.child.split(":")
        print(json.dumps(measure(impl, float(keep), args)))
        return
    grid = (args.frames // args.tubelet, args.size // args.patch, args.size // args.patch)
    print(f"width {args.width} depth {args.depth} heads {args.heads} | {args.frames} frames of {args.size}^2, patch "
          f"{args.patch}, tubelet {args.tubelet}: {grid[0] * grid[1] * grid[2]} tokens | batch {args.batch} | "
          f"{args.device} {precision_name(args)} | threads {args.threads or 'default'} | warmup {args.warmup}, "
          f"repeats {args.repeats} | turbo_ds strategy {args.strategy}", flush=True)
    print(f"{'impl':<10} {'keep':>6} {'step s':>9} {'speedup':>8} {'peak MB':>9} {'vs 1.0':>7} {'state MB':>9} "
          f"{'CPU s':>7}", flush=True)
    results = []
    for run in range(args.runs):
        if args.runs > 1:
            print(f"run {run + 1}/{args.runs}", flush=True)
        refs = {}
        for keep in args.keep_ratios:  # impls alternate, so a noisy spell on a shared machine hits both
            for impl in args.impls:
                r = {**run_child(impl, keep, argv), "run": run}  # the child re-parses the same options
                refs[impl] = r if keep == 1.0 else refs.get(impl)
                ref = refs[impl]
                speedup = f"{ref['step_s'] / r['step_s']:.2f}x" if ref else "-"
                mem = f"{r['peak_mem_mb'] / ref['peak_mem_mb']:.2f}x" if ref and ref["peak_mem_mb"] > 0 else "-"
                print(f"{impl:<10} {keep:>6.3f} {r['step_s']:>9.3f} {speedup:>8} {r['peak_mem_mb']:>9.0f} {mem:>7} "
                      f"{r['state_mb']:>9.0f} {r['cpu_s']:>7.2f}", flush=True)
                results.append(r)
    summary = summarize(results, args)
    print(f"over {args.runs} run(s): median [min - max]" if args.runs > 1 else "")
    for row in summary:
        print(f"{row['impl']:<10} keep {row['keep_ratio']:<6g} step {spread(row['step_s'], '.3f')} s"
              + (f" | speed-up {spread(row['speedup'], '.2f')}x | memory {spread(row['memory_ratio'], '.2f')}x of keep 1.0"
                 if "speedup" in row else "")
              + (f" | / videomae {spread(row['vs_videomae'], '.2f')}" if "vs_videomae" in row else ""))
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
                                         "results": results, "summary": summary}, indent=1, default=str))
        print(f"wrote {args.json}")
    if args.plot:
        plot([{"impl": row["impl"], "keep_ratio": row["keep_ratio"], "step_s": row["step_s"][0],
               "peak_mem_mb": row["peak_mem_mb"][0]} for row in summary], args)
        print(f"wrote {args.plot}")


def summarize(results: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per (impl, keep ratio): [median, min, max] over runs of the step time, peak memory, the speed-up and memory
    ratio over the same run's keep 1.0, and the step time over VideoMAE's in the same run."""
    at = {(r["impl"], r["keep_ratio"], r["run"]): r for r in results}

    def stats(values: list[float]) -> list[float]:
        return [statistics.median(values), min(values), max(values)]

    summary = []
    for keep in args.keep_ratios:
        for impl in args.impls:
            runs = [at[impl, keep, n] for n in range(args.runs)]
            row = {"impl": impl, "keep_ratio": keep, "step_s": stats([r["step_s"] for r in runs]),
                   "peak_mem_mb": stats([r["peak_mem_mb"] for r in runs]), "cpu_s": stats([r["cpu_s"] for r in runs])}
            refs = [at.get((impl, 1.0, n)) for n in range(args.runs)]
            if keep != 1.0 and all(refs):
                row["speedup"] = stats([ref["step_s"] / r["step_s"] for ref, r in zip(refs, runs)])
                if all(ref["peak_mem_mb"] > 0 for ref in refs):
                    row["memory_ratio"] = stats([r["peak_mem_mb"] / ref["peak_mem_mb"] for ref, r in zip(refs, runs)])
            if impl == "turbo_ds" and "videomae" in args.impls:
                row["vs_videomae"] = stats([r["step_s"] / at["videomae", keep, n]["step_s"] for n, r in enumerate(runs)])
            summary.append(row)
    return summary


def spread(values: list[float], fmt: str) -> str:
    """'median [min - max]', or the value alone for one run."""
    median, low, high = values
    return f"{median:{fmt}}" if low == high else f"{median:{fmt}} [{low:{fmt}} - {high:{fmt}}]"


def plot(results: list[dict], args: argparse.Namespace) -> None:
    """Step time and peak memory vs keep ratio, one line per impl, speed-ups over keep 1.0 annotated."""
    from turbo_ds.plot import pyplot, save

    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for n, impl in enumerate(args.impls):
        rows = sorted((r for r in results if r["impl"] == impl), key=lambda r: r["keep_ratio"])
        ref = next((r for r in rows if r["keep_ratio"] == 1.0), None)
        for ax, key in zip(axes, ("step_s", "peak_mem_mb")):
            xs, ys = [r["keep_ratio"] for r in rows], [r[key] for r in rows]
            ax.plot(xs, ys, marker="o", label=impl)
            for x, y in zip(xs, ys):
                if ref and ref[key] > 0 and x != 1.0:
                    ax.annotate(f"{ref[key] / y:.1f}x" if key == "step_s" else f"{y / ref[key]:.2f}x", (x, y),
                                textcoords="offset points", xytext=(4, 6 if n == 0 else -12), fontsize=8)
    for ax, title in zip(axes, ("training step time (s), speed-up over keep 1.0",
                                "peak step memory (MB), fraction of keep 1.0")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(args.keep_ratios), [f"{k:g}" for k in sorted(args.keep_ratios)])
        ax.set(xlabel="keep ratio (tokens kept in training)", title=title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"width {args.width}, depth {args.depth}, {args.frames} x {args.size}^2, patch {args.patch}, "
                 f"batch {args.batch}, {args.device} {precision_name(args)}", fontsize=10)
    fig.tight_layout()
    save(fig, args.plot)


if __name__ == "__main__":
    main()
