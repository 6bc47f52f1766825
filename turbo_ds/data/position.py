"""Where the training stream stands, in terms that survive a change of world size.

A training epoch reads every sample of every shard once (``data.resampled: false``). Its
shards come in an order fixed by (seed, epoch); with R = ranks x workers streams, stream
k = rank + ranks * worker reads whole shards ``order[k::R]`` (the same as splitting by rank,
then by worker). A stream's position is its epoch, how many samples it consumed in it
(what a resume at the same layout skips) and *which* ones: per shard, the sample indices
(the order of samples in the shard) as half-open ranges, ``{"train-000003.tar": "0:41,44:60"}``,
with holes only where the shuffle buffer still held samples.

When the layout (ranks x workers) changes, ``regroup`` turns the positions of the old
streams into what was consumed of every epoch still in progress (``taken``); the new
streams start at the oldest of those epochs and each reads an equal, contiguous part of
what is left of it (``share``), then of the next, and from the first epoch no old stream
had started on, whole shards again. So over the epoch in which the layout changes,
every sample is read exactly once.

``StreamPosition`` is one stream's position as it travels with every batch, with its running
counts of what the stream skipped (bad samples, lost shards) and retried.
"""

from __future__ import annotations

import bisect
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

Share = dict[int, "Ranges | None"]  # shard index -> the sample indices to read (None: all of them)
# A position's running totals (bad and short samples, lost shards, shard read retries): summed over
# the old streams when the layout changes, so that the logged sums go on.
TOTALS = ("skipped", "short", "skipped_shards", "read_retries")


class Ranges:
    """A set of non-negative ints as sorted, disjoint, non-touching half-open ranges [start, end)."""

    def __init__(self, pairs: Iterable[Iterable[int]] = ()):
        self.starts: list[int] = []
        self.ends: list[int] = []
        for start, end in sorted(tuple(p) for p in pairs):
            if start >= end:
                continue
            if self.ends and start <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], end)
            else:
                self.starts.append(start)
                self.ends.append(end)

    @classmethod
    def full(cls, count: int) -> "Ranges":
        return cls([(0, count)])

    @classmethod
    def parse(cls, text: str) -> "Ranges":
        """From ``str(ranges)``: ``"0:41,44:60"`` (compact in any JSON layout)."""
        return cls(tuple(map(int, part.split(":"))) for part in text.split(",") if part)

    def __str__(self) -> str:
        return ",".join(f"{s}:{e}" for s, e in zip(self.starts, self.ends))

    def add(self, i: int) -> None:
        """Add one index (cheap when it extends the last range, as it almost always does)."""
        k = bisect.bisect_right(self.starts, i)  # ranges [0, k) start at or before i
        if k and i < self.ends[k - 1]:
            return
        joins_left = k > 0 and self.ends[k - 1] == i
        joins_right = k < len(self.starts) and self.starts[k] == i + 1
        if joins_left and joins_right:
            self.ends[k - 1] = self.ends.pop(k)
            del self.starts[k]
        elif joins_left:
            self.ends[k - 1] = i + 1
        elif joins_right:
            self.starts[k] = i
        else:
            self.starts.insert(k, i)
            self.ends.insert(k, i + 1)

    def __contains__(self, i: int) -> bool:
        k = bisect.bisect_right(self.starts, i)
        return k > 0 and i < self.ends[k - 1]

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))

    def __iter__(self) -> Iterator[int]:
        for s, e in zip(self.starts, self.ends):
            yield from range(s, e)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ranges) and (self.starts, self.ends) == (other.starts, other.ends)

    def __repr__(self) -> str:
        return f"Ranges({str(self)!r})"

    def pairs(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self.starts, self.ends)]

    def __or__(self, other: "Ranges") -> "Ranges":
        return Ranges(self.pairs() + other.pairs())

    def complement(self, count: int) -> "Ranges":
        """The indices in [0, count) not in this set."""
        bounds = [0] + [b for s, e in zip(self.starts, self.ends) for b in (s, e)] + [count]
        return Ranges((max(0, a), min(count, b)) for a, b in zip(bounds[::2], bounds[1::2]))

    def slice(self, start: int, stop: int) -> "Ranges":
        """The members from the ``start``-th to before the ``stop``-th, in increasing order."""
        out, seen = [], 0
        for s, e in zip(self.starts, self.ends):
            lo, hi = max(start - seen, 0), min(stop - seen, e - s)
            if lo < hi:
                out.append((s + lo, s + hi))
            seen += e - s
        return Ranges(out)


