"""The trainer, the floor above the tasks: it drives any ``Task`` on a DeepSpeed engine with the
components of ``engine/`` (checkpoints, distributed set-up, divergence guard, logging, optimizer
groups) and the streams of ``data/``.

    run(...)        one training run on every rank: prepare, open the data, build the task, fit
    Trainer.fit     the loop: train_step, then logging, evaluation, checkpoints, stop signals
    run_evaluation  one ``Evaluation`` over its dataset, every clip once across ranks
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, NoReturn

import deepspeed
import torch
from torch.optim.lr_scheduler import LambdaLR

from turbo_ds.config import BatchPlan, Config, DeepSpeedConfig, to_dict
from turbo_ds.data.datasets import Datasets
from turbo_ds.data.locations import redact, redacted
from turbo_ds.data.position import lost_per_epoch
from turbo_ds.data.samples import to_device
from turbo_ds.data.source import ShardReadError, ShardSource
from turbo_ds.data.streams import EvalStream, TrainStream, make_loader
from turbo_ds.engine.checkpoint import CheckpointManager
from turbo_ds.engine.distributed import (DistInfo, all_reduce_sum, barrier, broadcast_from_main,
                                         is_collective_failure, set_collective_timeout)
from turbo_ds.engine.errors import EXIT_CODE, DivergenceError, RunError
from turbo_ds.engine.gather import all_gather_objects
from turbo_ds.engine.guard import DivergenceGuard, PreemptionFlag, finish_step
from turbo_ds.engine.lock import RunDirLock
from turbo_ds.engine.metrics import RunLog, peak_memory_mb, progress_bar
from turbo_ds.engine.monitors import Monitors
from turbo_ds.engine.optim import group_names, param_groups, warmup_cosine
from turbo_ds.models.flops import TRAIN_FACTOR
from turbo_ds.plan.search import AUTO_KEEP_RATIOS, pick_keep_ratio
from turbo_ds.tasks import build_task, task_type
from turbo_ds.tasks.base import Evaluation, Task
from turbo_ds.turbo import keep_ratio_at

LOST_PEER = 1  # exit status when a collective failed: a rank or its node is gone (config errors exit 2, run errors 3)


@torch.no_grad()
def run_evaluation(evaluation: Evaluation, source: ShardSource, model: torch.nn.Module, cfg: Config,
                   dist_info: DistInfo, dtype: torch.dtype, pin_memory: bool = False,
                   events: list[str] | None = None) -> dict[str, Any]:
    """One evaluation's metrics over every clip of ``source``, each rank a share (``model``: an engine or a module
    in eval mode); ranks out of clips run padding batches so collectives match. ``events``: gets what this
    rank's shard readers reported (retries, lost shards)."""
    workers = cfg.data.num_workers  # decoding in worker processes, as in training
    stream = EvalStream(source, cfg.data, cfg.model, dist_info.rank, dist_info.world, cfg.eval.batch_size, cfg.eval,
                        num_workers=workers, frames=evaluation.clip_frames, targets=evaluation.targets)
    device = next(model.parameters()).device
    evaluation.eval_begin(model, dtype)
    outputs, ends, done = [], [], 0
    items = iter(make_loader(stream, workers, pin_memory=pin_memory))
    while done < stream.num_batches:
        item = next(items, None)
        if item is not None and item.get("end"):  # a reader's closing record: no batch
            ends.append(item)
            continue
        if item is None:  # this rank is out of clips: run the same collectives, record nothing
            evaluation.eval_padding(model, dtype)
        else:
            outputs.append(evaluation.eval_step(model, to_device(item, device, stream.spec.normalize), dtype))
            if events is not None:
                events += [f"{item['stream']}: {e}" for e in item["events"]]
        done += 1
    ends += list(items)  # the closing records still to come (every batch is in)
    assert len(ends) == stream.workers and all(e.get("end") for e in ends), "an eval reader did not close"
    if events is not None:
        events += [f"{e['stream']}: {event}" for e in ends for event in e["events"]]
    metrics = evaluation.eval_metrics(outputs)  # reduces over ranks
    skipped, short = all_reduce_sum([sum(e["position"]["skipped"] for e in ends),
                                     sum(e["position"]["short"] for e in ends)])
    # A shard the remainder split between readers is lost for each of them: count every lost shard once.
    lost = set().union(*all_gather_objects(sorted({name for e in ends for name in e["lost"]})))
    source.check_lost(len(lost), "this evaluation")
    prefix = evaluation.eval_prefix
    return {**metrics, f"{prefix}skipped_samples": int(skipped), f"{prefix}short_videos": int(short),
            f"{prefix}skipped_shards": len(lost)}


