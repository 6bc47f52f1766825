"""The one owner of checkpoint and resume policy, and the only code that knows the run dir's layout.

    RUN/config.yaml, RUN/ds_config.json  the resolved configs of the run (keep_ratio: auto as a number)
    RUN/checkpoints/step_00000500/       a complete checkpoint: DeepSpeed's files of every rank, plus
                                         trainer_state.json: one JSON object holding the ``state_dict()`` of
                                         every state handed to ``save`` (the trainer's step, guard and wall
                                         clock; the stream's positions and layout), the step, the world size
                                         and the resolved configs
    RUN/checkpoints/step_00000500.universal/  its DeepSpeed universal copy, made once when a run resumes
                                         at another world size (a cache: made again when missing)
    RUN/checkpoints/latest               names the newest complete checkpoint
    RUN/COMPLETED                        the step the run finished at
    RUN/metrics.jsonl                    (RunLog) records past the step a run resumes from are dropped

    RUN/lock.json                        (RunDirLock) the trainer that holds the run dir
    RUN/checkpoints/step_X.diverged/     a checkpoint whose weights gave the bad losses that stopped a run;
                                         ``step_X.diverged.2``, ``.3``... when reruns diverge there again

Saving is atomic: every rank writes its part into ``step_X.partial/``; once all are done,
rank 0 adds ``trainer_state.json``, renames the folder to ``step_X`` and only then replaces
``latest`` (both renames are atomic), so ``latest`` always names a complete checkpoint and a
crash (or ``kill -9``) mid-save leaves the previous one in charge. It is durable too: each rank
fsyncs the files it wrote, and rank 0 the folder and each rename before the next step, so a power
loss cannot leave ``latest`` naming a folder whose bytes never reached the disk. A save that fails on any
rank (disk full, I/O or permission error) is agreed on by every rank: the partial folder is
removed, ``latest`` and the previous checkpoint stay as they were, and the run stops with one
line naming the cause (``train.ckpt_failure: stop``) or trains on and retries at the next
interval (``continue``; the last step and stop signals always stop). Old checkpoints (and universal
copies) are renamed to ``step_X.deleting`` before their removal, so a folder named ``step_X`` or
``step_X.universal`` is always complete. Pruning runs once ``latest`` has moved: a deletion that fails is
logged and the save still counts. ``keep_last_checkpoints`` N also keeps only the N newest
``step_X.diverged*`` folders (by step, then by rerun).

Elastic resume: ZeRO partitions the optimizer state by data-parallel rank, so a checkpoint
written by W ranks loads as it is only on W ranks. At another world size, rank 0 converts
it once with DeepSpeed's ``ds_to_universal`` (DeepSpeed#3810) into ``step_X.universal.partial/``,
renamed to ``step_X.universal/`` when complete, and the engine loads that with
``"checkpoint": {"load_universal": true}``. ZeRO stage 0 keeps the whole optimizer state on
every rank and loads as it is. The data streams regroup themselves (``data/position.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import yaml

from turbo_ds.config import BatchPlan, ConfigError, DeepSpeedConfig, TrainConfig
from turbo_ds.engine.consolidate import fp32_state_dict
from turbo_ds.engine.distributed import DistInfo, barrier, broadcast_from_main, is_collective_failure
from turbo_ds.engine.errors import CheckpointLoadError, CheckpointWriteError
from turbo_ds.engine.gather import all_gather_objects
from turbo_ds.engine.lock import RunDirLock
from turbo_ds.engine.metrics import RunLog
from turbo_ds.fileio import atomic_write_bytes, atomic_write_json, fsync_dir, fsync_file

TRAINER_STATE = "trainer_state.json"
PARTIAL, DELETING, DIVERGED, UNIVERSAL = ".partial", ".deleting", ".diverged", ".universal"
_STEP_DIR = re.compile(r"step_(\d{8})")
_DIVERGED_DIR = re.compile(r"step_(\d{8})\.diverged(?:\.(\d+))?")


class Stateful(Protocol):
    """What a checkpoint keeps besides the engine: its ``state_dict`` keys are its own (one flat JSON object holds
    them all), and ``load_state_dict`` gets that whole object back, old layouts already brought up to date."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoCheckpoint(FileNotFoundError):
    """The run dir has no complete checkpoint (at the step asked for); the message lists what there is."""


