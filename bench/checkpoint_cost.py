"""Checkpoint bytes per rank and save time, per ZeRO stage, measured on real DeepSpeed engines.

For each stage, a fresh `deepspeed --num_gpus R` job builds the action-classification model
at the given size (ViT-B/16 by default: width 768, depth 12, 16 x 224^2 clips), takes one
training step on a synthetic batch (so that AdamW's state exists), then saves one checkpoint
through CheckpointManager, the trainer's own save path (every rank writes its part into
step_X.partial/, rank 0 renames it), and reports:

  params          trainable parameters P
  rank_bytes      bytes each rank wrote (files named by their rank; mp_rank_00_model_states.pt
                  is rank 0's, or every rank's with ZeRO-3 where it holds only the non-ZeRO state)
  save_s          wall time of the save, all ranks done (barrier included; files and renames fsynced):
                  the median of --saves saves (save_s_all: each of them)
  model_b_per_p   (rank 0's model-states file) / P; optim_b_per_p: all optimizer files / P

and the same layout computed for --at-ranks (default 512 = 64 nodes x 8 GPUs) from the
measured files: stage 0 puts weights and optimizer state in one file on rank 0; stages 1-2
write bf16 weights on rank 0 and 1/R of the fp32 master + AdamW moments on every rank;
stage 3 writes only the 1/R optimizer shards (the bf16 weights are rebuilt from them).

    python bench/checkpoint_cost.py                               # ViT-B/16, 2 CPU ranks, stages 0-3
    python bench/checkpoint_cost.py --width 128 --depth 2 --heads 4 --size 64 --stages 0 3 --json out.json
    python bench/checkpoint_cost.py --width 128 --depth 2 --heads 4 --size 64 --saves 9   # a small checkpoint's save time
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--ranks", type=int, default=2, help="ranks per measurement (deepspeed --num_gpus)")
    p.add_argument("--at-ranks", type=int, default=512, help="world size of the computed layout (64 x 8 = 512)")
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--saves", type=int, default=1, help="saves per stage (steps 1..N); save_s is their median")
    p.add_argument("--json", type=Path, help="write {'results': [...]} here")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # the stage a launched job measures
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One rank of the job measuring stage ``args.worker``; rank 0 writes the result to ``args.out``."""
    import deepspeed
    import torch

    from turbo_ds.config import DeepSpeedConfig, load_config, plan_batches
    from turbo_ds.engine.checkpoint import CheckpointManager
    from turbo_ds.engine.distributed import init_distributed
    from turbo_ds.engine.metrics import RunLog
    from turbo_ds.engine.optim import param_groups
    from turbo_ds.tasks import build_task

    run_dir = args.out.parent / f"run_zero{args.worker}"
    cfg = load_config("configs/demo_action_cls.yaml", [
        f"run_dir={run_dir}", f"model.width={args.width}", f"model.depth={args.depth}", f"model.heads={args.heads}",
        f"model.num_frames={args.frames}", f"model.img_size={args.size}", "model.patch_size=16",
        "data.generate_demo=false"])
    raw = json.loads((REPO / "ds_configs" / f"zero{args.worker}_bf16.json").read_text())
    ds = DeepSpeedConfig({**raw, "train_micro_batch_size_per_gpu": 1})
    dist_info = init_distributed()
    plan = plan_batches(cfg, ds, dist_info.world)
    torch.manual_seed(0)
    task = build_task(cfg, {"class_names": [str(i) for i in range(args.classes)]})
    params = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    engine, *_ = deepspeed.initialize(model=task.model, model_parameters=param_groups(task.model, ds.peak_lr(plan)),
                                      config=ds.engine_config(plan))
    batch = {k: v.to(engine.device) for k, v in task.synthetic_batch(1, engine.device).items()}
    engine.backward(task.loss(engine, {**batch, "label": torch.zeros(1, dtype=torch.long, device=engine.device)},
                              ds.dtype))
    engine.step()  # AdamW's moments exist from here on
    checkpoints = CheckpointManager(run_dir, dist_info, dataclasses.replace(cfg.train, keep_last_checkpoints=2))
    run_dir.mkdir(parents=True, exist_ok=True)  # RunLog opens train.log there
    log, times = RunLog(run_dir, dist_info.is_main), []
    for step in range(1, args.saves + 1):
        torch.distributed.barrier()
        start = time.perf_counter()
        path = checkpoints.save(engine, step, {}, log)  # the engine's state alone
        times.append(time.perf_counter() - start)
    if dist_info.is_main:
        files = {p.name: p.stat().st_size for p in path.iterdir() if p.suffix == ".pt"}
        args.out.write_text(json.dumps({"stage": args.worker, "ranks": dist_info.world, "params": params,
                                        "save_s": statistics.median(times), "save_s_all": times, "files": files}))


