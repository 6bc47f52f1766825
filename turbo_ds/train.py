#!/usr/bin/env python
"""Train a video Transformer with Turbo token dropout on DeepSpeed.

    deepspeed [--num_gpus N] turbo_ds/train.py --ds_config ds_configs/zero2_bf16.json \\
        --config configs/demo_action_cls.yaml [--set key=value ...]

Rerunning with the same run_dir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if __package__ in (None, ""):  # run as a script (the deepspeed launcher does): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbo_ds.config import (Config, ConfigError, DeepSpeedConfig, load_config, load_ds_config,  # noqa: E402
                             plan_batches, to_dict)
from turbo_ds.data.locations import is_remote, redact, redacted  # noqa: E402
from turbo_ds.data.shards import MANIFEST, check_readers, read_manifest  # noqa: E402
from turbo_ds.engine.distributed import world_from_env  # noqa: E402

if TYPE_CHECKING:
    from turbo_ds.engine.checkpoint import CheckpointManager
    from turbo_ds.engine.distributed import DistInfo
    from turbo_ds.engine.lock import RunDirLock
    from turbo_ds.engine.metrics import RunLog


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment recipe (configs/*.yaml)")
    p.add_argument("--ds_config", required=True, help="DeepSpeed JSON (ds_configs/*.json): batch, optimizer, precision, ZeRO")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set turbo.keep_ratio=0.5 --set run_dir=runs/x (repeatable)")
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    return p.parse_args(argv)


def check_data(cfg: Config, world: int) -> None:
    """The datasets are complete (and the training set feeds every rank), or local and missing but generated at
    start-up (the demo); a URL's manifest is read (with the configured retries), so an unreachable store stops
    the run here."""
    from turbo_ds.data.source import ShardSource

    for key, location in (("data.train", cfg.data.train), ("data.val", cfg.data.val),
                          ("eval.zero_shot_data", cfg.eval.zero_shot_data)):
        if location is None:
            continue
        split = key.removeprefix("data.") if key.startswith("data.") else None
        given = split is not None and getattr(cfg.data, f"{split}_manifest") is not None  # a manifest named apart
        if not is_remote(location) and not given and not (Path(location) / MANIFEST).is_file():
            if cfg.data.generate_demo:
                continue
            raise ConfigError(f"{key}={location}: no dataset there ({MANIFEST} missing); build shards with "
                              "data_prep/ or set data.generate_demo=true for the demo data")
        try:
            manifest = ShardSource.from_config(cfg.data, split).manifest if split else read_manifest(location)
            if key == "data.train":
                check_readers(cfg.data, manifest, world)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e) if str(e).startswith(key) else f"data: {e}") from e


def check_compiler(cfg: Config) -> None:
    """model.compile builds kernels with the C++ compiler torch's inductor uses ($CXX, else g++): without one the
    first step would fail deep inside torch."""
    compiler = os.environ.get("CXX", "g++")
    if cfg.model.compile and not shutil.which(compiler):
        raise ConfigError(f"model.compile=true: torch.compile needs a C++ compiler and {compiler} ($CXX, else g++) "
                          "is not on PATH; install one (e.g. apt-get install g++) or set model.compile=false")


def config_error(e: ConfigError, show: bool = True) -> int:
    """One line on stderr (from one rank once the ranks exist), exit status 2."""
    if show:
        print(f"config error: {redact(str(e))}", file=sys.stderr)
    return 2


def resolve_keep_ratio(cfg: Config, ds: DeepSpeedConfig, dist_info: DistInfo, log: RunLog,
                       checkpoints: CheckpointManager) -> Config:
    """``turbo.keep_ratio: auto`` made a number, the same on every rank.

    Rank 0 measures the largest ratio whose training step fits turbo.memory_budget_gb
    (``turbo_ds.plan.pick_keep_ratio``), or, when the run resumes, takes the ratio it started
    with: a run must not change its token budget halfway. Whatever stops the measurement (a
    budget nothing fits: the planner's ConfigError) is raised on every rank, so no rank waits
    for a ratio that never comes.
    """
    if cfg.turbo.keep_ratio != "auto":
        return cfg
    from turbo_ds.engine.distributed import broadcast_from_main

    outcome: float | Exception | None = None
    if dist_info.is_main:
        started = checkpoints.started_config()
        if started is not None:
            outcome = started["turbo"]["keep_ratio"]
            log.info(f"turbo.keep_ratio auto: {outcome:g}, as chosen when this run started ({checkpoints.latest})")
        else:
            from turbo_ds.plan import AUTO_KEEP_RATIOS, pick_keep_ratio

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


LOST_PEER = 1  # exit status when a collective failed: a rank or its node is gone (config errors exit 2, run errors 3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Everything that can be wrong with the configs fails here, before any engine starts.
    try:
        cfg = load_config(args.config, args.set)
        ds = load_ds_config(args.ds_config)
        plan = plan_batches(cfg, ds, world_from_env())
        check_data(cfg, world_from_env())
        check_compiler(cfg)
    except ConfigError as e:
        return config_error(e)

    from turbo_ds.engine.checkpoint import CheckpointManager
    from turbo_ds.engine.distributed import init_distributed, shutdown
    from turbo_ds.engine.errors import EXIT_CODE, RunDirLocked, RunError
    from turbo_ds.engine.quiet import show_repeated_warnings_once

    show_repeated_warnings_once()
    try:
        dist_info = init_distributed()
    except ConfigError as e:  # a launcher setting that contradicts where the ranks run
        return config_error(e)
    run_dir = Path(cfg.run_dir)
    checkpoints = CheckpointManager(run_dir, dist_info, cfg.train)
    lock = checkpoints.lock()
    try:
        code = train(cfg, ds, plan, dist_info, checkpoints, hold_run_dir(run_dir, lock, dist_info))
    except RunError as e:  # decided on every rank: rank 0 says why in one line, every rank exits non-zero
        if dist_info.is_main:
            print(str(e), file=sys.stderr, flush=True)
            if not isinstance(e, RunDirLocked):  # the run dir, and its train.log, are another trainer's
                _append(run_dir / "train.log", str(e))
        code = EXIT_CODE
    finally:  # also on a crash (which leaves the process group alone: its peers may sit in a collective)
        if dist_info.is_main:
            lock.release()
    if code != LOST_PEER:  # a lost peer never reaches shutdown's barrier
        shutdown()
    return code


def hold_run_dir(run_dir: Path, lock: "RunDirLock", dist_info: "DistInfo") -> str | None:
    """Rank 0 takes the run dir's lock before anything is written there; every rank learns the outcome."""
    from turbo_ds.engine.distributed import broadcast_from_main
    from turbo_ds.engine.errors import RunDirLocked

    outcome: str | RunDirLocked | None = None
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            outcome = lock.acquire()
        except RunDirLocked as e:
            outcome = e
    outcome = broadcast_from_main(outcome)
    if isinstance(outcome, RunDirLocked):
        raise outcome
    return outcome


def _append(path: Path, line: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # the line is on stderr already


def train(cfg: Config, ds: DeepSpeedConfig, plan, dist_info: "DistInfo", checkpoints: "CheckpointManager",
          lock_note: str | None) -> int:
    import torch

    from turbo_ds.data.source import ShardReadError, ShardSource
    from turbo_ds.engine.distributed import barrier, is_collective_failure
    from turbo_ds.engine.errors import EXIT_CODE
    from turbo_ds.engine.metrics import RunLog
    from turbo_ds.engine.trainer import Trainer
    from turbo_ds.tasks import build_task, task_type

    run_dir = Path(cfg.run_dir)
    log = RunLog(run_dir, dist_info.is_main)
    if lock_note:
        log.info(lock_note)
    if dist_info.is_main:
        task_type(cfg.task).prepare(cfg, log.info)  # e.g. demo data, a tokenizer trained on the captions
    try:
        cfg = resolve_keep_ratio(cfg, ds, dist_info, log, checkpoints)
    except ConfigError as e:
        return config_error(e, dist_info.is_main)
    checkpoints.record_configs(redacted(to_dict(cfg)), ds.resolved(plan))  # no credentials in the run dir
    if dist_info.is_main and ds.monitors:
        from turbo_ds.engine.monitors import Monitors

        log.attach(Monitors(ds.monitors, checkpoints.configs))
        log.info(f"metrics also go to {'; '.join(log.monitors.destinations())} (x-axis: step)")
    barrier()  # demo data and run dir exist before any rank reads them

    log.info(f"turbo_ds: task {cfg.task} | run_dir {run_dir} | {dist_info.world} rank(s) | "
             f"keep_ratio {cfg.turbo.keep_ratio} (eval {cfg.turbo.eval_keep_ratio})")
    log.info(f"ranks: {dist_info.layout()}")
    if cfg.model.compile:  # bounded by torch's recompile limit (then eager); each recompilation's reason on stderr
        torch._logging.set_logs(recompiles=True)
        log.info("model.compile: the encoder blocks compile at their first steps (cached on disk for later runs)")
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    try:
        task = build_task(cfg, ShardSource.from_config(cfg.data, "train").manifest)
    except ConfigError as e:  # checks that need the data or the tokenizer (e.g. vocab vs text model)
        return config_error(e, dist_info.is_main)
    if task.pretrained_report:
        log.info(str(task.pretrained_report))
    try:
        trainer = Trainer(cfg, ds, plan, dist_info, task, checkpoints, log)
    except ConfigError as e:  # a checkpoint that does not fit this run (another model shape or ZeRO stage)
        log.close()
        return config_error(e, dist_info.is_main)
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
    finally:
        log.close()
    return 0


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown once ``main`` has returned: by then every checkpoint, log line and
    monitor is written and closed and the process group is gone, yet destroying what torch.distributed and
    DeepSpeed leave behind still ended in std::terminate now and then (a finished run exiting 250, which a
    launcher or Slurm takes for a failure). A crash (an exception out of ``main``) still exits the usual way."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    faulthandler.enable()  # a rank that dies in native code (a signal, an abort) prints every thread's stack
    exit_now(main())
