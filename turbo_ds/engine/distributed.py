"""Process-group setup and the few collectives the trainer needs.

Device discipline (what a GPU run with NCCL needs, which gloo on CPU would forgive): each rank
selects its device before the process group exists (NCCL and torch's object collectives use the
current device), and every tensor handed to a collective lives on that device (an NCCL-only group
rejects CPU tensors: "No backend type associated with device type cpu").
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from turbo_ds.config import ConfigError

SHM_BUFFER = "deepspeed_allreduce_buffer"  # DeepSpeed's CPU allreduce buffers: /dev/shm/<this>_<uid>_<addr>_<port>_<r>


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    hosts: tuple[str, ...] = ()
    "the host name of every rank, by rank"
    device: torch.device = torch.device("cpu")
    "this rank's compute device"
    devices: str = "cpu"
    "what this process trains on, in words (``usable_devices``): the device type and how many torch sees"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def layout(self) -> str:
        """The ranks on each host, e.g. ``node1: 0 1 | node2: 2 3``, and the DeepSpeed CPU shared-memory
        buffers this rank maps (one per rank when every rank is on one host, else none)."""
        by_host: dict[str, list[int]] = {}
        for rank, host in enumerate(self.hosts):
            by_host.setdefault(host, []).append(rank)
        return (f"{self.world} rank(s) on {len(by_host)} host(s): "
                + " | ".join(f"{h}: {' '.join(map(str, r))}" for h, r in by_host.items())
                + f" | DeepSpeed shm buffers mapped by rank {self.rank}: {shm_buffers_mapped()}")


def world_from_env() -> int:
    """World size as set by the deepspeed launcher, torchrun or srun (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


_device = torch.device("cpu")  # this rank's device: where tensors handed to collectives live (init_distributed)


def rank_device(local_rank: int, device_type: str, device_count: int) -> torch.device:
    """The device of the rank with ``local_rank`` on its node, given the accelerator it sees.

    One rank per device: ``<type>:<local_rank>``. A site that binds one GPU per task shows each
    task a single device, which is then index 0 (slurm/launch.sh sets LOCAL_RANK=0 there).
    """
    if device_type == "cpu":
        return torch.device("cpu")
    if not 0 <= local_rank < device_count:
        raise RuntimeError(f"LOCAL_RANK={local_rank}, but this process sees {device_count} {device_type} device(s) "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start one rank "
                           "per device, or set LOCAL_RANK=0 when each task is bound to one device")
    return torch.device(device_type, local_rank)


def select_device(local_rank: int, accelerator: Any) -> torch.device:
    """Make this rank's device the current one, before any collective (NCCL, object collectives use it)."""
    global _device
    _device = rank_device(local_rank, accelerator.device_name(), accelerator.device_count())
    if _device.type != "cpu":
        accelerator.set_device(_device.index)
    return _device


def driver_gpus() -> int:
    """GPUs the NVIDIA driver lists (``nvidia-smi -L``), whether or not torch can use them; 0 without nvidia-smi.

    MIG instances are listed under their GPU and not counted; nor is ``CUDA_VISIBLE_DEVICES`` applied:
    that is torch's view (``torch.cuda.device_count()``), which is what training uses.
    """
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):  # no nvidia-smi, or a driver that hangs: nothing listed
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def usable_devices(device_type: str | None = None) -> str:
    """What this process trains on, in words: ``device_type`` (DeepSpeed's accelerator; None: the one it will pick,
    as torch tells without importing DeepSpeed) and the devices torch sees.

    A CPU run on a machine whose driver lists GPUs is refused (ConfigError, one line) unless it was asked for
    (``DS_ACCELERATOR=cpu`` or ``CUDA_VISIBLE_DEVICES`` empty): with a CPU build of torch or a driver that does
    not match it, DeepSpeed falls back to its CPU accelerator and would train silently, and slowly, on the CPU.
    """
    if device_type is None:
        device_type = os.environ.get("DS_ACCELERATOR") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        count = torch.cuda.device_count()
        names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
        return (f"cuda, {count} device(s) torch sees ({', '.join(names)}; CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}), torch {torch.__version__}")
    if device_type != "cpu":
        return f"{device_type} (DeepSpeed's accelerator), torch {torch.__version__}"
    asked = os.environ.get("DS_ACCELERATOR") == "cpu" or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")
    gpus = 0 if asked else driver_gpus()
    if gpus:
        raise ConfigError(f"nvidia-smi lists {gpus} GPU(s), but torch {torch.__version__} cannot use them "
                          f"({_why_no_cuda()}), so DeepSpeed would train on the CPU; install the CUDA build of torch "
                          "for this driver (README \"On GPUs\"), or set DS_ACCELERATOR=cpu to train on the CPU on "
                          "purpose")
    return f"cpu ({'asked for' if asked else 'no GPU listed'}), torch {torch.__version__}"


def _why_no_cuda() -> str:
    """Why torch sees no CUDA device, in a few words: a CPU build, or CUDA's own initialisation error."""
    if torch.version.cuda is None:
        return "a CPU-only build: torch.version.cuda is None"
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 - its message is the reason (e.g. a driver older than the build)
        return f"torch.cuda.init(): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return f"torch.cuda.device_count() is {torch.cuda.device_count()}"