EPOCH_SLOTS = 4  # epochs told apart by lost_per_epoch: more than the ranks' streams ever lie apart


def lost_per_epoch(positions: Iterable[dict[str, Any]]) -> list[int]:
    """Shards lost by these streams in each epoch, in slot ``epoch % EPOCH_SLOTS``: summed over every rank (an
    all-reduce), each slot is one epoch's count over all streams, whichever epoch each stream is in now."""
    slots = [0] * EPOCH_SLOTS
    for p in positions:
        slots[p["epoch"] % EPOCH_SLOTS] += p.get("lost_in_epoch", 0)
        slots[(p["epoch"] - 1) % EPOCH_SLOTS] += p.get("lost_epoch_before", 0)
    return slots


def share(order: list[int], counts: list[int], taken: dict[int, Ranges] | None, stream: int, streams: int) -> Share:
    """The samples stream ``stream`` of ``streams`` reads in an epoch whose shards come in ``order``.

    Without ``taken``: whole shards ``order[stream::streams]``. With it (what the old streams
    had consumed when the layout changed in this epoch): an equal, contiguous part of the rest,
    in shard order, so the new streams end the epoch together.
    """
    if taken is None:
        return {i: None for i in order[stream::streams]}
    left = [(i, taken[i].complement(counts[i]) if i in taken else Ranges.full(counts[i])) for i in order]
    total = sum(len(r) for _, r in left)
    start, stop = stream * total // streams, (stream + 1) * total // streams
    out, seen = {}, 0
    for i, rest in left:
        part = rest.slice(start - seen, stop - seen)
        if len(part):
            out[i] = part
        seen += len(rest)
    return out


def eval_share(counts: list[int], reader: int, readers: int) -> Share:
    """What reader ``reader`` of ``readers`` evaluates of shards with ``counts`` samples: whole shards
    ``reader``, ``reader + readers``, ... of the first ``len(counts) - len(counts) % readers``, then an
    equal, contiguous part of the remaining shards' samples. Every sample goes to exactly one reader, and
    each shard is read once, except the few remaining ones, read by at most one reader more each boundary."""
    whole = len(counts) - len(counts) % readers
    return {**{i: None for i in range(reader, whole, readers)},
            **share(list(range(whole, len(counts))), counts, {}, reader, readers)}


def share_ranges(part: Share, counts: list[int]) -> dict[int, Ranges]:
    return {i: Ranges.full(counts[i]) if r is None else r for i, r in part.items()}


_STREAM = re.compile(r"rank(\d+)/worker(\d+)")


def stream_name(rank: int, worker: int) -> str:
    return f"rank{rank}/worker{worker}"


def stream_index(name: str, ranks: int) -> int:
    """k = rank + ranks * worker for a stream named ``rank<r>/worker<w>``."""
    match = _STREAM.fullmatch(name)
    if match is None:
        raise ValueError(f"data position: {name!r} is not a stream name (rank<r>/worker<w>)")
    return int(match[1]) + ranks * int(match[2])


@dataclass
class Layout:
    """How many streams read the training data: ranks x loader workers per rank (at least 1)."""

    ranks: int
    workers: int

    @property
    def streams(self) -> int:
        return self.ranks * self.workers

    def names(self) -> list[str]:
        return [stream_name(r, w) for r in range(self.ranks) for w in range(self.workers)]

    def __str__(self) -> str:
        return f"{self.ranks} rank(s) x {self.workers} stream(s)"


