"""How bytes move to and from a location: a local path, http(s), an fsspec store or a ``pipe:`` command.

A location is one of (data/locations.py names the schemes):

    data/k400/train/train-000000.tar       a local path
    https://host/prefix/...  http://...    read with GET (resumed with Range), written with PUT
    s3://bucket/prefix/...   gs://...      the same through fsspec (pip install turbo_ds[s3] / [gcs])
    pipe:COMMAND                           WebDataset's form: the command writes the bytes to stdout

Credentials come from the environment as usual for each scheme: AWS_* variables or ~/.aws for
s3 (AWS_ENDPOINT_URL for an S3-compatible store), Google application credentials for gs,
``~/.netrc`` (or $NETRC) or ``user:password@`` in the URL for http(s), or a signed query
string, which is kept on every URL. ``redact`` hides them wherever a location is logged or
recorded.

A read that fails or stalls (no byte for ``data.read_timeout_s``) is retried with exponential
backoff up to ``data.read_retries`` times (an interrupted http(s) or fsspec read resumes where
it stopped); a failure that no retry can mend (not found, access denied) is not retried.
``read_with_retries`` returns its failure instead of raising it, so that the shard source
decides what an unreadable shard means (data/source.py); ``read_bytes``, ``write_bytes``,
``remote_size`` and ``delete`` serve manifests and the data_prep tools.
"""

from __future__ import annotations

import base64
import contextlib
import io
import netrc
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from turbo_ds.data.locations import redact, scheme
from turbo_ds.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from turbo_ds.config import DataConfig

CHUNK = 1 << 20  # bytes per read call while downloading
MAX_BACKOFF_S = 60.0


# ------------------------------------------------------------------ one read attempt


class ReadFailed(Exception):
    """A read that did not succeed; ``permanent`` ones (``missing``, access denied) are not retried."""

    def __init__(self, reason: str, permanent: bool = False, missing: bool = False):
        super().__init__(reason)
        self.reason, self.permanent, self.missing = reason, permanent or missing, missing


@dataclass(frozen=True)
class ReadPolicy:
    """How shards and manifests are read: timeouts, retries, prefetch (from ``data.*``)."""

    timeout_s: float = 30.0
    retries: int = 5
    backoff_s: float = 1.0
    max_skipped_fraction: float = 0.1
    prefetch_shards: int = 2

    @classmethod
    def from_config(cls, data: DataConfig) -> "ReadPolicy":
        return cls(data.read_timeout_s, data.read_retries, data.read_backoff_s, data.max_skipped_shard_fraction,
                   data.prefetch_shards)

    @property
    def stalled_s(self) -> float:
        """The longest one read takes before it gives up on a store that accepts and never answers: every
        attempt waits ``timeout_s`` for a byte, with the backoffs between attempts."""
        backoffs = sum(min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S) for attempt in range(self.retries))
        return (self.retries + 1) * self.timeout_s + backoffs


def _netrc_auth(host: str) -> tuple[str, str] | None:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        found = netrc.netrc(str(path)).authenticators(host) if path.is_file() else None
    except (OSError, netrc.NetrcParseError):
        return None
    return (found[0], found[2]) if found else None


def _http_request(url: str, method: str = "GET", data: bytes | None = None,
                  headers: dict[str, str] | None = None) -> urllib.request.Request:
    """A request with the URL's user:password (or ~/.netrc's entry for the host) as Basic auth."""
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers or {})
    auth = ((urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
            if parts.username else _netrc_auth(parts.hostname or ""))
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    netloc = parts.netloc.rpartition("@")[2]  # the credentials go into the header, not the request line
    return urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)), data=data,
                                  headers=headers, method=method)


def _http_error(e: urllib.error.HTTPError, action: str = "read") -> ReadFailed:
    if e.code in (404, 410):
        return ReadFailed(f"not found (HTTP {e.code})", missing=True)
    if e.code in (401, 403):
        return ReadFailed(f"access denied (HTTP {e.code}): check the credentials (~/.netrc, user:password@ in the "
                          "URL, or a signed URL)", permanent=True)
    if e.code in (405, 501) and action == "write":
        return ReadFailed(f"the server does not accept uploads (HTTP {e.code} on PUT)", permanent=True)
    return ReadFailed(f"HTTP {e.code} {e.reason}", permanent=400 <= e.code < 500 and e.code not in (408, 429))


