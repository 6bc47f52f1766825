"""Run logging: human lines on stdout (+ train.log) and one JSON object per event in metrics.jsonl,
which is the source of truth; the DeepSpeed JSON's monitors (TensorBoard, W&B, CSV) get a copy."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from turbo_ds.data.locations import redact
from turbo_ds.fileio import atomic_write_bytes, read_json_lines
from turbo_ds.memory import peak_rss_bytes

if TYPE_CHECKING:
    from turbo_ds.engine.monitors import Monitors


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_bytes() / 2**20


class RunLog:
    """Only the main rank writes; other ranks' calls are no-ops."""

    def __init__(self, run_dir: str | Path, enabled: bool):
        self.enabled = enabled
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self.samples_path = Path(run_dir) / "samples.jsonl"
        self.text = open(Path(run_dir) / "train.log", "a") if enabled else None
        self.write_failed = False
        self.monitors: Monitors | None = None

    def attach(self, monitors: Monitors) -> None:
        """From now on every metrics record also goes to ``monitors`` (main rank)."""
        self.monitors = monitors if self.enabled else None

    def info(self, message: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            message = redact(message)  # a dataset URL's password or signature never reaches the log
            tqdm.write(message, file=sys.stdout)  # above the progress bar, when there is one
            sys.stdout.flush()
            self._append(lambda: (self.text.write(message + "\n"), self.text.flush()))

    def metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._append(lambda: _append_record(self.metrics_path, record))
            if self.monitors is not None:
                self.monitors.write(record)

    def samples(self, step: int, keys: list[list[str]]) -> None:
        """The keys of the clips each rank trained on at ``step`` (``train.log_samples``); not a metric, so
        no monitor sees them."""
        if self.enabled:
            self._append(lambda: _append_record(self.samples_path, {"step": step, "keys": keys}))

    def _append(self, write) -> None:
        """A full or failing disk must not stop training (checkpoints report their own failures): say so once."""
        try:
            write()
        except OSError as e:
            if not self.write_failed:
                self.write_failed = True
                print(f"warning: cannot write to {self.metrics_path.parent} ({e.strerror}); train.log, metrics.jsonl "
                      "and samples.jsonl miss lines from here on (the printed log stays complete)",
                      file=sys.stderr, flush=True)

    def rewind(self, step: int) -> None:
        """Drop the records past ``step``, which a resumed run writes again (0: a new run, in a run dir an earlier
        run left without a checkpoint), and torn lines (a write cut short): no duplicated steps, every line JSON.
        Says what it dropped, one line per file."""
        if self.monitors is not None:
            self.monitors.rewind(step)
        for path in (self.metrics_path, self.samples_path):
            if not (self.enabled and path.is_file()):
                continue
            records, torn = read_json_lines(path)
            kept = [line for line, record in records if record.get("step", 0) <= step]
            if len(kept) == len(records) and not torn:
                continue
            atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
            dropped = []
            if len(kept) < len(records):
                dropped.append(f"{len(records) - len(kept)} record(s) past step {step} " + (
                    "(written after the checkpoint this run resumes from)" if step else
                    "(an earlier run in this run dir left no checkpoint)"))
            if torn:
                dropped.append(f"{torn} torn line(s) (not whole JSON: a write cut short by a full disk or a crash)")
            self.info(f"{path.name}: dropped {' and '.join(dropped)}")

    def close(self) -> None:
        if self.monitors is not None:
            self.monitors.close()
        if self.text:
            self._append(self.text.close)


def _append_record(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar on stderr when it is a terminal (log files get the periodic lines instead)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not (enabled and sys.stderr.isatty()),
                dynamic_ncols=True, unit="step")
