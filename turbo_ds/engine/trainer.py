"""The training loop on a DeepSpeed engine: steps, logging, evaluation, checkpoints, preemption, and the
divergence guard (``engine/guard.py``): a bad step is skipped, a run of them stops the run."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch.optim.lr_scheduler import LambdaLR

from turbo_ds.config import BatchPlan, Config, DeepSpeedConfig
from turbo_ds.data.samples import to_device
from turbo_ds.data.streams import EvalStream, TrainStream, make_loader
from turbo_ds.engine.checkpoint import CheckpointManager
from turbo_ds.engine.distributed import DistInfo, all_reduce_sum, set_collective_timeout
from turbo_ds.engine.errors import DivergenceError
from turbo_ds.engine.gather import all_gather_objects
from turbo_ds.engine.guard import DivergenceGuard, finish_step
from turbo_ds.engine.metrics import RunLog, peak_memory_mb, progress_bar
from turbo_ds.models.flops import TRAIN_FACTOR
from turbo_ds.models.vit import VideoViT
from turbo_ds.tasks.base import Evaluation, Task
from turbo_ds.turbo import TokenSelector, keep_ratio_at


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warmup from 0, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def video_layer_ids(model: torch.nn.Module, depth: int) -> dict[int, int]:
    """Layer index of every video-encoder parameter: 0 for embeddings, i + 1 for block i, depth + 1
    after the blocks. Parameters outside a VideoViT (heads, text or temporal towers) are absent."""
    ids = {}
    for module in model.modules():
        if isinstance(module, VideoViT):
            for name, p in module.named_parameters():
                block = int(name.split(".")[1]) + 1 if name.startswith("blocks.") else None
                ids[id(p)] = block if block is not None else 0 if name.startswith(module.embedding_names) else depth + 1
    return ids


def param_groups(model: torch.nn.Module, base_lr: float, layer_decay: float = 1.0, depth: int = 0) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and position embeddings; optional layer-wise LR decay.

    Each group carries its own lr (the JSON's lr times the layer's scale), which the
    warmup-cosine schedule then multiplies.
    """
    layers = video_layer_ids(model, depth) if layer_decay < 1 else {}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layers.get(id(p), depth + 1)
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        group = groups.setdefault((layer, no_decay), {"params": [], "lr": base_lr * layer_decay ** (depth + 1 - layer)})
        if no_decay:
            group["weight_decay"] = 0.0
        group["params"].append(p)
    return list(groups.values())


@torch.no_grad()
def run_evaluation(evaluation: Evaluation, model: torch.nn.Module, cfg: Config, dist_info: DistInfo,
                   dtype: torch.dtype, pin_memory: bool = False, events: list[str] | None = None) -> dict[str, Any]:
    """One evaluation's metrics over every clip of its data, each rank a share (``model``: an engine or a module
    in eval mode); ranks out of clips run padding batches so collectives match. ``events``: gets what this
    rank's shard readers reported (retries, lost shards)."""
    own_data = evaluation.eval_data == cfg.data.val  # another dataset (zero-shot) has no data.val_manifest
    data = dataclasses.replace(cfg.data, val=evaluation.eval_data,
                               val_manifest=cfg.data.val_manifest if own_data else None)
    workers = cfg.data.num_workers  # decoding in worker processes, as in training
    stream = EvalStream(data, cfg.model, dist_info.rank, dist_info.world, cfg.eval.batch_size, cfg.eval,
                        num_workers=workers, frames=evaluation.clip_frames, targets=evaluation.targets)
    device = next(model.parameters()).device
    evaluation.eval_begin(model, dtype)
    outputs, positions = [], {}
    batches = iter(make_loader(stream, workers, pin_memory=pin_memory))
    for _ in range(stream.num_batches):
        batch = next(batches, None)
        if batch is None:  # this rank is out of clips: run the same collectives, record nothing
            evaluation.eval_padding(model, dtype)
            continue
        outputs.append(evaluation.eval_step(model, to_device(batch, device, stream.spec.normalize), dtype))
        positions[batch["stream"]] = batch["position"]  # each worker counts its own part
        if events is not None:
            events += [f"{batch['stream']}: {e}" for e in batch["events"]]
    metrics = evaluation.eval_metrics(outputs)  # reduces over ranks
    skipped, short = all_reduce_sum([sum(p["skipped"] for p in positions.values()),
                                     sum(p["short"] for p in positions.values())])
    # Every eval reader (rank x worker) reads every shard and counts the ones it lost: the most any lost.
    shards = max(all_gather_objects(max((p["skipped_shards"] for p in positions.values()), default=0)))
    prefix = evaluation.eval_prefix
    return {**metrics, f"{prefix}skipped_samples": int(skipped), f"{prefix}short_videos": int(short),
            f"{prefix}skipped_shards": int(shards)}


