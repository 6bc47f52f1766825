"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial one.

(Not ``io.py``: ``turbo_ds/train.py`` runs as a script, which puts ``turbo_ds/`` on
``sys.path``, where an ``io`` module would shadow the standard library's.)
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any


def temp_path(path: str | os.PathLike) -> Path:
    """Where this process writes ``path`` before renaming it: ``.<name>.tmp<pid>.<host>`` (pid and host: writers of
    one file on several nodes of a shared filesystem never share a temp file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}.{socket.gethostname()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON with sorted keys and a final newline: the one layout of our JSON files."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as ``json_bytes``, written atomically."""
    atomic_write_bytes(path, json_bytes(obj))