def init_distributed() -> DistInfo:
    """The process group (torch's, then DeepSpeed's wrapper), with every rank's host checked.

    Start-up collectives wait up to DeepSpeed's default timeout (DEEPSPEED_TIMEOUT minutes,
    10): rank 0 may prepare data or measure keep ratios meanwhile. Training shortens it with
    ``set_collective_timeout``.
    """
    import deepspeed  # imported here so config errors surface before DeepSpeed's start-up cost
    from deepspeed.accelerator import get_accelerator
    from deepspeed.constants import default_pg_timeout

    if "RANK" not in os.environ:  # plain `python turbo_ds/train.py`: a one-process group, no launcher needed
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    devices = usable_devices(get_accelerator().device_name())  # before any rank trains on a CPU by mistake
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(local_rank, get_accelerator())
    backend = get_accelerator().communication_backend_name()
    dist.init_process_group(backend, timeout=default_pg_timeout)
    hosts = _all_hosts(backend)
    check_local_size(hosts, dist.get_rank())
    deepspeed.init_distributed()  # wraps the group above; its CPU shm op reads LOCAL_SIZE
    dist.barrier()  # every rank is past DeepSpeed's init, which maps every rank's shm buffer
    _unlink_shm_buffer(dist.get_rank())
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, hosts, device, devices)


def _all_hosts(backend: str) -> tuple[str, ...]:
    """``socket.gethostname()`` of every rank, by rank (objects travel over gloo, also under NCCL)."""
    hosts: list[Any] = [None] * dist.get_world_size()
    group = None if backend == "gloo" else dist.new_group(backend="gloo")
    dist.all_gather_object(hosts, socket.gethostname(), group=group)
    return tuple(hosts)


def check_local_size(hosts: tuple[str, ...], rank: int) -> None:
    """LOCAL_SIZE (the launcher's ranks per node) must count the ranks on this host; unset, it is set (world > 1).

    DeepSpeed's CPU collectives use shared memory when LOCAL_SIZE equals the world size:
    each rank then waits for every other rank's /dev/shm buffer, which ranks on another host
    never create (a hang; on hosts that share /dev/shm, a silently wrong setup instead).
    """
    here = [r for r, h in enumerate(hosts) if h == hosts[rank]]
    given = os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE")
    if given is not None and given != str(len(here)):
        raise ConfigError(f"LOCAL_SIZE={given}: rank {rank}'s host {hosts[rank]} runs {len(here)} of the {len(hosts)} "
                          f"ranks ({' '.join(map(str, here))}); set LOCAL_SIZE/LOCAL_WORLD_SIZE to the ranks per node "
                          "(slurm/launch.sh does) or unset them")
    if len(hosts) > 1:  # one rank needs no shared-memory collectives (DeepSpeed would map a 66 MB buffer)
        os.environ["LOCAL_SIZE"] = str(len(here))


def set_collective_timeout(seconds: float) -> None:
    """Every collective from now on fails after ``seconds`` instead of waiting for a lost peer forever.

    Applied to every process group (DeepSpeed creates its own), as torchtitan does once
    training runs; torch has no public call for it.
    """
    from torch.distributed.distributed_c10d import _set_pg_timeout, _world

    if dist.is_initialized():
        for group in list(_world.pg_map):
            _set_pg_timeout(timedelta(seconds=seconds), group)


def is_collective_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective that timed out or lost its peer (gloo raises plain RuntimeErrors)."""
    text = str(e)
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(
        s in text for s in ("Timed out waiting", "Connection closed by peer", "Connection reset by peer",
                            "Socket Timeout", "NCCL communicator was aborted")))


def free_port() -> int:
    """A free TCP port, so concurrent launches (tests, a user's run) do not collide on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_buffers_mapped() -> int:
    """How many DeepSpeed CPU allreduce buffers (/dev/shm) this process maps: 0 when its shm collectives are off."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return 0
    return len({line.split(maxsplit=5)[5] for line in maps.splitlines() if SHM_BUFFER in line})  # 6th field: the path


def _unlink_shm_buffer(rank: int) -> None:
    """Remove the name of this rank's DeepSpeed CPU allreduce buffer (/dev/shm, ~66 MB per rank and port).

    DeepSpeed 0.19 never unlinks it, so every CPU run would leave one per rank in /dev/shm
    until it fills. Safe once every rank is past init: all have mapped every buffer, the
    mappings live on until exit, and a crash or kill -9 later leaves nothing behind.
    """
    name = (f"{SHM_BUFFER}_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_"
            f"{os.environ.get('MASTER_PORT')}_{rank}")
    Path("/dev/shm", name).unlink(missing_ok=True)  # absent on GPU runs (NCCL) and without the shm op


def shutdown() -> None:
    """Leave the process group on every rank before exit: no rank goes while a peer still waits in a collective,
    and its threads stop while the interpreter is alive (train.py then exits without teardown: ``exit_now``)."""
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


def all_reduce_sum(values: list[float | torch.Tensor]) -> list[float]:
    """Elementwise sums over ranks (float64, on this rank's device: NCCL takes no CPU tensors).

    A value may be a 0-d tensor on the device (a loss): it reaches the collective without a host sync.
    """
    if any(isinstance(v, torch.Tensor) for v in values):
        t = torch.stack([torch.as_tensor(v, device=_device).detach().to(torch.float64).reshape(()) for v in values])
    else:
        t = torch.tensor(values, dtype=torch.float64, device=_device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()
