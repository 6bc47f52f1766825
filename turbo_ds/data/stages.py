"""The generic loader stages: each a function from an iterator of samples to an iterator.

As in open_clip's ``get_wds_dataset``, a stream is ``[source, stage, stage, ...]`` and ``run``
chains them (each split's list: data/streams.py). These stages know nothing of videos: they
order (``shuffled``, ``resampled``, ``shuffle``), split (``take``, ``drop_first``,
``keep``), number (``number_samples``), apply a per-sample function (``each``, ``each_or_skip``)
and group (``batch``). ``each_or_skip`` is where bad data is skipped and counted: a sample
rejected with ``DataError`` is dropped and counted in the stream's position; any other
exception is a bug and propagates.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Callable, Iterator

from webdataset.filters import _shuffle

from turbo_ds.data.errors import DataError
from turbo_ds.data.position import Ranges, StreamPosition

Stage = Callable[[Iterator[Any]], Iterator[Any]]  # one step of a pipeline: samples in, samples out


def run(pipeline: list) -> Iterator[Any]:
    """Chain ``[source, stage, stage, ...]``: the source is iterated, each stage wraps the iterator before it."""
    stream = iter(pipeline[0])
    for stage in pipeline[1:]:
        stream = stage(stream)
    return stream


def shuffled(items: list, key: str) -> list:
    """A copy of ``items`` in an order that depends only on ``key``."""
    items = list(items)
    random.Random(key).shuffle(items)
    return items


def resampled(items: list, count: int, rng: random.Random) -> Iterator:
    """``count`` draws from ``items`` with replacement."""
    return (rng.choice(items) for _ in range(count))


def take(count: int) -> Stage:
    """The first ``count`` items."""
    return lambda items: itertools.islice(items, count)


def drop_first(count: int) -> Stage:
    """All items but the first ``count`` (which are read, not processed)."""
    return lambda items: itertools.islice(items, count, None)


def number_samples(names: dict[str, str]) -> Stage:
    """Adds ``__shard__`` (the shard's name in the manifest, from ``names[__url__]``) and ``__index__``
    (the sample's place in its shard): what a stream position records. Each shard is read once an epoch."""
    def stage(samples: Iterator[dict]) -> Iterator[dict]:
        url, index = None, 0
        for sample in samples:
            index = index + 1 if sample["__url__"] == url else 0
            url = sample["__url__"]
            yield {**sample, "__shard__": names[url], "__index__": index}
    return stage


def keep(part: dict[str, Ranges | None]) -> Stage:
    """Only the samples of ``part`` (shard name -> sample indices; None: all), read after a change of world size."""
    def wanted(s: dict) -> bool:
        indices = part[s["__shard__"]]
        return indices is None or s["__index__"] in indices
    return lambda samples: filter(wanted, samples)


def shuffle(buffer: int, rng: random.Random) -> Stage:
    """webdataset's shuffle buffer (it starts yielding once half full)."""
    return lambda samples: _shuffle(samples, buffer, buffer // 2, rng=rng)


def each(fn: Callable[[dict], dict]) -> Stage:
    """``fn`` applied to every sample."""
    return lambda samples: map(fn, samples)


def each_or_skip(fn: Callable[[dict], dict], pos: StreamPosition) -> Stage:
    """``fn`` applied to every sample; a sample it rejects with DataError is dropped and counted in ``pos``.

    Only DataError: any other exception is a bug and propagates.
    """
    def stage(samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            try:
                out = fn(sample)
            except DataError:
                pos.skipped += 1
                continue
            yield out
    return stage


def batch(size: int, make: Callable[[list[dict]], dict], partial: bool) -> Stage:
    """Groups of ``size`` samples made into batches by ``make``; the last, smaller group only when ``partial``."""
    def stage(samples: Iterator[dict]) -> Iterator[dict]:
        group = []
        for sample in samples:
            group.append(sample)
            if len(group) == size:
                yield make(group)
                group = []
        if group and partial:
            yield make(group)
    return stage
