"""One trainer per run dir: ``RUN/lock.json`` names the trainer that holds it.

Rank 0 takes the lock before anything is written into the run dir and keeps its file open: the lock is
that file standing at ``RUN/lock.json``. A background thread rewrites its heartbeat in place (in the
holder's own file, so a late beat can never overwrite another trainer's lock) and checks that the file at
``RUN/lock.json`` is still its own; the lock is removed when the trainer exits (also on errors). The
thread sets ``RunDirLock.lost``, a one-line reason, when the lock was taken over or removed, or when the
heartbeat could not be written for ``stale_s / 2`` (a full or failing file system, before another host may
judge the holder dead): the trainer stops then.

A second trainer stops at once with one line naming the holder (host, PID, Slurm job, heartbeat age),
unless the holder is dead, which is decided by what the newcomer can check:

* the same kernel boot and PID namespace (``pid_namespace``): the holder's PID is gone (or now belongs to
  a process started at another time);
* anywhere else (another host, another container on this one): its heartbeat is older than ``stale_s``;
* an earlier attempt of the same Slurm job (a requeue): it is dead once its heartbeat is older than
  ``stale_s``; the newcomer waits that long for it, and stops if the heartbeat moves.

Taking the lock has one winner: a new lock is written complete under a private name, then hard-linked to
``RUN/lock.json`` (a link fails when the name exists; success is read from the link count, which also
holds on NFS, where a retried link can report EEXIST). A dead holder's lock is first renamed to a private
name (atomic: of two newcomers, one gets it) and re-read there: if it is not the lock judged dead (another
newcomer took over meanwhile), it is linked back at once. The take-over is logged.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Literal

from turbo_ds.engine.distributed import DistInfo, broadcast_from_main
from turbo_ds.engine.errors import RunDirLocked
from turbo_ds.fileio import fsync_dir

HEARTBEAT_S = 15.0
STALE_S = 120.0  # 8 missed heartbeats: a holder this quiet is dead (or cut off from the file system)
SIZE = 1024  # every write of a lock fills these bytes (JSON, then spaces): an in-place rewrite leaves no tail


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
    pid_namespace: str | None = None
    "the kernel boot and PID namespace ``pid`` belongs to; only a newcomer in the same one checks the PID"

    @classmethod
    def me(cls, now: float) -> "Holder":
        env = os.environ
        return cls(socket.gethostname(), os.getpid(), _start_ticks(os.getpid()), env.get("SLURM_JOB_ID"),
                   int(env.get("SLURM_RESTART_COUNT", "0")), now, now, uuid.uuid4().hex, _pid_namespace())

    def describe(self, now: float) -> str:
        job = f", Slurm job {self.job_id}" + (f" attempt {self.restart}" if self.restart else "") if self.job_id else ""
        return (f"PID {self.pid} on {self.host}{job}, started {time.strftime('%F %T', time.localtime(self.started))}, "
                f"heartbeat {max(0.0, now - self.heartbeat):.0f} s ago")

    def encoded(self) -> bytes:
        data = (json.dumps(asdict(self), indent=1) + "\n").encode()
        return data[:-1].ljust(SIZE - 1) + b"\n"


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name in parentheses


def _pid_namespace() -> str | None:
    """This boot of the kernel and this process's PID namespace: where a PID means the same process. A host
    name does not tell (containers share one, a rebooted host keeps it); namespace inodes are unique per boot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def pid_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether process ``pid`` exists in this PID namespace and is the one that started at ``start_ticks``."""
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
    if holder.pid_namespace is not None and holder.pid_namespace == me.pid_namespace:
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
        self.lost: str | None = None
        "set by the heartbeat thread: why this trainer no longer holds the run dir (one line), and must stop"
        self._fd: int | None = None  # the holder's own lock file, open for the heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, dist_info: DistInfo) -> str | None:
        """Rank 0 takes the lock before anything is written to the run dir; every rank learns the outcome
        (collective): the line to log, or RunDirLocked raised on every rank."""
        outcome: str | RunDirLocked | None = None
        if dist_info.is_main:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                outcome = self.acquire()
            except RunDirLocked as e:
                outcome = e
            except OSError as e:  # an unwritable run dir: every rank stops with it, none waits for rank 0
                outcome = RunDirLocked(f"run dir lock: cannot write {self.path} ({e.strerror}); make run_dir "
                                       "writable or use another run_dir")
        outcome = broadcast_from_main(outcome)
        if isinstance(outcome, RunDirLocked):
            raise outcome
        return outcome

    def acquire(self) -> str | None:
        """Take the lock; returns a line to log when a dead holder's lock was taken over. Raises RunDirLocked."""
        self.me, note, waited_for = Holder.me(time.time()), None, None
        while True:
            if self._link():
                self._thread = threading.Thread(target=self._beat, name="run-dir-heartbeat", daemon=True)
                self._thread.start()
                return note
            holder = self._read(self.path)
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
            if self._take(holder.__eq__):  # it is still the lock judged dead
                note = f"run dir lock: took over from a dead trainer ({holder.describe(now)})"

    def _link(self) -> bool:
        """Put a complete lock of ours at ``path`` if the name is free; keep it open for the heartbeat."""
        private = self.path.with_name(f"{self.path.name}.{self.me.token}")
        fd = os.open(private, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, self.me.encoded())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            try:
                os.link(private, self.path)
            except FileExistsError:
                pass  # taken; or, on NFS, a retried link whose first try worked: the link count tells
            if os.stat(private).st_nlink != 2:
                return False
            # Opened by its public name: NFS keeps an open file that loses a name as a stray .nfs* file.
            self._fd = os.open(self.path, os.O_RDWR)
        finally:
            private.unlink()
        fsync_dir(self.path.parent)
        return True

    def _take(self, expected: Callable[[Holder], bool]) -> bool:
        """Remove the lock at ``path`` if it is the one ``expected`` accepts: rename it to a private name (one
        renamer gets it), re-read it there, and link it straight back when it is another (a lock taken after
        it was read). Whether it was removed."""
        private = self.path.with_name(f"{self.path.name}.{self.me.token}.taken")
        try:
            self.path.rename(private)
        except FileNotFoundError:
            return False
        taken = self._read(private, attempts=1)  # unreadable: mid-rewrite (put back) or equally unreadable (dead)
        if taken is not None and not expected(taken):
            try:
                os.link(private, self.path)
            except FileExistsError:
                pass  # a third trainer linked its own lock meanwhile: the one set aside learns it has lost
        private.unlink()
        return taken is not None and expected(taken)

    def _read(self, path: Path, attempts: int = 20) -> Holder | None:
        """The holder of the lock at ``path``; a lock that stays unreadable (no JSON after ~2 s) counts as a dead
        one's (a lock written by a crashed older version)."""
        names = {f.name for f in fields(Holder)}
        for _ in range(attempts):
            try:
                return Holder(**{k: v for k, v in json.loads(path.read_text()).items() if k in names})
            except FileNotFoundError:
                return None
            except (ValueError, TypeError):
                time.sleep(0.1)  # a lock being written
        return Holder("?", -1, None, None, 0, 0.0, 0.0, "unreadable")

    def _beat(self) -> None:
        beaten = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self._read(self.path, attempts=1)
                if not self._mine(holder):
                    time.sleep(min(0.5, self.heartbeat_s))  # a newcomer's re-read puts a lock back within moments
                    holder = self._read(self.path)
                if not self._mine(holder):
                    now = time.time()
                    self.lost = (f"run dir lock lost: {self.path} " + (
                        f"now names another trainer ({holder.describe(now)})" if holder else "was removed")
                        + "; this trainer stops so that two never write one run dir (stop the other one and rerun "
                        "with the same run_dir to resume)")
                    return
                self.me.heartbeat = time.time()
                os.pwrite(self._fd, self.me.encoded(), 0)
                os.fsync(self._fd)
                beaten = time.monotonic()
            except OSError as e:
                silent = time.monotonic() - beaten
                if silent > self.stale_s / 2:  # before another host may take the run dir over
                    self.lost = (f"run dir lock lost: the heartbeat of {self.path} could not be written for "
                                 f"{silent:.0f} s ({e.strerror}); this trainer stops before another may take the run "
                                 "dir over; free space or fix the file system, then rerun with the same run_dir")
                    return

    def _mine(self, holder: Holder | None) -> bool:
        return holder is not None and holder.token == self.me.token

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._mine(self._read(self.path, attempts=1)):  # a lost lock is another's now: not even set aside
            self._take(self._mine)
        os.close(self._fd)
        self._fd = None
