"""Where a dataset's shards live and how the loader reads them: a local folder or a URL.

``data.train`` / ``data.val`` (and the data_prep tools) name one of:

    data/k400/train                        a local folder: shards + manifest.json
    https://host/prefix/   http://...      manifest at <url>/manifest.json, shards next to it
    s3://bucket/prefix/    gs://...        the same through fsspec (pip install turbo_ds[s3] / [gcs])
    pipe:COMMAND                           WebDataset's form: the command writes one shard to stdout;
                                           braces expand to one command per shard, e.g.
                                           pipe:aws s3 cp s3://b/train-{000000..000127}.tar -

A manifest that cannot be derived (``pipe:``, a brace pattern) or lives elsewhere is given by
``data.train_manifest`` / ``data.val_manifest`` (a path or URL). How the bytes are fetched,
with which credentials, and how a failed read is retried: data/transport.py.

Reading a remote shard downloads it whole into memory, in background threads up to
``data.prefetch_shards`` shards ahead of the decoder (memory per loader stream: about
prefetch_shards + 1 shards), so a store with latency keeps the decoder busy. A shard that
still fails after its retries, or that the manifest lists but the store lacks, is lost for
this epoch: its manifest count of placeholder samples takes its place, so every later sample
keeps its position in the stream (exact resume, the eval split by sample index) and each
placeholder is counted as a skipped sample, the shard in ``StreamPosition.skipped_shards``,
with its URL in the log. More than ``data.max_skipped_shard_fraction`` of the dataset's shards
lost in one epoch, counted over every stream of every rank, is an error (``check_lost``): the
trainer and the evaluation decide it together on every rank, so one rank's lost shards stop
all of them at the same step, and a lost shard among many streams is a counted skip. Local folders are read as before: streamed from disk, nothing
held in memory.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from braceexpand import braceexpand

from turbo_ds.data.errors import DataError
from turbo_ds.data.locations import is_remote, join, redact, scheme
from turbo_ds.data.shards import MANIFEST, check_manifest, missing_shards, read_manifest, shard_paths
from turbo_ds.data.transport import Read, ReadPolicy, _as_read_failed, _retrying, _stderr, describe, read_with_retries

if TYPE_CHECKING:
    from turbo_ds.config import DataConfig
    from turbo_ds.data.position import StreamPosition

LOST = "__lost_shard__"  # the member that marks a placeholder for a sample of a shard that could not be read
ShardStage = Callable[[Iterable[str]], Iterator[dict]]  # a loader stage: shard URLs in, samples out
_BRACES = re.compile(r"\{[^{}]*\.\.[^{}]*\}")  # a brace range: one entry per shard


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
        return cls(location, manifest, ReadPolicy.from_config(data), f"data.{split}")

    # -------------------------------------------------------------- reading

    def samples(self, pos: StreamPosition) -> ShardStage:
        """Stage: shard URLs -> samples (dicts of tar members), the next shards prefetched.

        ``pos`` (a StreamPosition) counts unreadable members (``tar_handler``), lost shards and
        retries, and collects what happened for the log (``events``). Lost shards are counted, never
        raised here: whether they are too many is for every rank to decide together (``check_lost``).
        """
        # webdataset imports torch: not at module level, so that the data_prep tools start fast
        from webdataset.tariterators import group_by_keys, tar_file_expander

        def stage(urls: Iterable[str]) -> Iterator[dict]:
            for url, read in self._reads(list(urls)):
                pos.read_retries += read.retries
                if read.error is None:
                    if read.retries:
                        pos.events.append(f"{redact(url)} read after {read.retries} retries over "
                                          f"{read.seconds:.1f} s")
                    source = {"url": redact(url), "stream": read.data}
                    yield from group_by_keys(tar_file_expander([source], handler=pos.tar_handler),
                                             handler=pos.tar_handler)
                    continue
                pos.skipped_shards += 1
                pos.lost_in_epoch += 1
                pos.lost.append(self.names[redact(url)])
                missing = " (listed in the manifest, missing in the store)" if read.error.missing else ""
                note = (f"shard {redact(url)} skipped{missing}: {redact(read.error.reason)}"
                        + (f", after {read.retries} retries over {read.seconds:.0f} s" if read.retries else "")
                        + f"; its {self.counts[url]} samples are lost for epoch {pos.epoch}")
                _stderr(note)
                pos.events.append(note)
                yield from lost_samples(redact(url), self.counts[url])
        return stage

    def check_lost(self, lost: int, what: str) -> None:
        """ShardReadError (the same on every rank) when ``lost`` shards, counted over every stream of every rank
        in ``what`` (e.g. "epoch 3"), are more than data.max_skipped_shard_fraction of the dataset's."""
        total, fraction = len(self.shards), self.policy.max_skipped_fraction
        if lost > fraction * total:
            raise ShardReadError(
                f"{self.key}: {lost} of its {total} shards could not be read in {what}, over all ranks (more than "
                f"data.max_skipped_shard_fraction={fraction:g}; each is named in the log). Check that the store is "
                "up and the manifest matches it, or raise data.read_retries / data.read_timeout_s / "
                "data.max_skipped_shard_fraction")

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
