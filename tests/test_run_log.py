"""The run's logs as a resume finds them: a torn last line (a write cut short by a full disk or a crash) and the
records of an earlier run that left no checkpoint are dropped from metrics.jsonl / samples.jsonl, and said so."""

from __future__ import annotations

import json

import pytest

from turbo_ds.config import TrainConfig
from turbo_ds.engine.checkpoint import CheckpointManager
from turbo_ds.engine.distributed import DistInfo
from turbo_ds.engine.metrics import RunLog

pytestmark = pytest.mark.unit


def write_records(path, steps: list[int], tail: str = "") -> None:
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n" for s in steps) + tail)


def logged(run_dir, capsys) -> list[str]:
    """What was logged since the last call: on stdout, and the same lines at the end of train.log."""
    out = capsys.readouterr().out.splitlines()
    assert (run_dir / "train.log").read_text().splitlines()[-len(out):] == out
    return out


def test_a_torn_last_line_is_dropped_and_said_so_once(tmp_path, capsys):
    write_records(tmp_path / "metrics.jsonl", [1, 2, 3, 4], tail='{"step": 5, "train/lo')  # half a JSON line
    write_records(tmp_path / "samples.jsonl", [1, 2], tail="\0\0\0\0")  # NUL bytes a crash left at the end
    log = RunLog(tmp_path, enabled=True)
    log.rewind(4)
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    assert [r["step"] for r in map(json.loads, (tmp_path / "samples.jsonl").read_text().splitlines())] == [1, 2]
    log.metrics({"step": 5, "train/loss": 0.2})  # the next record starts a line of its own
    log.close()
    assert logged(tmp_path, capsys) == [
        "metrics.jsonl: dropped 1 torn line(s) (not whole JSON: a write cut short by a full disk or a crash)",
        "samples.jsonl: dropped 1 torn line(s) (not whole JSON: a write cut short by a full disk or a crash)"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 5

    write_records(tmp_path / "metrics.jsonl", [1, 2, 3], tail='{"step": 4, "tr{"step": 5}\n{"step": 6}\n')
    log = RunLog(tmp_path, enabled=True)
    log.rewind(2)  # resumed from step 2: later records go, and so does a torn line another was appended onto
    log.close()
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert logged(tmp_path, capsys)[-1] == (
        "metrics.jsonl: dropped 2 record(s) past step 2 (written after the checkpoint this run resumes from) and "
        "1 torn line(s) (not whole JSON: a write cut short by a full disk or a crash)")

    log = RunLog(tmp_path, enabled=True)
    log.rewind(2)  # nothing to drop: nothing said, nothing rewritten
    log.close()
    assert capsys.readouterr().out == ""


def test_a_new_run_in_a_used_run_dir_drops_the_records_of_the_one_before(tmp_path, capsys):
    """An earlier run died before its first checkpoint: this one starts at step 0 and would log its steps again."""
    write_records(tmp_path / "metrics.jsonl", [1, 2, 3])
    manager = CheckpointManager(tmp_path, DistInfo(0, 1, 0), TrainConfig())
    log = RunLog(tmp_path, enabled=True)
    assert manager.restore(None, log, None, {}) is False  # no checkpoint: a new run
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert logged(tmp_path, capsys) == [
        "metrics.jsonl: dropped 3 record(s) past step 0 (an earlier run in this run dir left no checkpoint)"]
