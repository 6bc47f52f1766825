"""Dataset locations as strings: local path or URL, and how to show one without its credentials.

Pure string functions (no I/O, no heavy imports), so that config checks and logging can use
them; reading is ``turbo_ds.data.transport`` (bytes) and ``turbo_ds.data.source`` (a dataset's shards).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.I)
_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/@?#]*@)?([^\s?#]*)(\?[^\s#]*)?", re.I)
# Environment-style assignments in a pipe: command, e.g. AWS_SECRET_ACCESS_KEY=... aws s3 cp ...
_SECRET_ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9_]*(?:SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?|_KEY)[A-Z0-9_]*)"
                                r"=(\S+)")


def scheme(location: str) -> str | None:
    """``http``, ``https``, ``s3``, ``gs``, ... or ``pipe``; None for a local path."""
    if location.startswith("pipe:"):
        return "pipe"
    m = _SCHEME.match(location)
    return m.group(1).lower() if m else None


def is_remote(location: str) -> bool:
    return scheme(location) is not None


def join(location: str, name: str) -> str:
    """The path or URL of ``name`` inside the folder ``location``; a URL's query string (a signature) is kept."""
    if not is_remote(location):
        return str(Path(location) / name)
    parts = urllib.parse.urlsplit(location)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def _redact_url(m: re.Match) -> str:
    prefix, userinfo, rest, query = m.groups()
    if userinfo:  # keep the user name (it tells runs apart), never the password
        userinfo = f"{userinfo[:-1].split(':')[0]}:***@" if ":" in userinfo else "***@"
    if query:  # signed URLs carry their credentials in the query: keep the names, hide every value
        query = "?" + "&".join(p.split("=")[0] + "=***" if "=" in p else p for p in query[1:].split("&"))
    return f"{prefix}{userinfo or ''}{rest}{query or ''}"


def redact(text: str) -> str:
    """``text`` with every URL's password and query values, and ``*_SECRET*=...`` assignments, masked."""
    return _SECRET_ASSIGNMENT.sub(r"\1=***", _URL_IN_TEXT.sub(_redact_url, text))


def redacted(obj: Any) -> Any:
    """A copy of a config tree (dicts, lists, strings) with every string passed through ``redact``."""
    if isinstance(obj, dict):
        return {k: redacted(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redacted(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj
