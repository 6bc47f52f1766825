"""Warnings that repeat every step are shown once per process.

Python shows a warning once per call site, but forgets which it has shown whenever any code
changes the warning filters (``warnings.catch_warnings``, which torch enters in some per-call
wrappers; the "once" action forgets too), so a deprecation inside a per-step collective (torch's
``all_gather_into_tensor`` FutureWarning, called by ZeRO every step) can come back thousands of
times. ``warnings.showwarning``, Python's hook for how warnings are shown, remembers here which
(category, text) it has shown. DeepSpeed's own warnings go through its logger; a filter there
lets each call site through once.
"""

from __future__ import annotations

import logging
import warnings


class OncePerCallSite(logging.Filter):
    """Lets the first WARNING (or worse) of each call site through; INFO and below pass untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        site = (record.pathname, record.lineno)
        if site in self.seen:
            return False
        self.seen.add(site)
        return True


class _ShowOnce:
    """A ``warnings.showwarning`` that shows each (category, text) once, through the hook it replaced."""

    def __init__(self, show) -> None:
        self.show, self.seen = show, set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        key = (category, str(message))
        if key not in self.seen:
            self.seen.add(key)
            self.show(message, category, filename, lineno, file, line)


def show_repeated_warnings_once() -> None:
    if not isinstance(warnings.showwarning, _ShowOnce):
        warnings.showwarning = _ShowOnce(warnings.showwarning)
    from deepspeed.utils import logger as ds_logger

    if not any(isinstance(f, OncePerCallSite) for f in ds_logger.filters):
        ds_logger.addFilter(OncePerCallSite())
