"""Errors that end a run on purpose: every rank raises the same one (each is decided collectively),
``train.py`` prints its message, one line naming the cause and the fix, and exits with ``EXIT_CODE``."""

from __future__ import annotations

EXIT_CODE = 3  # config errors exit 2, crashes 1


class RunError(RuntimeError):
    """A condition a user can hit during a run; the message is one line: what happened, what to do."""


class DivergenceError(RunError):
    """Too many bad (skipped) steps in a row."""


class CheckpointWriteError(RunError):
    """A checkpoint could not be written (disk full, I/O or permission error); the previous one is intact."""


class CheckpointLoadError(RunError):
    """The latest checkpoint cannot be loaded."""


class RunDirLocked(RunError):
    """Another live trainer holds the run dir."""