def rank_bytes(files: dict[str, int], ranks: int) -> list[int]:
    """Bytes each rank wrote, from DeepSpeed's file names (zero_pp_rank_R / bf16_zero_pp_rank_R ...)."""
    from turbo_ds.engine.checkpoint import written_by

    out = [0] * ranks
    for name, size in files.items():
        out[written_by(name)] += size
    return out


def computed(result: dict, at: int) -> dict:
    """Bytes per rank at ``at`` ranks from the measured files (see the module doc)."""
    stage, files = result["stage"], result["files"]
    model = sum(s for n, s in files.items() if "optim" not in n and "zero_pp_rank" not in n)  # rank 0's file
    optim = sum(s for n, s in files.items() if "optim" in n)  # every rank's shard together
    # ZeRO-3: every rank's (small) model-states file
    shards = sum(s for n, s in files.items() if "zero_pp_rank" in n and "optim" not in n)
    if stage == 0:
        return {"rank0": model, "other": 0}
    if stage in (1, 2):
        return {"rank0": model + optim / at, "other": optim / at}
    return {"rank0": model + (optim + shards) / at, "other": (optim + shards) / at}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        sys.stdout.flush()
        os._exit(0)  # no interpreter teardown: torch.distributed's ended in std::terminate now and then (train.py)
    from turbo_ds.engine.distributed import free_port

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            out = Path(tmp) / f"zero{stage}.json"
            cmd = ["deepspeed", "--num_gpus", str(args.ranks), "--master_port", str(free_port()), __file__,
                   "--worker", str(stage), "--out", str(out), *sum(([f"--{k}", str(getattr(args, k))] for k in (
                       "width", "depth", "heads", "frames", "size", "classes", "saves")), [])]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ})
            if proc.returncode != 0 or not out.is_file():
                sys.exit(f"zero{stage}: the measurement failed\n{proc.stderr[-3000:]}")
            r = json.loads(out.read_text())
            r["rank_bytes"] = rank_bytes(r["files"], r["ranks"])
            r["model_b_per_p"] = r["files"].get("mp_rank_00_model_states.pt", 0) / r["params"]
            r["optim_b_per_p"] = sum(s for n, s in r["files"].items() if "optim" in n) / r["params"]
            r[f"computed_at_{args.at_ranks}"] = computed(r, args.at_ranks)
            results.append(r)
            c = r[f"computed_at_{args.at_ranks}"]
            print(f"ZeRO-{stage}: P={r['params'] / 1e6:.1f}M | measured on {r['ranks']} ranks: bytes per rank "
                  f"{', '.join(f'{b / 1e6:.1f} MB' for b in r['rank_bytes'])}, save {r['save_s']:.3f} s"
                  + (f" (median of {len(r['save_s_all'])}, {min(r['save_s_all']):.3f}-{max(r['save_s_all']):.3f})"
                     if len(r["save_s_all"]) > 1 else "") + " | computed "
                  f"at {args.at_ranks} ranks: rank 0 {c['rank0'] / 1e6:.1f} MB, each other rank "
                  f"{c['other'] / 1e6:.2f} MB", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    main()