def _read_http(url: str, buf: io.BytesIO, timeout: float) -> None:
    have = buf.tell()
    request = _http_request(url, headers={"Range": f"bytes={have}-"} if have else None)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # the timeout bounds every socket wait
    except urllib.error.HTTPError as e:
        raise _http_error(e) from None
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            buf.seek(0)
            buf.truncate()
        while chunk := response.read1(CHUNK):  # what has arrived: a reset connection keeps the bytes read so far
            buf.write(chunk)
        if response.length:  # http.client returns b"" when a connection ends before Content-Length
            raise ReadFailed(f"connection closed with {response.length} bytes still to come")


def _read_pipe(command: str, buf: io.BytesIO, timeout: float) -> None:
    buf.seek(0)
    buf.truncate()  # a command always starts over
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        try:
            fd = proc.stdout.fileno()
            while True:
                if not select.select([fd], [], [], timeout)[0]:
                    raise TimeoutError(f"no output for {timeout:g} s")
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                buf.write(chunk)
            if proc.wait(timeout):
                err.seek(0)
                tail = err.read()[-300:].decode(errors="replace").strip()
                raise ReadFailed(f"command exited with status {proc.returncode}" + (f": {tail}" if tail else ""))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()


def _filesystem(protocol: str, timeout: float):
    """An fsspec filesystem; fsspec caches instances per process (a forked loader worker gets its own)."""
    try:
        import fsspec
    except ImportError:
        raise ReadFailed(f"{protocol}:// needs fsspec and its {protocol} backend: pip install "
                         f"'turbo_ds[{'gcs' if protocol in ('gs', 'gcs') else protocol}]'", permanent=True) from None
    options = {"config_kwargs": {"read_timeout": timeout, "connect_timeout": timeout}} if protocol == "s3" else {}
    try:
        return fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as e:
        raise ReadFailed(f"no fsspec filesystem for {protocol}://: {e}", permanent=True) from None


def _fsspec_error(e: Exception) -> ReadFailed:
    if isinstance(e, ReadFailed):
        return e
    if isinstance(e, FileNotFoundError):
        return ReadFailed("not found", missing=True)
    if isinstance(e, PermissionError):
        return ReadFailed(f"access denied: {e}; check the credentials in the environment", permanent=True)
    return ReadFailed(f"{type(e).__name__}: {e}")


def _read_fsspec(url: str, buf: io.BytesIO, timeout: float) -> None:
    try:
        with _filesystem(scheme(url), timeout).open(url, "rb", block_size=8 * CHUNK) as f:
            f.seek(buf.tell())  # resume an interrupted read
            while chunk := f.read(8 * CHUNK):
                buf.write(chunk)
    except Exception as e:  # noqa: BLE001 - fsspec backends raise their own network errors; classified here
        raise _fsspec_error(e) from None


def _read_local(path: str, buf: io.BytesIO, timeout: float) -> None:
    buf.write(Path(path).read_bytes())


@contextlib.contextmanager
def _as_read_failed() -> Iterator[None]:
    """Network and I/O errors as ReadFailed (a reason to retry); ReadFailed passes through."""
    try:
        yield
    except ReadFailed:
        raise
    except FileNotFoundError:  # a local path (an http 404 is an HTTPError: see _http_error)
        raise ReadFailed("not found", missing=True) from None
    except urllib.error.URLError as e:  # connection refused, unknown host, connect timeout
        raise ReadFailed(str(e.reason)) from None
    except (OSError, HTTPException) as e:  # reset, stall (TimeoutError), truncated response
        raise ReadFailed(f"{type(e).__name__}: {e}".rstrip(": ")) from None


def _read_once(url: str, buf: io.BytesIO, timeout: float) -> None:
    """One attempt to read ``url`` into ``buf`` (which may hold the start already); ReadFailed on failure."""
    kind = scheme(url)
    read = {"http": _read_http, "https": _read_http, "pipe": _read_pipe, None: _read_local}.get(kind, _read_fsspec)
    with _as_read_failed():
        read(url.removeprefix("pipe:") if kind == "pipe" else url, buf, timeout)