def use_deterministic_kernels() -> None:
    """Deterministic CUDA kernels (e.g. the scatter-add behind the gradient of the kept-token gather, cuBLAS
    reductions), so a resumed GPU run repeats the per-step losses bit for bit, as CPU runs do."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before the first matmul
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


class PreemptionFlag:
    """Set by SIGUSR1 (Slurm's warning before preemption/time limit) or SIGTERM; checked between steps."""

    def __init__(self) -> None:
        self.signal: str | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name


@dataclass
class LogWindow:
    """What was trained since the last log line."""

    loss_sum: float = 0.0
    "sum of the good steps' losses, averaged over ranks: the guard's verdict read them once per step, no more syncs"
    good_steps: int = 0
    steps: int = 0
    flops: float = 0.0
    "model FLOPs of the window's steps over all ranks (kept tokens only)"
    start: float = field(default_factory=time.perf_counter)


class Trainer:
    def __init__(self, cfg: Config, ds: DeepSpeedConfig, plan: BatchPlan, dist_info: DistInfo, task: Task,
                 checkpoints: CheckpointManager, log: RunLog):
        import deepspeed

        self.cfg, self.plan, self.dist, self.task, self.log = cfg, plan, dist_info, task, log
        if cfg.train.deterministic:
            use_deterministic_kernels()
        self.dtype = ds.dtype
        schedule = warmup_cosine(cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio)
        groups = param_groups(task.model, ds.lr, cfg.train.layer_decay, cfg.model.depth)
        # How to load the latest checkpoint is known before the engine exists (an elastic resume needs
        # DeepSpeed's universal loader); a checkpoint of another model shape stops here.
        self.resuming = checkpoints.prepare_resume(task.model, ds.resolved(plan), log.info)
        universal = self.resuming is not None and self.resuming.universal
        self.engine, *_ = deepspeed.initialize(model=task.model, model_parameters=groups,
                                               config=ds.engine_config(plan, load_universal=universal),
                                               lr_scheduler=lambda opt: LambdaLR(opt, schedule))
        # Every token selector (video towers, segment encoders) follows the keep-ratio schedule.
        self.selectors = [m for m in task.model.modules() if isinstance(m, TokenSelector)]
        self.checkpoints = checkpoints
        self.guard = DivergenceGuard(cfg.train.divergence_factor, cfg.train.max_bad_steps, dist_info.world,
                                     overflow_is_bad=ds.precision != "fp16")
        self.can_skip = ds.skips_nonfinite_steps  # else a bad step stops the run before it is applied
        self.preemption = PreemptionFlag()
        self.data_position: dict[str, dict[str, Any]] = {}  # this rank's streams
        self.data_layout: dict[str, Any] | None = None  # the layout that wrote the positions resumed from
        self.data_events: list[str] = []  # what this rank's shard readers reported since the last log line
        self.stream: TrainStream | None = None
        self.step = 0
        self.keep_ratio: float | None = None
        self.wall_before = 0.0  # training wall-clock seconds of the invocations this run resumed from
        self.started, self.first_step = time.perf_counter(), 0
        self.pin_memory = self.engine.device.type == "cuda"  # page-locked batches: asynchronous copies to the GPU
        self._flops: dict[float, float] = {}  # forward FLOPs per keep ratio (counting walks every parameter)

    # ------------------------------------------------------------------ state

    def resume(self) -> None:
        state = self.checkpoints.restore(self.engine, self.log, self.resuming)
        if state is None:
            self.log.info(f"starting a new run in {self.cfg.run_dir}")
            return
        self.step, self.data_position = state["step"], state["data_position"]
        self.guard.load_state_dict(state.get("guard", {}))
        # Checkpoints older than data_layout were written by world_size ranks x num_workers streams, no change.
        self.data_layout = state.get("data_layout") or {"ranks": state.get("world_size", self.dist.world),
                                                        "workers": max(1, state["config"]["data"]["num_workers"])}
        self.wall_before = state.get("wall_s", 0.0)
        self.log.info(f"resuming from checkpoint {self.checkpoints.latest} at step {self.step}")

    def save(self, last: bool) -> bool:
        positions = all_gather_objects(self.data_position)  # every rank's streams into rank 0's file
        merged = {k: v for p in positions for k, v in p.items()}
        path = self.checkpoints.save(self.engine, self.step, {"data_position": merged, "guard": self.guard.state_dict(),
                                                              "wall_s": self.wall_s(),
                                                              "data_layout": self.stream.layout_state(merged)},
                                     self.log, last)
        if path is not None:
            self.log.info(f"saved checkpoint {path}")
        return path is not None

    # --------------------------------------------------------------- training

    def fit(self) -> None:
        cfg, total = self.cfg, self.cfg.train.steps
        self.resume()
        if self.step >= total:
            self.log.info(f"run already finished at step {self.step}; nothing to train "
                          f"(use a new run_dir or raise train.steps to train more)")
            return
        stream = self.stream = TrainStream(cfg.data, cfg.model, self.dist.rank, self.dist.world, self.plan.micro,
                                           cfg.train.seed, resume=self.data_position, frames=self.task.clip_frames,
                                           targets=self.task.targets, resume_layout=self.data_layout)
        if stream.regrouped is not None:
            self.log.info(stream.regrouped.note)
        self.data_position = stream.positions()  # this rank's streams, recorded even before they deliver
        batches = iter(make_loader(stream, cfg.data.num_workers, pin_memory=self.pin_memory))
        if cfg.data.repeat_batch:  # a benchmark of everything but the loader: its first batch, over and over
            batches = itertools.repeat(next(batches))  # (the loader and its workers end here)
            self.log.info("data.repeat_batch: training on the first batch repeated from memory (a benchmark)")
        self.log.info(f"training steps {self.step + 1}..{total}: {self.plan.micro} clips x {self.plan.accumulation} "
                      f"accumulation x {self.plan.world} ranks = {self.plan.global_size} clips/step, "
                      f"{self.task.tokens_kept}/{self.task.tokens_total} tokens kept, dtype {self.dtype}, "
                      f"collective timeout {cfg.train.collective_timeout_s:g} s from the first step")
        self.bar = bar = progress_bar(total, self.step, self.dist.is_main)
        self.started, self.first_step = time.perf_counter(), self.step
        window, save_pending = LogWindow(), False
        self.engine.train()
        while self.step < total:
            self.step += 1
            ratio = keep_ratio_at(cfg.turbo, self.step - 1, total)
            if ratio != self.keep_ratio and self.step > total - cfg.turbo.full_token_steps:
                self.log.info(f"turbo: unmasked tuning from step {self.step} to {total} (turbo.full_token_steps="
                              f"{cfg.turbo.full_token_steps}): every token kept, {self.task.tokens_total} per clip")
            self._set_keep_ratio(ratio)
            # Randomness (token choice) depends on (seed, step, rank) only, so a resumed run repeats it.
            torch.manual_seed(cfg.train.seed * 1_000_003 + self.step * 1009 + self.dist.rank)
            losses, keys = [], []
            for micro in range(self.plan.accumulation):
                batch = next(batches)
                keys += batch["key"]
                loss = self.task.loss(self.engine, to_device(batch, self.engine.device, stream.spec.normalize),
                                      self.dtype)
                self.data_position[batch["stream"]] = batch["position"]
                self.data_events += [f"{batch['stream']}: {e}" for e in batch["events"]]
                losses.append(loss.detach())  # stays on the device: no host sync per micro-step
                if micro + 1 < self.plan.accumulation:  # the last micro-batch waits for the verdict
                    self.engine.backward(loss)
                    self.engine.step()
            # The step's one collective and host read, which the guard cannot do without: whether to skip depends
            # on every rank's loss, and all ranks must agree before the optimizer step (a rank skipping alone
            # would leave ZeRO's collectives unmatched). It also carries the stop signals (no collective of their own).
            verdict = self.guard.verdict(torch.stack(losses).mean(), self.preemption.signal is not None)
            skip = verdict.problem is not None
            applied = finish_step(self.engine, loss, skip) if self.can_skip or not skip else False
            problem = self.guard.record(self.step, verdict, applied)
            window.steps += 1
            window.flops += TRAIN_FACTOR * self._forward_flops() * self.plan.global_size
            if cfg.train.log_samples:
                self.log.samples(self.step, all_gather_objects(keys))
            if problem is not None:
                self.log.info(f"step {self.step}: skipped, {problem} ({self.guard.bad_in_row}/"
                              f"{cfg.train.max_bad_steps} bad in a row)")
                if self.guard.diverged or not self.can_skip or self.step == total:
                    self._log_train(window)  # the metrics show where it stopped
                    self._diverged(problem)
            else:
                window.loss_sum += verdict.loss
                window.good_steps += 1
            bar.update(1)
            if self.step == self.first_step + 1:  # start-up skew is over: from now on a silent peer is a lost one
                set_collective_timeout(cfg.train.collective_timeout_s)
            if self.step % cfg.train.log_every == 0 or self.step == total:
                self._log_train(window)
                window = LogWindow()
            stop = verdict.stop_signal or self.step == cfg.train.stop_at_step
            if self.step % cfg.train.eval_every == 0 or self.step == total:
                self.evaluate()
            saved = False
            if self.checkpoints.due(self.step, total, stop) or save_pending:
                # Never from weights that just gave a bad loss: the next good step saves instead.
                save_pending = problem is not None
                saved = not save_pending and self.save(last=stop or self.step == total)
            if stop:
                reason = "train.stop_at_step" if self.step == cfg.train.stop_at_step else (
                    self.preemption.signal or "a peer rank's signal")
                saved_note = "checkpoint saved" if saved else f"no checkpoint (step {self.step} was bad)"
                self.log.info(f"stopping at step {self.step} on {reason}: {saved_note}; "
                              "rerun with the same run_dir to resume")
                break
        bar.close()
        if self.step >= total:
            self.checkpoints.finish(self.step)

    def _diverged(self, problem: str) -> NoReturn:
        """Stop: checkpoints of the weights that gave the bad losses are set aside, the last good one is named."""
        start = self.guard.streak_start
        good = self.checkpoints.roll_back(start - 1)  # the weights of step start-1 gave step start's loss
        steps = f"step {start} was bad" if start == self.step else f"steps {start}-{self.step} were bad"
        where = (f"last good checkpoint {good} (rerunning resumes there)" if good is not None
                 else "no good checkpoint yet (rerunning starts over)")
        raise DivergenceError(f"divergence: {steps} ({problem}); stopped at step {self.step} without saving; "
                              f"{where}; try a lower learning rate (ds_config optimizer.params.lr), more warmup "
                              "(train.warmup_steps) or gradient clipping (ds_config gradient_clipping)")

    def wall_s(self) -> float:
        """Training wall-clock seconds of the whole run so far, across resumed invocations."""
        return self.wall_before + time.perf_counter() - self.started

    def eta(self) -> str:
        """Time to the last step at this invocation's average pace so far (evaluations and checkpoints included)."""
        done = self.step - self.first_step
        left = (time.perf_counter() - self.started) / max(done, 1) * (self.cfg.train.steps - self.step)
        return str(datetime.timedelta(seconds=round(left)))

    def _set_keep_ratio(self, ratio: float) -> None:
        self.keep_ratio = ratio
        for selector in self.selectors:
            selector.set_keep_ratio(ratio)

    def _forward_flops(self) -> float:
        """One training clip's forward FLOPs at the current keep ratio."""
        if self.keep_ratio not in self._flops:
            self._flops[self.keep_ratio] = self.task.forward_flops()
        return self._flops[self.keep_ratio]

    def _log_train(self, window: LogWindow) -> None:
        elapsed = time.perf_counter() - window.start
        positions = self.data_position.values()
        skipped, short, shards, retries, events = all_reduce_sum(
            [sum(p["skipped"] for p in positions), sum(p.get("short", 0) for p in positions),
             sum(p.get("skipped_shards", 0) for p in positions), sum(p.get("read_retries", 0) for p in positions),
             len(self.data_events)])
        self._log_data_events(events)
        loss = window.loss_sum / window.good_steps if window.good_steps else math.nan  # already over ranks
        record = {
            "step": self.step, "train/loss": loss, "train/lr": self.engine.get_lr()[0],
            "train/clips_per_s": window.steps * self.plan.global_size / elapsed,
            "train/tflops": window.flops / elapsed / 1e12,  # achieved, all ranks, kept tokens' FLOPs
            "train/keep_ratio": self.keep_ratio, "train/tokens_kept": self.task.tokens_kept,
            "train/tokens_total": self.task.tokens_total, "train/peak_mem_mb": peak_memory_mb(),
            "data/skipped_samples": int(skipped), "data/short_videos": int(short),
            "data/skipped_shards": int(shards), "data/read_retries": int(retries), "wall_s": self.wall_s(),
            "train/skipped_steps": self.guard.skipped,
        }
        counters = self.task.counters  # task-specific running totals, e.g. truncated captions
        record.update(zip(counters, map(int, all_reduce_sum(list(counters.values())))))
        self.log.metrics(record)
        self.bar.set_postfix(loss=f"{record['train/loss']:.4f}", tflops=f"{record['train/tflops']:.3g}", refresh=False)
        self.log.info(f"step {self.step}/{self.cfg.train.steps} | loss {record['train/loss']:.4f} | "
                      f"lr {record['train/lr']:.2e} | {record['train/clips_per_s']:.1f} clips/s | "
                      f"{record['train/tflops']:.3g} TFLOP/s | tokens {self.task.tokens_kept}/"
                      f"{self.task.tokens_total} | peak mem {record['train/peak_mem_mb']:.0f} MB | eta {self.eta()}"
                      + (f" | skipped {int(skipped)} bad samples" if skipped else "")
                      + (f" | {int(shards)} shards unreadable, skipped" if shards else "")
                      + (f" | {int(retries)} shard reads retried" if retries else "")
                      + (f" | skipped steps {self.guard.skipped}" if self.guard.skipped else "")
                      + (f" | {int(short)} videos shorter than the clip (frames repeated)" if short else ""))

    def _log_data_events(self, count: float) -> None:
        """Rank 0 logs every rank's shard-reader events (retries, skipped shards with their URLs);
        ``count`` is their number summed over ranks, so that every rank joins the gather or none."""
        if count:
            for events in all_gather_objects(self.data_events):
                for event in events:
                    self.log.info(f"data: {event}")
        self.data_events = []

    # ------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """The task's validation set and its extra evaluations (e.g. zero-shot), every clip once across ranks."""
        start, record = time.perf_counter(), {"step": self.step}
        self.engine.eval()
        for evaluation in (self.task, *self.task.extra_evaluations()):
            record.update(run_evaluation(evaluation, self.engine, self.cfg, self.dist, self.dtype,
                                         self.pin_memory, self.data_events))
        self.engine.train()
        self._log_data_events(all_reduce_sum([len(self.data_events)])[0])
        record.update({"eval/keep_ratio": self.cfg.turbo.eval_keep_ratio, "eval/seconds": time.perf_counter() - start,
                       "wall_s": self.wall_s()})
        self.log.metrics(record)
        shown = " | ".join(f"{k.removeprefix('eval/')} {v:.4f}" if isinstance(v, float) else f"{k.removeprefix('eval/')} {v}"
                           for k, v in record.items() if k not in ("step", "wall_s"))
        self.log.info(f"eval @ step {self.step} | {shown}")
        return record
