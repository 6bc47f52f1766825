"""Process-group setup and the few collectives the trainer needs."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> int:
    """World size as set by the deepspeed launcher, torchrun or srun (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> DistInfo:
    import deepspeed  # imported here so config errors surface before DeepSpeed's start-up cost

    if "RANK" not in os.environ:  # plain `python turbo_ds/train.py`: a one-process group, no launcher needed
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    deepspeed.init_distributed()
    dist.barrier()  # every rank is past DeepSpeed's init, which maps every rank's shm buffer
    _unlink_shm_buffer(dist.get_rank())
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def free_port() -> int:
    """A free TCP port, so concurrent launches (tests, a user's run) do not collide on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unlink_shm_buffer(rank: int) -> None:
    """Remove the name of this rank's DeepSpeed CPU allreduce buffer (/dev/shm, ~66 MB per rank and port).

    DeepSpeed 0.19 never unlinks it, so every CPU run would leave one per rank in /dev/shm
    until it fills. Safe once every rank is past init: all have mapped every buffer, the
    mappings live on until exit, and a crash or kill -9 later leaves nothing behind.
    """
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_"
            f"{os.environ.get('MASTER_PORT')}_{rank}")
    Path("/dev/shm", name).unlink(missing_ok=True)  # absent on GPU runs (NCCL) and without the shm op


def shutdown() -> None:
    """Leave the process group on every rank before exit, so its threads stop while the interpreter is
    alive (left to interpreter teardown, ZeRO-3 runs sometimes ended in std::terminate, exit 250)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    box = [obj]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a preemption signal seen by one rank)."""
    return all_reduce_sum([float(flag)])[0] > 0
