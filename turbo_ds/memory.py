"""This process's resident memory (Linux ``/proc/self/status``), for CPU memory measurements.

Where ``/proc`` is missing, the readings fall back to ``ru_maxrss`` (the lifetime peak).
"""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int:
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


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
