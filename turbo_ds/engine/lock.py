"""One trainer per run dir: ``RUN/lock.json`` names the trainer that holds it.

Rank 0 takes the lock before anything is written into the run dir, refreshes its heartbeat from
a background thread and removes it when the trainer exits (also on errors). A second trainer
stops at once with one line naming the holder (host, PID, Slurm job, heartbeat age), unless
the holder is dead, which is decided by what the newcomer can check:

* same host: the holder's PID is gone (or now belongs to a process started at another time);
* another host: its heartbeat is older than ``stale_s``;
* an earlier attempt of the same Slurm job (a requeue): it is dead once its heartbeat is older
  than ``stale_s``; the newcomer waits that long for it, and stops if the heartbeat moves.

A dead holder's lock is taken over (renamed away atomically, so two newcomers cannot both take
it) and the take-over is logged.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

from turbo_ds.engine.distributed import DistInfo, broadcast_from_main
from turbo_ds.engine.errors import RunDirLocked
from turbo_ds.fileio import atomic_write_bytes

HEARTBEAT_S = 15.0
STALE_S = 120.0  # 8 missed heartbeats: a holder this quiet is dead (or cut off from the file system)


@dataclass
class Holder:
    host: str
    pid: int
    start_ticks: int | None
    "the process's start time (/proc/PID/stat), which tells a reused PID from the holder"
    job_id: str | None
    "SLURM_JOB_ID (a requeued job keeps it)"
    restart: int
    "SLURM_RESTART_COUNT: which attempt of the job"
    started: float
    heartbeat: float
    token: str

    @classmethod
    def me(cls, now: float) -> "Holder":
        env = os.environ
        return cls(socket.gethostname(), os.getpid(), _start_ticks(os.getpid()), env.get("SLURM_JOB_ID"),
                   int(env.get("SLURM_RESTART_COUNT", "0")), now, now, uuid.uuid4().hex)

    def describe(self, now: float) -> str:
        job = f", Slurm job {self.job_id}" + (f" attempt {self.restart}" if self.restart else "") if self.job_id else ""
        return (f"PID {self.pid} on {self.host}{job}, started {time.strftime('%F %T', time.localtime(self.started))}, "
                f"heartbeat {max(0.0, now - self.heartbeat):.0f} s ago")


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name in parentheses


def pid_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether process ``pid`` exists on this host and is the one that started at ``start_ticks``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _start_ticks(pid)
    return start_ticks is None or now is None or now == start_ticks


def judge(holder: Holder, me: Holder, now: float, stale_s: float,
          alive: Callable[[int, int | None], bool] = pid_alive) -> Literal["live", "dead", "wait"]:
    """Whether the holder of a lock still runs, as far as ``me`` can tell (see the module docstring)."""
    if holder.host == me.host:
        return "live" if alive(holder.pid, holder.start_ticks) else "dead"
    if now - holder.heartbeat > stale_s:
        return "dead"
    if holder.job_id is not None and holder.job_id == me.job_id and holder.restart < me.restart:
        return "wait"  # an earlier attempt of this job, on a node that may not have noticed it is gone
    return "live"


class RunDirLock:
    def __init__(self, path: str | Path, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.path = Path(path)
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.me: Holder | None = None
        self.lost: str | None = None  # why this holder lost the lock (the trainer stops every rank on it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, dist_info: DistInfo) -> str | None:
        """Rank 0 takes the lock before anything is written to the run dir; every rank learns the outcome
        (collective): the line to log, or RunDirLocked raised on every rank."""
        outcome: str | RunDirLocked | None = None
        if dist_info.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                outcome = self.acquire()
            except RunDirLocked as e:
                outcome = e
        outcome = broadcast_from_main(outcome)
        if isinstance(outcome, RunDirLocked):
            raise outcome
        return outcome

    def acquire(self) -> str | None:
        """Take the lock; returns a line to log when a dead holder's lock was taken over. Raises RunDirLocked."""
        self.me, note, waited_for = Holder.me(time.time()), None, None
        while True:
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="run-dir-heartbeat", daemon=True)
                self._thread.start()
                return note
            holder = self._read()
            if holder is None:
                continue  # it vanished (released or taken over meanwhile): try again
            now = time.time()
            verdict = judge(holder, self.me, now, self.stale_s)
            if verdict == "wait" and waited_for in (None, holder.heartbeat):
                waited_for = holder.heartbeat
                time.sleep(min(self.heartbeat_s, self.stale_s))
                continue
            if verdict != "dead":
                raise RunDirLocked(f"run dir locked: {self.path.parent} is in use by the trainer {holder.describe(now)}; "
                                   f"stop that trainer or use another run_dir (delete {self.path} only if you are "
                                   "sure it is dead)")
            stale = self.path.with_name(f"{self.path.name}.stale.{self.me.token}")
            try:
                self.path.rename(stale)  # atomic: of two newcomers, one takes it over
            except FileNotFoundError:
                continue
            stale.unlink(missing_ok=True)
            note = f"run dir lock: took over from a dead trainer ({holder.describe(now)})"

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self.me), indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self, attempts: int = 20) -> Holder | None:
        """The current holder; a lock that stays unreadable (no JSON after ~2 s) counts as a dead one's."""
        for _ in range(attempts):
            try:
                return Holder(**json.loads(self.path.read_text()))
            except FileNotFoundError:
                return None
            except (ValueError, TypeError):
                time.sleep(0.1)  # a holder between creating the file and writing it
        return Holder("?", -1, None, None, 0, 0.0, 0.0, "unreadable")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self._read(attempts=1)
                if holder is None or holder.token != self.me.token:
                    print(f"warning: run dir lock {self.path} was taken over by another trainer", flush=True)
                    return
                self.me.heartbeat = time.time()
                atomic_write_bytes(self.path, (json.dumps(asdict(self.me), indent=1) + "\n").encode())
            except OSError:
                pass  # a full or flaky file system: the next beat tries again

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        holder = self._read(attempts=1)
        if holder is not None and holder.token == self.me.token:
            self.path.unlink(missing_ok=True)
