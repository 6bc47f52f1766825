"""The one owner of checkpoint policy: where, when, atomically, and how to resume.

Layout under the run dir: ``checkpoints/step_00000500/`` (DeepSpeed format) and
``checkpoints/latest`` naming the newest *complete* one. The pointer is replaced
atomically only after every rank has finished writing, so a crash mid-save leaves the
previous checkpoint in charge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from turbo_ds.data.shards import atomic_write_bytes
from turbo_ds.engine.distributed import DistInfo, barrier


class Checkpointer:
    def __init__(self, run_dir: str | Path, dist_info: DistInfo):
        self.dir = Path(run_dir) / "checkpoints"
        self.dist = dist_info

    @property
    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        return self.dir / pointer.read_text().strip() if pointer.is_file() else None

    def save(self, engine: Any, step: int, client_state: dict[str, Any]) -> Path:
        tag = f"step_{step:08d}"
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={"step": step, **client_state}, save_latest=False)
        barrier()  # every rank's shard is on disk before the pointer moves
        if self.dist.is_main:
            atomic_write_bytes(self.dir / "latest", tag.encode())
        barrier()
        return self.dir / tag

    def load(self, engine: Any) -> dict[str, Any] | None:
        """Load the latest complete checkpoint into ``engine``; returns its client state or None."""
        latest = self.latest
        if latest is None:
            return None
        path, state = engine.load_checkpoint(str(self.dir), tag=latest.name)
        if path is None:
            raise RuntimeError(f"checkpoint {latest} could not be loaded; move it aside to start fresh")
        return state
