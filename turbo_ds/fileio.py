"""Atomic, durable file writes: a reader sees either the old file or the complete new one, never a partial
one, and once a write returns it survives a power loss (the data and the rename both fsynced).

(Not ``io.py``: ``turbo_ds/train.py`` runs as a script, which puts ``turbo_ds/`` on
``sys.path``, where an ``io`` module would shadow the standard library's.)
"""

from __future__ import annotations

import errno
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
    """Write ``data`` to ``path`` so that readers see either the old file or the new one, durably."""
    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file written (and closed) by someone else, e.g. DeepSpeed, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory ``path`` (files created, renamed or removed in it) survive a power loss.
    A file system that cannot sync a directory (EINVAL: some FUSE and network ones) is left as it is."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def read_json_lines(path: str | os.PathLike) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The records of a file that is only ever appended to, one JSON object a line (metrics.jsonl), each with its
    line; and the number of lines left out because they are not a whole JSON object: a write cut short by a full
    disk or a crash (which may also leave NUL bytes behind), or a later record appended onto such a line."""
    records, torn = [], 0
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append((line, record))
        else:
            torn += 1
    return records, torn


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON with sorted keys and a final newline: the one layout of our JSON files."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as ``json_bytes``, written atomically."""
    atomic_write_bytes(path, json_bytes(obj))