@dataclass
class Resume:
    """How the run resumes: from checkpoint ``path``, whose DeepSpeed files the engine loads as ``tag``
    (``path.name``, or its universal copy's name when ``universal``)."""

    path: Path
    tag: str
    state: dict[str, Any] | None  # trainer_state.json (None in checkpoints older than it)
    universal: bool = False


def saved_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape in the DeepSpeed checkpoint ``path``, read without loading the tensors."""
    import torch

    files = sorted(path.glob("*model_states.pt"))
    if not files:
        return {}
    saved = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
    shapes = {n: tuple(s) for group in saved.get("param_shapes") or [] for n, s in group.items()}  # ZeRO 1-3
    shapes.update({n: tuple(s) for n, s in (saved.get("frozen_param_shapes") or {}).items()})
    return shapes or {n: tuple(t.shape) for n, t in (saved.get("module") or {}).items()}  # no ZeRO: the weights


class CheckpointManager:
    """When to save, how to save and load, and what a resumed run keeps; every rank holds one."""

    def __init__(self, run_dir: str | Path, dist_info: DistInfo, train: TrainConfig):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.dist, self.train = dist_info, train
        self.configs: dict[str, Any] = {}

    @classmethod
    def reader(cls, run_dir: str | Path) -> CheckpointManager:
        """A manager that only reads checkpoints, in one process (export, predict)."""
        return cls(run_dir, DistInfo(0, 1, 0), TrainConfig())

    # ------------------------------------------------------------ layout

    def complete(self) -> dict[int, Path]:
        """Every complete checkpoint by step, oldest first (an unfinished save is still ``step_X.partial``)."""
        folders = sorted(self.dir.iterdir()) if self.dir.is_dir() else []
        return {int(p.name[len("step_"):]): p for p in folders if p.is_dir() and _STEP_DIR.fullmatch(p.name)}

    def find(self, step: int | None = None) -> Path:
        """The complete checkpoint at ``step`` (default: the latest); NoCheckpoint names the ones there are."""
        complete = self.complete()
        if not complete:
            raise NoCheckpoint(f"{self.run_dir}: no complete checkpoint in {self.dir} (a run saves one every "
                               "train.ckpt_every steps and at its end; an interrupted save leaves only step_X.partial)")
        if step is None:
            return self.latest or complete[max(complete)]
        if step not in complete:
            raise NoCheckpoint(f"{self.run_dir}: no checkpoint at step {step}; complete checkpoints are at steps "
                               f"{', '.join(map(str, complete))}")
        return complete[step]

    @staticmethod
    def trainer_state(checkpoint: Path) -> dict[str, Any]:
        """What the trainer saved with ``checkpoint``: step, data positions, the resolved configs."""
        return json.loads((checkpoint / TRAINER_STATE).read_text())

    @staticmethod
    def fp32_weights(checkpoint: Path, groups: list[list[str]]) -> tuple[dict[str, Any], str]:
        """The model's full float32 state from ``checkpoint``, any ZeRO stage and world size (``consolidate``)."""
        return fp32_state_dict(checkpoint, groups)

    @property
    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        return self.dir / pointer.read_text().strip() if pointer.is_file() else None

    def started_config(self) -> dict[str, Any] | None:
        """The resolved config the run was started with (from its newest checkpoint), or None for a new run."""
        latest = self.latest
        if latest is None:
            return None
        state = latest / TRAINER_STATE
        if state.is_file():
            return json.loads(state.read_text())["config"]
        saved = self.run_dir / "config.yaml"  # checkpoints written before trainer_state.json existed
        return yaml.safe_load(saved.read_text()) if saved.is_file() else None

    def record_configs(self, config: dict[str, Any], ds_config: dict[str, Any]) -> None:
        """Remember the run's resolved configs for every checkpoint; rank 0 writes them into the run dir."""
        self.configs = {"config": config, "ds_config": ds_config}
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
            atomic_write_bytes(self.run_dir / "ds_config.json", (json.dumps(ds_config, indent=2) + "\n").encode())

    # ------------------------------------------------------------ policy

    def due(self, step: int, total: int, stop: bool) -> bool:
        """Save every ``train.ckpt_every`` steps, at the last step, and when the run stops early."""
        return step % self.train.ckpt_every == 0 or step == total or stop

    def save(self, engine: Any, step: int, states: Mapping[str, Stateful], log: RunLog,
             last: bool = False) -> Path | None:
        """Write a complete checkpoint of ``engine`` at ``step`` with the ``state_dict()`` of each of ``states``
        (collective: a state may gather over ranks).

        Returns its folder, or None when it failed and ``train.ckpt_failure`` is ``continue`` (the
        failure is logged); raises CheckpointWriteError when it failed otherwise, or when ``last``
        (the final step, a stop signal: no later interval to retry at).
        """
        tag = f"step_{step:08d}"
        final, partial = self.dir / tag, self.dir / (tag + PARTIAL)
        state = {k: v for owner in states.values() for k, v in owner.state_dict().items()}
        try:
            # Rank 0 makes the folder first: DeepSpeed's own makedirs would fail before its opening barrier.
            error = self._agree(self._main_only(lambda: _fresh_dir(partial)))
            if error is None:
                error = self._agree(_deepspeed_save(engine, partial, self.dist.rank))
            if error is None:
                error = self._agree(self._main_only(lambda: self._publish(partial, final, tag, step, state)))
        except RuntimeError as e:  # a peer lost mid-save (the run ends): this save can never complete
            if is_collective_failure(e) and self.dist.is_main:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        if error is None:
            if self.dist.is_main:
                self._tidy(log.info)
            return final
        if self.dist.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        barrier()
        previous = self.latest
        message = (f"checkpoint error: step {step} could not be written to {self.dir} ({error}; {_space(previous)}); "
                   + (f"the previous checkpoint {previous.name} and `latest` are intact" if previous else
                      "no earlier checkpoint exists"))
        if last or self.train.ckpt_failure == "stop":
            raise CheckpointWriteError(f"{message}; free space or fix the file system, then rerun with the same "
                                       "run_dir to resume (or set train.ckpt_failure=continue to train on and retry "
                                       "at the next interval)")
        log.info(f"warning: {message}; training continues and retries at the next interval "
                 "(train.ckpt_failure=continue)")
        return None

    def _publish(self, partial: Path, final: Path, tag: str, step: int, state: dict[str, Any]) -> None:
        """Rank 0, every rank's part written and fsynced: trainer state, then the renames that make the checkpoint
        count, each on the disk before the next (a power loss leaves `latest` naming a complete checkpoint)."""
        # Durable with the folder's entries: DeepSpeed's files are named in the same directory, fsynced with it.
        atomic_write_json(partial / TRAINER_STATE, {"step": step, "world_size": self.dist.world, **state,
                                                    **self.configs})
        if final.exists():  # left by an attempt that died before moving `latest` to it (never `latest`)
            assert final != self.latest, f"{final} is the latest checkpoint; it is never written twice"
            _remove(final)
        partial.rename(final)
        fsync_dir(self.dir)
        try:
            atomic_write_bytes(self.dir / "latest", tag.encode())
        except OSError:
            final.rename(partial)  # `latest` still names the previous one: this one goes with the partial folder
            raise

    def _main_only(self, action: Callable[[], None]) -> str | None:
        """Run ``action`` on rank 0; the reason it failed, or None."""
        if not self.dist.is_main:
            return None
        try:
            action()
        except OSError as e:
            return _describe(e)
        return None

    def _agree(self, error: str | None) -> str | None:
        """Collective: the first rank's error (``rank r: ...``), or None if every rank succeeded."""
        errors = all_gather_objects(error)
        return next((f"rank {r}: {e}" if len(errors) > 1 else e for r, e in enumerate(errors) if e), None)

    def prepare_resume(self, model: Any, ds: DeepSpeedConfig, plan: BatchPlan,
                       log: Callable[[str], None]) -> Resume | None:
        """Decide, before the engine exists, how the latest checkpoint is loaded (collective); None for a new run.

        A checkpoint of another model shape stops with a ConfigError naming the first tensor that
        differs. At another world size with ZeRO stage >= 1, rank 0 makes (once) the universal copy
        that the engine must load with ``checkpoint.load_universal`` (``Resume.universal``).
        """
        latest = self.latest
        if latest is None:
            return None
        saved = latest / TRAINER_STATE
        state = json.loads(saved.read_text()) if saved.is_file() else None
        self._check_model(latest, state, model)
        # Its optimizer files are laid out for the ZeRO stage it was written with (when it records its DeepSpeed JSON:
        # the trainer's always do).
        saved_ds = DeepSpeedConfig(state["ds_config"]) if state and "ds_config" in state else None
        if saved_ds is not None and saved_ds.zero_stage != ds.zero_stage:
            raise ConfigError(f"ds_config zero_optimization.stage={ds.zero_stage}: checkpoint {latest} was written "
                              f"with ZeRO stage {saved_ds.zero_stage} by {state['world_size']} rank(s); resume with "
                              f"zero_optimization.stage={saved_ds.zero_stage} (or use a new run_dir)")
        if state is None or state["world_size"] == self.dist.world:
            return Resume(latest, latest.name, state)
        change = (f"elastic resume: checkpoint {latest.name} was written by {state['world_size']} rank(s), this run "
                  f"has {self.dist.world}; global batch {saved_ds.global_batch} -> {plan.global_size} clips/step")
        if saved_ds.zero_stage == 0:  # every rank holds the whole optimizer state: it loads at any world size
            log(f"{change}; ZeRO stage 0 loads it as it is")
            return Resume(latest, latest.name, state)
        universal = latest.with_name(latest.name + UNIVERSAL)
        outcome = self._convert(latest, universal, change, log) if self.dist.is_main else None
        outcome = broadcast_from_main(outcome)  # every rank waits for rank 0's conversion, and fails with it
        if outcome is not None:
            raise CheckpointLoadError(outcome)
        return Resume(latest, universal.name, state, universal=True)

    def _check_model(self, path: Path, state: dict[str, Any] | None, model: Any) -> None:
        """A checkpoint of another model shape is a config error naming the first tensor that differs."""
        theirs = saved_shapes(path)
        ours = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        differ = [f"{n} is {theirs[n]} there, {ours[n]} here" for n in theirs if n in ours and theirs[n] != ours[n]]
        differ += [f"it has {n}, this model has not" for n in theirs if n not in ours]
        differ += [f"this model has {n}, it has not" for n, _ in model.named_parameters() if n not in theirs]
        if not theirs or not differ:
            return
        before, now = (state or {}).get("config", {}).get("model", {}), self.configs.get("config", {}).get("model", {})
        keys = [f"model.{k} {before[k]} there, {now.get(k)} here" for k in before if before[k] != now.get(k)]
        raise ConfigError(f"model: checkpoint {path} holds another model shape: {differ[0]}"
                          + (f" ({len(differ) - 1} more differ)" if len(differ) > 1 else "")
                          + (f"; {', '.join(keys[:3])}" if keys else "")
                          + "; resume with the model settings it was trained with, or use a new run_dir")

    def _convert(self, source: Path, target: Path, change: str, log: Callable[[str], None]) -> str | None:
        """Rank 0: make ``target``, the universal copy of ``source``, unless a complete one exists; an error or None."""
        if target.is_dir():
            log(f"{change}; loading its universal copy {target.name}, made earlier")
            return None
        partial = target.with_name(target.name + PARTIAL)
        shutil.rmtree(partial, ignore_errors=True)
        # DeepSpeed also writes a `latest_universal` pointer beside its output folder: inside partial/, removed with it.
        # A separate process: the conversion holds every rank's shard in memory, which it gives back on exit.
        workers = max(1, len(os.sched_getaffinity(0)) // 2)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
               "--output_folder", str(partial / target.name), "--inject_missing_state",
               "--num_extract_workers", str(workers), "--num_merge_workers", str(max(1, workers // 2))]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:  # e.g. a full disk: the partial copy goes, the checkpoint itself is untouched
            shutil.rmtree(partial, ignore_errors=True)
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
            return (f"checkpoint error: converting checkpoint {source} to a universal checkpoint failed: {last[0]}; "
                    "fix the cause and rerun (the checkpoint is intact), or resume on the world size it was written by")
        (partial / target.name).rename(target)
        shutil.rmtree(partial)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        log(f"{change}; converted it to a universal checkpoint in {time.perf_counter() - start:.1f} s "
            f"({target.name}, {size / 2**20:.1f} MB, kept for later resumes)")
        return None

    def restore(self, engine: Any, log: RunLog, resume: Resume | None, states: Mapping[str, Stateful]) -> bool:
        """Load ``resume`` (``prepare_resume``'s answer) into ``engine`` and each of ``states``, and rewind the
        metrics log to its step; False for a new run (nothing loaded; the log rewound to step 0, dropping what an
        earlier run left in this run dir without a checkpoint, whose steps this run trains again).

        The peak LR is the DeepSpeed JSON's, not the checkpoint's (DeepSpeed would restore the
        scheduler's base LRs): a run resumed with a lower LR after a divergence trains at that LR.
        """
        if resume is None:
            log.rewind(0)
            return False
        configured = list(engine.lr_scheduler.base_lrs)
        path, client_state = engine.load_checkpoint(str(self.dir), tag=resume.tag)
        if path is None:
            raise CheckpointLoadError(f"checkpoint error: {self.dir / resume.tag} could not be loaded (DeepSpeed "
                                      "found no checkpoint files there); move it aside and point checkpoints/latest "
                                      "at an earlier step_X folder, or use a new run_dir to start fresh")
        _keep_configured_lr(engine.lr_scheduler, configured, log)
        state = _up_to_date(resume.state or client_state, self.dist.world)
        for owner in states.values():
            owner.load_state_dict(state)
        log.rewind(state["step"])
        return True

    def roll_back(self, step: int) -> Path | None:
        """Checkpoints from ``step`` on hold weights that produced bad losses: rename them to ``step_X.diverged``
        and point ``latest`` at the newest one before (or remove it). Returns that one, or None (collective)."""
        if self.dist.is_main:
            complete = self.complete()
            for bad in (p for s, p in complete.items() if s >= step):
                bad.rename(_unused(bad.with_name(bad.name + DIVERGED)))  # a rerun may diverge at the same step
            good = [p for s, p in complete.items() if s < step]
            if good:
                atomic_write_bytes(self.dir / "latest", good[-1].name.encode())
            else:
                (self.dir / "latest").unlink(missing_ok=True)
            # The diverged ones' universal copies go too (a resume converts the good one). The run stops with the
            # divergence line on stderr: a pruning failure is a warning above it.
            self._tidy(lambda line: print(line, file=sys.stderr, flush=True))
        barrier()
        return self.latest

    def finish(self, step: int) -> None:
        """Mark the run complete (a rerun then trains nothing; Slurm's launch helper stops requeueing)."""
        if self.dist.is_main:
            atomic_write_bytes(self.run_dir / "COMPLETED", f"{step}\n".encode())

    def _prune(self) -> None:
        """Rank 0: drop leftovers of dead saves, conversions and deletions, universal copies of older checkpoints,
        and complete checkpoints beyond keep_last_checkpoints."""
        for stale in [*self.dir.glob(f"step_*{PARTIAL}"), *self.dir.glob(f"step_*{DELETING}")]:
            shutil.rmtree(stale, ignore_errors=True)
        for tmp in self.dir.glob(".latest.tmp*"):  # an atomic write of `latest` killed halfway
            tmp.unlink(missing_ok=True)
        latest = self.latest
        for copy in self.dir.glob(f"step_*{UNIVERSAL}"):  # a cache, worth keeping for the latest only
            if latest is None or copy.name != latest.name + UNIVERSAL:
                _remove(copy)
        keep = self.train.keep_last_checkpoints
        if keep is None:
            return
        for old in list(self.complete().values())[:-keep]:
            if old != self.latest:  # the newest complete checkpoint is never deleted
                _remove(old)
        diverged = {tuple(int(n or 1) for n in m.groups()): p for p in self.dir.iterdir()
                    if (m := _DIVERGED_DIR.fullmatch(p.name))}
        for order in sorted(diverged)[:-keep]:  # (step, rerun): the newest N stay for a post-mortem
            _remove(diverged[order])

    def _tidy(self, log: Callable[[str], None]) -> None:
        """Rank 0, once `latest` has moved: prune. What precedes is complete whatever happens here, so a deletion
        that fails is logged (the folders stay until the next save prunes them), not raised."""
        try:
            self._prune()
        except OSError as e:
            log(f"warning: checkpoint pruning in {self.dir} failed ({_describe(e)}); the folders it meant to delete "
                "stay until a later save prunes them")

    def lock(self) -> RunDirLock:
        """The run dir's lock (rank 0 holds it for the whole run)."""
        return RunDirLock(self.run_dir / "lock.json")


def _up_to_date(state: dict[str, Any], world: int) -> dict[str, Any]:
    """A saved trainer state in today's layout: the fallbacks for checkpoints written by older versions."""
    state = dict(state)  # older checkpoints keep it in DeepSpeed's client state (no trainer_state.json)
    state.setdefault("guard", {})
    state.setdefault("wall_s", 0.0)
    if "data_position" in state and not state.get("data_layout"):
        # Checkpoints older than data_layout were written by world_size ranks x num_workers streams, no change.
        state["data_layout"] = {"ranks": state.get("world_size", world),
                                "workers": max(1, state["config"]["data"]["num_workers"])}
    return state


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # left by a save that was killed
    path.mkdir(parents=True)


def _unused(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3``... the first name that is free."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder so that no step_X name ever shows a half-deleted one."""
    doomed = folder.with_name(folder.name + DELETING)
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _describe(e: BaseException) -> str:
    """The cause in a few words: the OS error, or the first line of torch.save's "file write failed"."""
    if isinstance(e, OSError):
        return f"{e.strerror or type(e).__name__}" + (f": {e.filename}" if e.filename else "")
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _space(previous: Path | None) -> str:
    """Free space on the checkpoint file system next to what the last checkpoint took: a full disk shows."""
    if previous is None:
        return "no earlier checkpoint to compare with"
    try:
        free = shutil.disk_usage(previous).free
        used = sum(f.stat().st_size for f in previous.iterdir() if f.is_file())
    except OSError as e:
        return f"free space unknown: {e.strerror}"
    return f"{free / 2**20:.1f} MiB free, the previous checkpoint took {used / 2**20:.1f} MiB"


def written_by(name: str) -> int:
    """The rank that wrote DeepSpeed checkpoint file ``name``: R of ``zero_pp_rank_R_`` (each rank's optimizer
    partition, and with ZeRO-3 its model-states file), else rank 0 (``mp_rank_00_model_states.pt``, ...)."""
    m = re.search(r"zero_pp_rank_(\d+)_", name)
    return int(m.group(1)) if m else 0


def _deepspeed_save(engine: Any, folder: Path, rank: int) -> str | None:
    """This rank's part of DeepSpeed's save into ``folder``, its files fsynced; the reason it failed, or None.

    A rank whose write fails (torch.save raises RuntimeError for a full disk, OSError for
    permissions) left DeepSpeed's save_checkpoint before its closing barrier, so it takes that
    barrier here: in DeepSpeed 0.19 (pinned) every write comes after the opening barrier and tag
    check and before the closing barrier, with no collective in between (the disk-full test runs
    2 ranks through this).
    """
    try:
        engine.save_checkpoint(str(folder.parent), tag=folder.name, client_state={}, save_latest=False)
    except Exception as e:  # noqa: BLE001 - whatever the write raised, the ranks must agree on it
        barrier()
        return _describe(e)
    try:  # torch.save only closes its files: each rank makes its own reach the disk (where its writes are)
        for file in folder.iterdir():
            if file.is_file() and written_by(file.name) == rank:
                fsync_file(file)
    except OSError as e:
        return _describe(e)
    return None


def _keep_configured_lr(scheduler: Any, configured: list[float], log: RunLog) -> None:
    """Put back the peak LRs of this run's DeepSpeed JSON after a checkpoint restored its own."""
    restored = list(scheduler.base_lrs)
    if restored == configured:
        return
    scheduler.base_lrs = configured
    for group, base, factor in zip(scheduler.optimizer.param_groups, configured, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    log.info(f"optimizer lr: the DeepSpeed JSON's {max(configured):.3g} replaces the checkpoint's {max(restored):.3g}")