@dataclass
class Regrouped:
    """Where the streams of a new layout start: ``epoch``, and what was ``taken`` of each epoch in progress."""

    epoch: int
    taken: dict[int, dict[int, Ranges]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # TOTALS summed over the old streams
    note: str = ""


def regroup(states: dict[str, dict[str, Any]], old: Layout, taken: dict[int, dict[int, Ranges]],
            order_of: Any, counts: list[int], index_of: dict[str, int], resampled: bool) -> Regrouped:
    """What the streams of ``old`` (their recorded ``states``) had consumed, for a new layout.

    ``taken``: what the old layout itself started with (from an earlier change); ``order_of(e)``:
    the shard order of epoch e; ``index_of``: shard name -> index. An epoch that a stream has
    passed counts as read in full by it (its whole share); the epoch it is in, as far as its
    ``done`` ranges go.
    """
    missing = [n for n in old.names() if n not in states]
    epochs = [s["epoch"] for s in states.values()]
    totals = {key: sum(s.get(key, 0) for s in states.values()) for key in TOTALS}
    if resampled or missing or any("done" not in s for s in states.values()):
        # Draws with replacement have no "rest of the epoch"; positions without `done` (older
        # checkpoints) do not say which samples were read. Either way: a fresh epoch.
        why = ("data.resampled draws with replacement" if resampled else
               "the checkpoint does not record which samples each stream read")
        epoch = max(epochs, default=-1) + 1
        return Regrouped(epoch, {}, totals, f"{why}: the new streams start fresh at epoch {epoch}")
    # From the oldest epoch a stream is in to the newest one any stream has read from (an earlier
    # layout may have run ahead of the last one: what it took of later epochs stays taken).
    first, last = min(epochs), max(epochs + list(taken))
    out: dict[int, dict[int, Ranges]] = {}
    for epoch in range(first, last + 1):
        order, before = order_of(epoch), taken.get(epoch)
        got = dict(before or {})
        for name, state in states.items():
            if state["epoch"] > epoch:
                part = share_ranges(share(order, counts, before, stream_index(name, old.ranks), old.streams), counts)
            elif state["epoch"] == epoch:
                part = {index_of[shard]: Ranges.parse(r) for shard, r in state["done"].items()}
            else:
                continue
            for i, r in part.items():
                got[i] = got[i] | r if i in got else r
        out[epoch] = got
    left = sum(counts) - sum(len(r) for r in out[first].values())
    return Regrouped(first, out, totals, f"epoch {first} continues with the {left} of {sum(counts)} samples "
                                                 "no stream had read" + (f" (epochs up to {last} were in progress)"
                                                                         if last > first else ""))


# What reading a missing, truncated or garbage tar file raises (opening it, parsing its headers,
# decompressing, grouping its members); webdataset passes them to StreamPosition.tar_handler.
TAR_READ_ERRORS = (OSError, EOFError, ValueError, tarfile.TarError, zlib.error)


class StreamPosition:
    """Where a stream stands: epoch, raw samples consumed in it and which ones (``done``: per shard,
    sample indices as ranges), bad samples skipped and short videos (fewer frames than the clip
    needs: frames repeat) so far, shards that could not be read (so far; in this epoch and in the one
    before, since the data budget of ``data.max_skipped_shard_fraction`` is an epoch's sum over every
    stream and a batch may already be in the next epoch) and retried shard reads.

    It travels with every batch, so a checkpoint records exactly what training consumed
    and a resumed stream continues from there instead of restarting its epoch (at another
    world size too: ``regroup``). ``events`` (what the shard reader did: retries, skipped
    shards) is not state: it leaves with the next batch for the log (``take_events``); nor is
    ``lost``, the names of the shards lost so far (an evaluation counts each once, whichever
    readers shared it).
    """

    def __init__(self, epoch: int = 0, consumed: int = 0, skipped: int = 0, short: int = 0,
                 skipped_shards: int = 0, read_retries: int = 0, done: dict[str, str] | None = None,
                 lost_in_epoch: int = 0, lost_epoch_before: int = 0):
        self.epoch, self.consumed, self.skipped, self.short = epoch, consumed, skipped, short
        self.skipped_shards, self.read_retries = skipped_shards, read_retries
        self.lost_in_epoch, self.lost_epoch_before = lost_in_epoch, lost_epoch_before
        self.done = {shard: Ranges.parse(r) for shard, r in (done or {}).items()}
        self.events: list[str] = []
        self.lost: list[str] = []

    def count(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self.consumed += 1
            if "__shard__" in sample:
                self.done.setdefault(sample["__shard__"], Ranges()).add(sample["__index__"])
            yield sample

    def next_epoch(self) -> None:
        self.epoch, self.consumed, self.done = self.epoch + 1, 0, {}
        self.lost_in_epoch, self.lost_epoch_before = 0, self.lost_in_epoch

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset's handler for reading tar files: an unreadable file or member is skipped and counted."""
        if not isinstance(exn, TAR_READ_ERRORS):
            raise exn
        self.skipped += 1
        return True

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "skipped": self.skipped, "short": self.short,
                "skipped_shards": self.skipped_shards, "read_retries": self.read_retries,
                "lost_in_epoch": self.lost_in_epoch, "lost_epoch_before": self.lost_epoch_before,
                "done": {shard: str(r) for shard, r in self.done.items()}}

    def take_events(self) -> list[str]:
        events, self.events = self.events, []
        return events
