"""The one owner of checkpoint and resume policy, and the only code that knows the run dir's layout.

    RUN/config.yaml, RUN/ds_config.json  the resolved configs of the run (keep_ratio: auto as a number)
    RUN/checkpoints/step_00000500/       a complete checkpoint: DeepSpeed's files of every rank, plus
                                         trainer_state.json (step, data stream positions, resolved configs)
    RUN/checkpoints/latest               names the newest complete checkpoint
    RUN/COMPLETED                        the step the run finished at
    RUN/metrics.jsonl                    (RunLog) records past the step a run resumes from are dropped

Saving is atomic: every rank writes its part into ``step_X.partial/``; once all are done,
rank 0 adds ``trainer_state.json``, renames the folder to ``step_X`` and only then replaces
``latest`` (both renames are atomic), so ``latest`` always names a complete checkpoint and a
crash mid-save leaves the previous one in charge.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from turbo_ds.config import TrainConfig
from turbo_ds.engine.consolidate import fp32_state_dict
from turbo_ds.engine.distributed import DistInfo, barrier
from turbo_ds.engine.metrics import RunLog
from turbo_ds.fileio import atomic_write_bytes, atomic_write_json

TRAINER_STATE = "trainer_state.json"
PARTIAL = ".partial"
_STEP_DIR = re.compile(r"step_(\d{8})")


class NoCheckpoint(FileNotFoundError):
    """The run dir has no complete checkpoint (at the step asked for); the message lists what there is."""


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

    def save(self, engine: Any, step: int, state: dict[str, Any]) -> Path:
        """Write a complete checkpoint of ``engine`` at ``step`` with the trainer's ``state`` (collective)."""
        tag = f"step_{step:08d}"
        final, partial = self.dir / tag, self.dir / (tag + PARTIAL)
        engine.save_checkpoint(str(self.dir), tag=partial.name, client_state={}, save_latest=False)
        barrier()  # every rank's part is on disk
        if self.dist.is_main:
            atomic_write_json(partial / TRAINER_STATE, {"step": step, "world_size": self.dist.world, **state,
                                                        **self.configs})
            if final.exists():  # left by an attempt that died before moving `latest` to it (never `latest`)
                assert final != self.latest, f"{final} is the latest checkpoint; it is never written twice"
                shutil.rmtree(final)
            partial.rename(final)
            atomic_write_bytes(self.dir / "latest", tag.encode())
            self._prune()
        barrier()
        return final

    def restore(self, engine: Any, log: RunLog) -> dict[str, Any] | None:
        """Load the latest complete checkpoint into ``engine`` and rewind the metrics log to its step.

        Returns the trainer state saved with it (``step``, ``data_position``, ...) or None for a new run.
        """
        latest = self.latest
        if latest is None:
            return None
        path, client_state = engine.load_checkpoint(str(self.dir), tag=latest.name)
        if path is None:
            raise RuntimeError(f"checkpoint {latest} could not be loaded; move it aside to start fresh")
        saved = latest / TRAINER_STATE
        state = json.loads(saved.read_text()) if saved.is_file() else client_state  # older checkpoints
        log.rewind(state["step"])
        return state

    def finish(self, step: int) -> None:
        """Mark the run complete (a rerun then trains nothing; Slurm's launch helper stops requeueing)."""
        if self.dist.is_main:
            atomic_write_bytes(self.run_dir / "COMPLETED", f"{step}\n".encode())

    def _prune(self) -> None:
        """Rank 0: drop partial folders of dead saves, and complete checkpoints beyond keep_last_checkpoints."""
        for stale in self.dir.glob(f"step_*{PARTIAL}"):
            shutil.rmtree(stale, ignore_errors=True)
        keep = self.train.keep_last_checkpoints
        if keep is None:
            return
        complete = sorted(p for p in self.dir.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name))
        for old in complete[:-keep]:
            if old != self.latest:  # the newest complete checkpoint is never deleted
                shutil.rmtree(old)
