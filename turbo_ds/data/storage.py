"""Where a dataset's shards live and how they are read: a local folder or a URL.

``data.train`` / ``data.val`` (and the data_prep tools) name one of:

    data/k400/train                        a local folder: shards + manifest.json
    https://host/prefix/   http://...      manifest at <url>/manifest.json, shards next to it
    s3://bucket/prefix/    gs://...        the same through fsspec (pip install turbo_ds[s3] / [gcs])
    pipe:COMMAND                           WebDataset's form: the command writes one shard to stdout;
                                           braces expand to one command per shard, e.g.
                                           pipe:aws s3 cp s3://b/train-{000000..000127}.tar -

A manifest that cannot be derived (``pipe:``, a brace pattern) or lives elsewhere is given by
``data.train_manifest`` / ``data.val_manifest`` (a path or URL). Credentials come from the
environment as usual for each scheme: AWS_* variables or ~/.aws for s3 (AWS_ENDPOINT_URL for an
S3-compatible store), Google application credentials for gs, ``~/.netrc`` (or $NETRC) or
``user:password@`` in the URL for http(s), or a signed query string, which is kept on every
shard URL. ``redact`` hides them wherever a location is logged or recorded.

Reading a remote shard downloads it whole into memory, in background threads up to
``data.prefetch_shards`` shards ahead of the decoder (memory per loader stream: about
prefetch_shards + 1 shards), so a store with latency keeps the decoder busy. A read that fails
or stalls (no byte for ``data.read_timeout_s``) is retried with exponential backoff up to
``data.read_retries`` times (an interrupted http(s) or fsspec read resumes where it stopped); a
shard that still fails, or that the manifest lists but the store lacks, is lost for this epoch:
its manifest count of placeholder samples takes its place, so every later sample keeps its
position in the stream (exact resume, the eval split by sample index) and each placeholder is
counted as a skipped sample, the shard in ``StreamPosition.skipped_shards``, with its URL in the
log. More than ``data.max_skipped_shard_fraction`` of a stream's shards lost in one epoch is an
error. Local folders are read as before: streamed from disk, nothing held in memory.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import itertools
import json
import netrc
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from braceexpand import braceexpand

from turbo_ds.data.errors import DataError
from turbo_ds.data.locations import is_remote, join, redact, scheme
from turbo_ds.data.shards import MANIFEST, check_manifest, missing_shards, read_manifest, shard_paths
from turbo_ds.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from turbo_ds.config import DataConfig
    from turbo_ds.data.position import StreamPosition

CHUNK = 1 << 20  # bytes per read call while downloading
MAX_BACKOFF_S = 60.0
LOST = "__lost_shard__"  # the member that marks a placeholder for a sample of a shard that could not be read
ShardStage = Callable[[Iterable[str]], Iterator[dict]]  # a loader stage: shard URLs in, samples out
_BRACES = re.compile(r"\{[^{}]*\.\.[^{}]*\}")  # a brace range: one entry per shard


# ------------------------------------------------------------------ one read attempt


class ReadFailed(Exception):
    """A read that did not succeed; ``permanent`` ones (``missing``, access denied) are not retried."""

    def __init__(self, reason: str, permanent: bool = False, missing: bool = False):
        super().__init__(reason)
        self.reason, self.permanent, self.missing = reason, permanent or missing, missing


@dataclass(frozen=True)
class ReadPolicy:
    """How shards and manifests are read: timeouts, retries, prefetch (from ``data.*``)."""

    timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 1.0
    max_skipped_fraction: float = 0.1
    prefetch_shards: int = 2

    @classmethod
    def from_config(cls, data: DataConfig) -> "ReadPolicy":
        return cls(data.read_timeout_s, data.read_retries, data.read_backoff_s, data.max_skipped_shard_fraction,
                   data.prefetch_shards)


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


# ------------------------------------------------------------------ a dataset's shards


class ShardReadError(RuntimeError):
    """Too many shards of an epoch could not be read: the store is down or the dataset is incomplete."""


class SourceError(ValueError):
    """The dataset cannot be located (no manifest, unreachable store); the message names the config key."""


def _match_shards(expanded: list[str], names: list[str], where: str) -> list[str]:
    """Each manifest shard's entry of a brace pattern: the one expansion naming it, else by position."""
    by_name = [[u for u in expanded if name in u] for name in names]
    if all(len(found) == 1 for found in by_name):
        return [found[0] for found in by_name]
    if len(expanded) == len(names):
        return expanded
    raise SourceError(f"{where} expands to {len(expanded)} shards, its manifest lists {len(names)}, and its entries "
                      f"do not name the manifest's shards (e.g. {names[0]}); make the braces cover the same shards")