def use_deterministic_kernels() -> None:
    """Deterministic CUDA kernels (e.g. the scatter-add behind the gradient of the kept-token gather, cuBLAS
    reductions), so a resumed GPU run repeats the per-step losses bit for bit, as CPU runs do."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before the first matmul
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


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
    """One task trained on one DeepSpeed engine; its ``state_dict`` and the training stream's are what a
    checkpoint keeps besides the engine (``CheckpointManager.save(states)``)."""

    def __init__(self, cfg: Config, ds: DeepSpeedConfig, plan: BatchPlan, dist_info: DistInfo, task: Task,
                 datasets: Datasets, checkpoints: CheckpointManager, log: RunLog, preemption: PreemptionFlag,
                 lock: RunDirLock | None = None):
        self.cfg, self.plan, self.dist, self.task, self.log = cfg, plan, dist_info, task, log
        self.datasets, self.checkpoints, self.preemption, self.lock = datasets, checkpoints, preemption, lock
        if cfg.train.deterministic:
            use_deterministic_kernels()
        self.dtype = ds.dtype
        schedule = warmup_cosine(cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio)
        self.peak_lr = ds.peak_lr(plan)  # the JSON's lr, scaled to this global batch when it says so (lr_base_batch)
        groups = param_groups(task.model, self.peak_lr, cfg.train.layer_decay, cfg.model.depth, cfg.train.head_lr_scale)
        self.group_names = group_names(groups, task.model)  # in every checkpoint: how ZeRO-0 lays out its masters
        # How to load the latest checkpoint is known before the engine exists (an elastic resume needs
        # DeepSpeed's universal loader); a checkpoint of another model shape stops here.
        self.resuming = checkpoints.prepare_resume(task.model, ds, plan, log.info)
        universal = self.resuming is not None and self.resuming.universal
        self.engine, *_ = deepspeed.initialize(model=task.model, model_parameters=groups,
                                               config=ds.engine_config(plan, load_universal=universal),
                                               lr_scheduler=lambda opt: LambdaLR(opt, schedule))
        self.guard = DivergenceGuard(cfg.train.divergence_factor, cfg.train.max_bad_steps, dist_info.world,
                                     overflow_is_bad=ds.precision != "fp16")
        self.can_skip = ds.skips_nonfinite_steps  # else a bad step stops the run before it is applied
        self.stream = TrainStream(datasets.train, cfg.data, cfg.model, dist_info.rank, dist_info.world, plan.micro,
                                  cfg.train.seed, frames=task.clip_frames, targets=task.targets,
                                  gather=all_gather_objects)
        self.data_events: list[str] = []  # what this rank's shard readers reported since the last log line
        self.step = 0
        self.keep_ratio: float | None = None
        self.wall_before = 0.0  # training wall-clock seconds of the invocations this run resumed from
        self.started, self.first_step = time.perf_counter(), 0
        self.pin_memory = self.engine.device.type == "cuda"  # page-locked batches: asynchronous copies to the GPU
        self._flops: dict[float, float] = {}  # forward FLOPs per keep ratio (counting walks every parameter)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "guard": self.guard.state_dict(), "wall_s": self.wall_s(),
                "param_groups": self.group_names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.wall_before = state["step"], state["wall_s"]
        self.guard.load_state_dict(state["guard"])

    def resume(self) -> None:
        if not self.checkpoints.restore(self.engine, self.log, self.resuming, self.states):
            self.log.info(f"starting a new run in {self.cfg.run_dir}")
            return
        self.log.info(f"resuming from checkpoint {self.checkpoints.latest} at step {self.step}")
        if self.stream.regrouped is not None:
            self.log.info(self.stream.regrouped.note)

    @property
    def states(self) -> dict[str, Any]:
        """Everything with state besides the engine, by name (``state_dict`` / ``load_state_dict``)."""
        return {"trainer": self, "data": self.stream}

    def save(self, last: bool) -> bool:
        path = self.checkpoints.save(self.engine, self.step, self.states, self.log, last)
        if path is not None:
            self.log.info(f"saved checkpoint {path}")
        return path is not None

    # --------------------------------------------------------------- training

    def fit(self) -> None:
        """Train from the latest checkpoint (or the start) to ``train.steps``, or until a stop signal."""
        cfg, total = self.cfg, self.cfg.train.steps
        self.resume()
        if self.step >= total:
            self.log.info(f"run already finished at step {self.step}; nothing to train "
                          f"(use a new run_dir or raise train.steps to train more)")
            return
        batches = iter(make_loader(self.stream, cfg.data.num_workers, pin_memory=self.pin_memory))
        if cfg.data.repeat_batch:  # a benchmark of everything but the loader: its first batch, over and over
            batches = itertools.repeat(next(batches))  # (the loader and its workers end here)
            self.log.info("data.repeat_batch: training on the first batch repeated from memory (a benchmark)")
        repeat = cfg.data.repeat_aug  # a clip is one of a decoded video's copies
        videos = f" ({self.plan.micro // repeat} videos x data.repeat_aug {repeat})" if repeat > 1 else ""
        self.log.info(f"training steps {self.step + 1}..{total}: {self.plan.micro} clips{videos} x "
                      f"{self.plan.accumulation} accumulation x {self.plan.world} ranks = {self.plan.global_size} "
                      f"clips/step, peak lr {self.peak_lr:.3g}, {self.task.tokens_kept}/{self.task.tokens_total} "
                      f"tokens kept, dtype {self.dtype}, collective timeout {cfg.train.collective_timeout_s:g} s "
                      "from the first step")
        self.bar = bar = progress_bar(total, self.step, self.dist.is_main)
        self.started, self.first_step = time.perf_counter(), self.step
        window, save_pending = LogWindow(), False
        self.engine.train()
        while self.step < total:
            self.step += 1
            problem, stop_signal = self.train_step(batches, window)
            bar.update(1)
            if self.step == self.first_step + 1:  # start-up skew is over: from now on a silent peer is a lost one
                set_collective_timeout(cfg.train.collective_timeout_s)
            if self.step % cfg.train.log_every == 0 or self.step == total:
                self._log_train(window)
                window = LogWindow()
            stop = stop_signal or self.step == cfg.train.stop_at_step
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

    def train_step(self, batches: Iterator[dict[str, Any]], window: LogWindow) -> tuple[str | None, bool]:
        """Optimizer step ``self.step``: keep ratio, micro-batches, the guard's verdict, the update (or its skip).
        Returns what was wrong with the step (None: it was applied) and whether a stop signal arrived."""
        cfg, total = self.cfg, self.cfg.train.steps
        ratio = keep_ratio_at(cfg.turbo, self.step - 1, total)
        if ratio != self.keep_ratio and self.step > total - cfg.turbo.full_token_steps:
            self.log.info(f"turbo: unmasked tuning from step {self.step} to {total} (turbo.full_token_steps="
                          f"{cfg.turbo.full_token_steps}): every token kept, {self.task.tokens_total} per clip")
        self.keep_ratio = ratio
        self.task.set_keep_ratio(ratio)
        # Randomness (token choice) depends on (seed, step, rank) only, so a resumed run repeats it.
        torch.manual_seed(cfg.train.seed * 1_000_003 + self.step * 1009 + self.dist.rank)
        losses, keys = [], []
        for micro in range(self.plan.accumulation):
            batch = next(batches)
            keys += batch["key"]
            spec = self.stream.spec  # normalisation and RandAugment run on the device
            loss = self.task.loss(self.engine, to_device(batch, self.engine.device, spec.normalize, spec.randaug),
                                  self.dtype)
            self.data_events += self.stream.record(batch)
            losses.append(loss.detach())  # stays on the device: no host sync per micro-step
            if micro + 1 < self.plan.accumulation:  # the last micro-batch waits for the verdict
                self.engine.backward(loss)
                self.engine.step()
        # The step's one collective and host read, which the guard cannot do without: whether to skip depends
        # on every rank's loss, and all ranks must agree before the optimizer step (a rank skipping alone
        # would leave ZeRO's collectives unmatched). It also carries what one rank may see alone: a stop signal, the
        # shards its streams lost (the budget is every rank's sum), a failure that ends the run (a lost run-dir lock).
        verdict = self.guard.verdict(torch.stack(losses).mean(), self.preemption.signal is not None,
                                     lost_per_epoch(self.stream.position.values()),
                                     self.lock.lost if self.lock is not None else None)
        if verdict.failure is not None:  # every rank, this step, before any update
            raise RunError(verdict.failure)
        try:
            self.datasets.train.check_lost(verdict.lost_shards, "one epoch")
        except ShardReadError:  # on every rank alike: the log names the lost shards first
            self._log_data_events(all_reduce_sum([len(self.data_events)])[0])
            raise
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
        return problem, verdict.stop_signal

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

    def _forward_flops(self) -> float:
        """One training clip's forward FLOPs at the current keep ratio."""
        if self.keep_ratio not in self._flops:
            self._flops[self.keep_ratio] = self.task.forward_flops()
        return self._flops[self.keep_ratio]

    def _log_train(self, window: LogWindow) -> None:
        elapsed = time.perf_counter() - window.start
        positions = self.stream.position.values()
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
        evaluations = [(self.task, self.datasets.val), *((e, e.source) for e in self.task.extra_evaluations())]
        for evaluation, source in evaluations:
            record.update(run_evaluation(evaluation, source, self.engine, self.cfg, self.dist, self.dtype,
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


def resolve_keep_ratio(cfg: Config, ds: DeepSpeedConfig, dist_info: DistInfo, log: RunLog,
                       started: dict[str, Any] | None) -> Config:
    """``turbo.keep_ratio: auto`` made a number, the same on every rank, before any component sees the config.

    Rank 0 measures the largest ratio whose training step fits turbo.memory_budget_gb
    (``turbo_ds.plan.search.pick_keep_ratio``), or, when the run resumes (``started``: the config it
    started with), takes the ratio it started with: a run must not change its token budget halfway.
    Whatever stops the measurement (a budget nothing fits: the planner's ConfigError) is raised on
    every rank, so no rank waits for a ratio that never comes.
    """
    if cfg.turbo.keep_ratio != "auto":
        return cfg
    outcome: float | Exception | None = None
    if dist_info.is_main:
        if started is not None:
            outcome = started["turbo"]["keep_ratio"]
            log.info(f"turbo.keep_ratio auto: {outcome:g}, as chosen when this run started")
        else:
            budget, device = cfg.turbo.memory_budget_gb, str(dist_info.device)
            log.info(f"turbo.keep_ratio auto: measuring keep ratios {', '.join(map(str, AUTO_KEEP_RATIOS))} "
                     f"against {budget:g} GB per rank on {device} (a few real training steps each)")
            try:
                outcome = pick_keep_ratio(cfg, ds, budget, device, ranks=dist_info.world, log=log.info)
                log.info(f"turbo.keep_ratio auto: {outcome:g} is the largest that fits {budget:g} GB")
            except Exception as e:  # noqa: BLE001 - handed to every rank below
                outcome = e
    outcome = broadcast_from_main(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return dataclasses.replace(cfg, turbo=dataclasses.replace(cfg.turbo, keep_ratio=float(outcome)))


def run(cfg: Config, ds: DeepSpeedConfig, plan: BatchPlan, datasets: Datasets | None, dist_info: DistInfo,
        checkpoints: CheckpointManager, lock: RunDirLock, preemption: PreemptionFlag) -> int:
    """One training run on this rank: the exit status (0, or ``LOST_PEER``, ``EXIT_CODE``); a ConfigError found
    once the ranks exist (the demo data, a tokenizer, a checkpoint of another shape) is raised on every rank, so
    is a RunError. ``datasets``: opened by the entry point, or None for the demo that ``Task.prepare`` generates.
    Rank 0 takes the run dir's ``lock`` first; a lock taken away later stops every rank at the next step."""
    lock_note = lock.hold(dist_info)
    log = RunLog(cfg.run_dir, dist_info.is_main)
    try:
        return _run(cfg, ds, plan, datasets, dist_info, checkpoints, lock if dist_info.is_main else None,
                    lock_note, preemption, log)
    finally:
        log.close()


def _run(cfg: Config, ds: DeepSpeedConfig, plan: BatchPlan, datasets: Datasets | None, dist_info: DistInfo,
         checkpoints: CheckpointManager, lock: RunDirLock | None, lock_note: str | None, preemption: PreemptionFlag,
         log: RunLog) -> int:
    if lock_note:
        log.info(lock_note)
    if dist_info.is_main:
        task_type(cfg.task).prepare(cfg, log.info)  # e.g. demo data, a tokenizer trained on the captions
    cfg = resolve_keep_ratio(cfg, ds, dist_info, log, checkpoints.started_config() if dist_info.is_main else None)
    checkpoints.record_configs(redacted(to_dict(cfg)), ds.resolved(plan))  # no credentials in the run dir
    if dist_info.is_main and ds.monitors:
        log.attach(Monitors(ds.monitors, checkpoints.configs))
        log.info(f"metrics also go to {'; '.join(log.monitors.destinations())} (x-axis: step)")
    barrier()  # demo data and run dir exist before any rank reads them

    log.info(f"turbo_ds: task {cfg.task} | run_dir {cfg.run_dir} | {dist_info.world} rank(s) | "
             f"keep_ratio {cfg.turbo.keep_ratio} (eval {cfg.turbo.eval_keep_ratio})")
    log.info(f"ranks: {dist_info.layout()}")
    log.info(f"device: {dist_info.devices}; rank {dist_info.rank} on {dist_info.device}")
    if cfg.model.compile:  # bounded by torch's recompile limit (then eager); each recompilation's reason on stderr
        torch._logging.set_logs(recompiles=True)
        log.info("model.compile: the encoder blocks compile at their first steps (cached on disk for later runs)")
    datasets = datasets or Datasets.open(cfg.data, dist_info.world)  # the task and the streams share them
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    task = build_task(cfg, datasets.train.manifest)
    if task.pretrained_report:
        log.info(str(task.pretrained_report))
    trainer = Trainer(cfg, ds, plan, dist_info, task, datasets, checkpoints, log, preemption, lock)
    try:
        trainer.fit()
    except ShardReadError as e:  # the store lost too much of an epoch: one line, not a traceback
        log.info(f"data error: {e}")
        print(f"data error (rank {dist_info.rank}): {redact(str(e))}", file=sys.stderr)
        return EXIT_CODE
    except RuntimeError as e:
        if not is_collective_failure(e):
            raise
        # every surviving rank says so (rank 0 may be the lost one); no traceback for a known failure
        print(f"rank {dist_info.rank} on {dist_info.hosts[dist_info.rank]}: a collective failed "
              f"({str(e).splitlines()[0]}): a peer rank or its node is lost, or stalled longer than "
              f"train.collective_timeout_s={cfg.train.collective_timeout_s:g}; the newest complete checkpoint is "
              f"{checkpoints.latest}: rerun (or requeue) with the same run_dir to resume from it",
              file=sys.stderr, flush=True)
        return LOST_PEER
    return 0
