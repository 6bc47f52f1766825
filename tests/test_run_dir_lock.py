"""One trainer per run dir: RUN/lock.json, its heartbeat, and when a holder counts as dead."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, replace

import pytest

from turbo_ds.engine.errors import RunDirLocked
from turbo_ds.engine.lock import Holder, RunDirLock, judge, pid_alive

pytestmark = pytest.mark.unit


def holder(**kw) -> Holder:
    now = time.time()
    return replace(Holder("node-a", 4242, 100, "77", 0, now - 100, now, "t"), **kw)


def write_lock(path, h: Holder) -> None:
    path.write_text(json.dumps(asdict(h)))


def test_who_counts_as_dead():
    me, now = holder(host="node-b", pid=1, restart=0, job_id="99"), time.time()
    alive = lambda pid, ticks: pid == 4242 and ticks == 100  # noqa: E731
    assert judge(holder(host="node-b"), me, now, 120, alive) == "live"  # same host, PID running
    assert judge(holder(host="node-b", pid=5), me, now, 120, alive) == "dead"  # same host, PID gone
    assert judge(holder(host="node-b", start_ticks=7), me, now, 120, alive) == "dead"  # PID reused by another
    assert judge(holder(), me, now, 120, alive) == "live"  # another host, fresh heartbeat
    assert judge(holder(heartbeat=now - 121), me, now, 120, alive) == "dead"  # another host, heartbeat stale
    requeued = replace(me, job_id="77", restart=1)
    assert judge(holder(), requeued, now, 120, alive) == "wait"  # an earlier attempt of this Slurm job
    assert judge(holder(restart=1), requeued, now, 120, alive) == "live"
    assert pid_alive(os.getpid(), None) and not pid_alive(2**22 + 1, None)


def test_a_second_trainer_is_refused_naming_the_holder_and_release_frees_the_run_dir(tmp_path):
    path = tmp_path / "lock.json"
    first = RunDirLock(path)
    assert first.acquire() is None and json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(RunDirLocked, match=rf"run dir locked: {tmp_path} is in use by the trainer PID {os.getpid()} "
                                           rf"on {os.uname().nodename}, started .* heartbeat 0 s ago; stop that"):
        RunDirLock(path).acquire()
    first.release()
    assert not path.exists()
    second = RunDirLock(path)
    assert second.acquire() is None
    second.release()


def test_the_heartbeat_moves_and_a_lost_lock_is_left_alone(tmp_path):
    path = tmp_path / "lock.json"
    lock = RunDirLock(path, heartbeat_s=0.05)
    lock.acquire()
    started = json.loads(path.read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads(path.read_text())["heartbeat"] > started
    lock.release()
    lock = RunDirLock(path, heartbeat_s=3600)
    lock.acquire()
    write_lock(path, holder())  # someone else's now
    lock.release()
    assert json.loads(path.read_text())["pid"] == 4242  # not ours: not removed


def test_a_dead_holders_lock_is_taken_over_and_said_so(tmp_path):
    path = tmp_path / "lock.json"
    write_lock(path, holder(heartbeat=time.time() - 3600))  # another host, silent for an hour
    lock = RunDirLock(path)
    note = lock.acquire()
    assert note.startswith("run dir lock: took over from a dead trainer (PID 4242 on node-a, Slurm job 77")
    assert json.loads(path.read_text())["token"] == lock.me.token
    lock.release()
    path.write_text("{half a lock")  # a holder killed between creating and writing it
    assert RunDirLock(path).acquire().startswith("run dir lock: took over")


def test_a_requeued_job_waits_for_its_earlier_attempt_to_go_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path = tmp_path / "lock.json"
    write_lock(path, holder())  # attempt 0 on node-a, heartbeat fresh
    start = time.monotonic()
    assert RunDirLock(path, heartbeat_s=0.1, stale_s=0.5).acquire().startswith("run dir lock: took over")
    assert time.monotonic() - start >= 0.4

    write_lock(path, holder())
    beating = threading.Thread(target=lambda: (time.sleep(0.15), write_lock(path, holder())))
    beating.start()  # the earlier attempt is alive after all: its heartbeat moves
    with pytest.raises(RunDirLocked, match="PID 4242 on node-a, Slurm job 77"):
        RunDirLock(path, heartbeat_s=0.1, stale_s=2.0).acquire()
    beating.join()
