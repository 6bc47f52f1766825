#!/usr/bin/env python
"""Train a video Transformer with Turbo token dropout on DeepSpeed.

    deepspeed [--num_gpus N] turbo_ds/train.py --ds_config ds_configs/zero2_bf16.json \\
        --config configs/demo_action_cls.yaml [--set key=value ...]

Rerunning with the same run_dir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):  # run as a script (the deepspeed launcher does): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbo_ds.config import (ConfigError, check_finetune_lr, load_config, load_ds_config,  # noqa: E402
                             plan_batches)
from turbo_ds.data.datasets import open_datasets  # noqa: E402
from turbo_ds.data.locations import redact  # noqa: E402
from turbo_ds.engine.checkpoint import CheckpointManager  # noqa: E402
from turbo_ds.engine.distributed import init_distributed, shutdown, usable_devices, world_from_env  # noqa: E402
from turbo_ds.engine.errors import EXIT_CODE, RunDirLocked, RunError  # noqa: E402
from turbo_ds.engine.guard import PreemptionFlag  # noqa: E402
from turbo_ds.engine.quiet import show_repeated_warnings_once  # noqa: E402
from turbo_ds.models.vit import check_compiler  # noqa: E402
from turbo_ds.tasks import checked  # noqa: E402
from turbo_ds.trainer import LOST_PEER, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment recipe (configs/*.yaml)")
    p.add_argument("--ds_config", required=True, help="DeepSpeed JSON (ds_configs/*.json): batch, optimizer, precision, ZeRO")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set turbo.keep_ratio=0.5 --set run_dir=runs/x (repeatable)")
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    return p.parse_args(argv)


def config_error(e: ConfigError, show: bool = True) -> int:
    """One line on stderr (from one rank once the ranks exist), exit status 2."""
    if show:
        print(f"config error: {redact(str(e))}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    preemption = PreemptionFlag()  # first: Slurm's warning (USR1) or a TERM during start-up stops at step 1
    args = parse_args(argv)
    # Everything that can be wrong with the configs fails here, before any engine starts.
    try:
        cfg = load_config(args.config, args.set)
        ds = load_ds_config(args.ds_config)
        plan = plan_batches(cfg, ds, world_from_env())
        check_finetune_lr(cfg, ds, plan, args.ds_config)  # the recipe's JSON first, before the files it names
        cfg = checked(cfg)
        usable_devices()  # GPUs that torch cannot use stop here, not in a slow CPU run
        check_compiler(cfg.model)
        datasets = open_datasets(cfg.data, world_from_env(), cfg.train.collective_timeout_s)  # None: the demo
    except ConfigError as e:
        return config_error(e)
    show_repeated_warnings_once()
    try:
        dist_info = init_distributed()
    except ConfigError as e:  # a launcher setting that contradicts where the ranks run
        return config_error(e)
    run_dir = Path(cfg.run_dir)
    checkpoints = CheckpointManager(run_dir, dist_info, cfg.train)
    lock = checkpoints.lock()
    try:
        code = run(cfg, ds, plan, datasets, dist_info, checkpoints, lock, preemption)
    except ConfigError as e:  # found once the ranks exist: the data, a tokenizer, a checkpoint of another shape
        code = config_error(e, dist_info.is_main)
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


def _append(path: Path, line: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # the line is on stderr already


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