def lost_samples(url: str, count: int) -> Iterator[dict]:
    """The placeholders of an unreadable shard's ``count`` samples (so later samples keep their positions);
    ``__url__`` as a read sample's, so that they are numbered in their shard like its samples would be."""
    return ({"__key__": f"lost-{i:06d}", "__url__": url, LOST: url} for i in range(count))


def check_not_lost(sample: dict) -> dict:
    """A placeholder of a lost shard raises DataError: the loader skips and counts it as a bad sample."""
    if LOST in sample:
        raise DataError(f"sample of a shard that could not be read: {sample[LOST]}")
    return sample


class ShardSource:
    """A dataset's manifest and shard URLs (or paths), and the loader stage that reads its shards.

    ``key`` names the config key in messages (``data.train``).
    """

    def __init__(self, location: str, manifest_location: str | None = None, policy: ReadPolicy = ReadPolicy(),
                 key: str = "data", manifest_key: str | None = None):
        self.location, self.policy, self.key = location, policy, key
        self.manifest_key = manifest_key or f"{key}_manifest"
        self.remote = is_remote(location)
        where = f"{key}={redact(location)}"
        if not self.remote and manifest_location is None:
            self.manifest = read_manifest(location)  # checks that every listed shard is there
            self.shards = shard_paths(location, self.manifest)
        else:
            self.manifest = self._read_manifest(location, manifest_location, where)
            names = [s["name"] for s in self.manifest["shards"]]
            if scheme(location) == "pipe" or _BRACES.search(location):
                self.shards = _match_shards(list(braceexpand(location)), names, where)
            else:
                self.shards = [join(location, name) for name in names]
        self.counts = {url: s["num_samples"] for url, s in zip(self.shards, self.manifest["shards"])}
        # A sample's __url__ (redacted: samples reach logs) -> its shard's name in the manifest, which is
        # what a stream position records, so a resume does not depend on where the shards are served from.
        self.names = {redact(url): s["name"] for url, s in zip(self.shards, self.manifest["shards"])}
        if len(self.names) != len(self.shards):
            raise SourceError(f"{where}: two shard URLs differ only in their credentials; give each shard its own "
                              "path")

    def _read_manifest(self, location: str, manifest_location: str | None, where: str) -> dict:
        key = self.manifest_key
        if manifest_location is None and (scheme(location) == "pipe" or _BRACES.search(location)):
            raise SourceError(f"{where}: the manifest cannot be derived from a pipe: command or a brace pattern; "
                              f"give its manifest.json with {key}=PATH_OR_URL")
        url = manifest_location or join(location, MANIFEST)
        read = read_with_retries(url, self.policy, _stderr)
        if read.error is not None:
            if read.error.missing and manifest_location is None:
                raise SourceError(f"{where}: no {MANIFEST} at {redact(url)} and no {key}; put the manifest next "
                                  f"to the shards or give its location with {key}=PATH_OR_URL")
            raise SourceError(f"{where}: cannot read {redact(url)}: {describe(read)}; check that the store is up "
                              "and the URL right (retries: data.read_retries, data.read_timeout_s)")
        try:
            manifest = check_manifest(json.loads(read.data.getvalue()), redact(url))
        except ValueError as e:
            raise SourceError(f"{where}: {redact(url)} is not a shard manifest ({e})") from None
        missing = [] if self.remote else missing_shards(location, manifest)
        if missing:
            raise SourceError(f"{where}: shards listed in {redact(url)} are missing: {missing[:3]}")
        return manifest

    @classmethod
    def from_config(cls, data: DataConfig, split: str) -> "ShardSource":
        """The source of ``data.<split>`` (``train`` or ``val``) with its ``data.<split>_manifest``."""
        location, manifest = getattr(data, split), getattr(data, f"{split}_manifest")
        policy = ReadPolicy.from_config(data)
        if is_remote(location) or manifest is not None:
            return _cached_source(location, manifest, policy, f"data.{split}")
        return cls(location, None, policy, f"data.{split}")

    # -------------------------------------------------------------- reading

    def samples(self, pos: StreamPosition, epoch_shards: int | None = None) -> ShardStage:
        """Stage: shard URLs -> samples (dicts of tar members), the next shards prefetched.

        ``pos`` (a StreamPosition) counts unreadable members (``tar_handler``), lost shards and
        retries, and collects what happened for the log (``events``). ``epoch_shards`` is how many
        shards the stream reads in an epoch (default: the URLs it is given), the base of
        ``data.max_skipped_shard_fraction``.
        """
        # webdataset imports torch: not at module level, so that the data_prep tools start fast
        from webdataset.tariterators import group_by_keys, tar_file_expander

        def stage(urls: Iterable[str]) -> Iterator[dict]:
            urls = list(urls)
            allowed, lost = self.policy.max_skipped_fraction * (epoch_shards or len(urls)), 0
            for url, read in self._reads(urls):
                pos.read_retries += read.retries
                if read.error is None:
                    if read.retries:
                        pos.events.append(f"{redact(url)} read after {read.retries} retries over "
                                          f"{read.seconds:.1f} s")
                    source = {"url": redact(url), "stream": read.data}
                    yield from group_by_keys(tar_file_expander([source], handler=pos.tar_handler),
                                             handler=pos.tar_handler)
                    continue
                lost += 1
                pos.skipped_shards += 1
                missing = " (listed in the manifest, missing in the store)" if read.error.missing else ""
                note = (f"shard {redact(url)} skipped{missing}: {redact(read.error.reason)}"
                        + (f", after {read.retries} retries over {read.seconds:.0f} s" if read.retries else "")
                        + f"; its {self.counts[url]} samples are lost for epoch {pos.epoch}")
                _stderr(note)
                pos.events.append(note)
                if lost > allowed:
                    raise ShardReadError(
                        f"{self.key}: {lost} of the {epoch_shards or len(urls)} shards this loader stream reads in "
                        f"epoch {pos.epoch} could not be read (more than data.max_skipped_shard_fraction="
                        f"{self.policy.max_skipped_fraction:g}); last: {note}. Check that the store is up and the "
                        "manifest matches it, or raise data.read_retries / data.read_timeout_s / "
                        "data.max_skipped_shard_fraction")
                yield from lost_samples(redact(url), self.counts[url])
        return stage

    def _reads(self, urls: list[str]) -> Iterator[tuple[str, Read]]:
        """(url, Read) in order. Local shards are opened as streams; remote ones are read whole, up to
        ``prefetch_shards`` of them at once in threads while the caller decodes the one before."""
        if not self.remote:
            for url in urls:
                read = self._open_local(url)
                try:
                    yield url, read
                finally:
                    if read.data is not None:
                        read.data.close()
            return
        if self.policy.prefetch_shards == 0:
            for url in urls:
                yield url, read_with_retries(url, self.policy, _stderr)
            return
        pool = ThreadPoolExecutor(self.policy.prefetch_shards, thread_name_prefix="shard-prefetch")
        pending: deque[tuple[str, Future]] = deque()
        todo = iter(urls)
        try:
            for url in itertools.islice(todo, self.policy.prefetch_shards):
                pending.append((url, pool.submit(read_with_retries, url, self.policy, _stderr)))
            while pending:
                url, future = pending.popleft()
                read = future.result()
                for nxt in itertools.islice(todo, 1):  # keep prefetch_shards reads going while this one decodes
                    pending.append((nxt, pool.submit(read_with_retries, nxt, self.policy, _stderr)))
                yield url, read
        finally:
            # An epoch that ends early (resampled: its sample share is reached) drops the reads ahead;
            # those in flight finish in their threads without holding this generator up.
            pool.shutdown(wait=False, cancel_futures=True)

    def _open_local(self, path: str) -> Read:
        """A local shard opened for streaming (retried: a network file system can hiccup)."""
        start, opened = time.monotonic(), []

        def open_once() -> None:
            with _as_read_failed():
                opened.append(open(path, "rb"))  # noqa: SIM115 - closed by _reads once the shard is read

        retries, error = _retrying(open_once, self.policy, f"opening {path}", _stderr)
        return Read(opened[0] if opened else None, retries, error, time.monotonic() - start)


@functools.lru_cache(maxsize=16)
def _cached_source(location: str, manifest: str | None, policy: ReadPolicy, key: str) -> ShardSource:
    """Remote manifests are read once per process (every evaluation builds its stream again)."""
    return ShardSource(location, manifest, policy, key)
