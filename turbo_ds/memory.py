"""Memory readings from Linux ``/proc``, for CPU memory measurements.

Where ``/proc`` is missing, the resident-set readings fall back to ``ru_maxrss`` (the lifetime peak).
"""

from __future__ import annotations

import resource
from pathlib import Path


def _proc_bytes(path: str, field: str) -> int | None:
    """``field``'s value from a ``/proc`` file of "Field:  N kB" lines, or None."""
    try:
        text = Path(path).read_text()  # read directly: the planner's watchdog calls this every 2 ms
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _status_bytes(field: str) -> int:
    value = _proc_bytes("/proc/self/status", field)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if value is None else value  # kB on Linux


def rss_bytes() -> int:
    """The resident set now (VmRSS)."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """The peak resident set (VmHWM) since the process started or ``reset_peak_rss``."""
    return _status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Make the peak resident set the current one (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def available_bytes() -> int | None:
    """Memory the system can still give processes (MemAvailable), or None where it does not say."""
    return _proc_bytes("/proc/meminfo", "MemAvailable")