def _write_once(url: str, data: bytes, timeout: float) -> None:
    kind = scheme(url)
    with _as_read_failed():
        if kind in ("http", "https"):
            try:
                urllib.request.urlopen(_http_request(url, "PUT", data), timeout=timeout).close()
            except urllib.error.HTTPError as e:
                raise _http_error(e, "write") from None
        elif kind == "pipe":
            raise ReadFailed("a pipe: command can only be read; upload with its own tool", permanent=True)
        elif kind is None:
            atomic_write_bytes(url, data)
        else:
            try:
                _filesystem(kind, timeout).pipe_file(url, data)
            except Exception as e:  # noqa: BLE001 - as in _read_fsspec
                raise _fsspec_error(e) from None


def _retrying(once: Callable[[], None], policy: ReadPolicy, what: str,
              say: Callable[[str], None] | None = None) -> tuple[int, ReadFailed | None]:
    """Run ``once`` until it succeeds, with backoff: (retries it took, the last failure or None)."""
    for attempt in range(policy.retries + 1):
        try:
            once()
            return attempt, None
        except ReadFailed as e:
            if e.permanent or attempt == policy.retries:
                return attempt, e
            wait = min(policy.backoff_s * 2 ** attempt, MAX_BACKOFF_S)
            if say:
                say(f"{what} failed ({redact(e.reason)}); retry {attempt + 1}/{policy.retries} in {wait:g} s")
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass
class Read:
    """The outcome of reading one URL with retries."""

    data: io.BufferedIOBase | None
    retries: int
    error: ReadFailed | None
    seconds: float


def read_with_retries(url: str, policy: ReadPolicy, say: Callable[[str], None] | None = None) -> Read:
    """``url``'s bytes, retried with backoff (``say`` hears of each retry); failures are returned, not raised."""
    buf, start = io.BytesIO(), time.monotonic()
    retries, error = _retrying(lambda: _read_once(url, buf, policy.timeout_s), policy, f"reading {redact(url)}", say)
    buf.seek(0)
    return Read(None if error else buf, retries, error, time.monotonic() - start)


def describe(read: Read) -> str:
    """Why a read failed, redacted, with how long it was retried."""
    tries = f" (after {read.retries + 1} attempts over {read.seconds:.0f} s)" if read.retries else ""
    return redact(read.error.reason) + tries


def read_bytes(url: str, policy: ReadPolicy = ReadPolicy()) -> bytes:
    """``url``'s bytes with retries; ReadFailed names the redacted URL and the last reason."""
    read = read_with_retries(url, policy, _stderr)
    if read.error is not None:
        raise ReadFailed(f"{redact(url)}: {describe(read)}", read.error.permanent, read.error.missing)
    return read.data.getvalue()


def write_bytes(url: str, data: bytes, policy: ReadPolicy = ReadPolicy()) -> None:
    """Store ``data`` at ``url`` (local path, http(s) PUT, fsspec), retried like reads; ReadFailed on failure."""
    retries, error = _retrying(lambda: _write_once(url, data, policy.timeout_s), policy, f"writing {redact(url)}",
                               _stderr)
    if error is not None:
        raise ReadFailed(f"{redact(url)}: {redact(error.reason)}", error.permanent)


def remote_size(url: str, policy: ReadPolicy = ReadPolicy()) -> int | None:
    """The size of the object at ``url``, or None when there is none (used to resume uploads)."""
    kind = scheme(url)
    try:
        if kind in ("http", "https"):
            with urllib.request.urlopen(_http_request(url, "HEAD"), timeout=policy.timeout_s) as r:
                return int(r.headers.get("Content-Length", -1))
        if kind is None:
            return Path(url).stat().st_size
        return int(_filesystem(kind, policy.timeout_s).size(url))
    except Exception:  # noqa: BLE001 - missing, or not knowable (no HEAD, store down): upload it (write_bytes reports)
        return None


def delete(url: str, policy: ReadPolicy = ReadPolicy()) -> bool:
    """Remove the object at ``url`` (http DELETE, fsspec rm), best effort: False when the store refused."""
    kind = scheme(url)
    try:
        if kind in ("http", "https"):
            urllib.request.urlopen(_http_request(url, "DELETE"), timeout=policy.timeout_s).close()
        elif kind is None:
            Path(url).unlink()
        else:
            _filesystem(kind, policy.timeout_s).rm(url)
        return True
    except Exception:  # noqa: BLE001 - any refusal (no DELETE on the server, no permission) means "not deleted"
        return False


def _stderr(message: str) -> None:
    rank = os.environ.get("RANK")
    print(f"{f'[rank {rank}] ' if rank else ''}data: {message}", file=sys.stderr, flush=True)
