"""WebDataset loaders: each split's stream is one ordered, commented list of stages.

As in open_clip's ``get_wds_dataset``, ``TrainStream.stages`` and ``EvalStream.stages``
list the whole pipeline in order: a source (shard paths or URLs), then stages, each a function
from an iterator to an iterator; ``run`` chains them. Training, one epoch of one
rank/worker (epoch e is a deterministic function of the seed)::

    this stream's share of the shards (shuffled by (seed, e), split by rank and worker; see
    data/position.py) -> tar samples (remote shards prefetched and retried) -> number samples in their
    shard -> keep the share -> shuffle buffer
    (data.resampled: shards drawn with replacement by (seed, e, rank, worker) -> tar samples -> take its share
    -> shuffle buffer) -> count -> drop first (resume) -> skip lost shards' placeholders -> seed per sample
    -> parse targets -> decode -> choose views

and the epochs one after another -> batch (uint8; a batch may span the end of an epoch: no sample is dropped)
|| in the training process: to_device -> normalise (float32).

Evaluation: every shard in order -> tar samples -> split by rank (sample i goes to rank
i % world) -> split by worker ((i // world) % workers) -> count -> skip lost shards' placeholders
-> parse targets -> decode
-> choose views (num_clips x num_crops, no randomness) -> batch (the last one partial) || to_device
-> normalise.

Batches leave the loader as uint8 pixels: a quarter of the bytes of float32 to pass from a
worker, pin and copy to the GPU, and no float work in the workers; ``to_device`` normalises
them on the training device (bit for bit what normalising in the loader gave).

A sample is the dict of its tar members (``__key__``, ``mp4``, ``cls``, ``txt``, ``json``);
the stages add ``rng`` (seed per sample), ``label`` or ``captions`` (parse targets), ``frames`` in place
of ``mp4`` (decode), ``views`` and ``text`` (choose views). Augmentation randomness is
seeded per sample by (seed, epoch, key), so a sample looks the same whichever worker
decodes it.

Bad data is skipped and counted (``StreamPosition.skipped``), never fatal: an unreadable
tar file or member through ``StreamPosition.tar_handler``, a sample that raises
``DataError`` (corrupt mp4, a video over ``data.max_decode_pixels`` x 16 or still decoding after
``data.decode_timeout_s``, missing or unparsable member, no caption) through
``each_or_skip``. Any other exception is a bug and propagates. Shards are located and read
by ``source.ShardSource`` (a local folder or a URL): a shard that cannot be read after
retries is counted in ``StreamPosition.skipped_shards`` and its samples become placeholders
(numbered in their shard like real ones), skipped and counted after the stream has counted
them, so no later sample moves and its ``done`` ranges stay whole.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle

from turbo_ds.config import DataConfig, EvalConfig, ModelConfig
from turbo_ds.data import transforms as T
from turbo_ds.data.errors import DataError
from turbo_ds.data.position import Layout, Ranges, StreamPosition, regroup, share
from turbo_ds.data.shards import check_readers
from turbo_ds.data.source import ShardSource, check_not_lost
from turbo_ds.data.video import (DecodeLimits, VideoTooLarge, decode_frames, dense_indices, read_frames,
                                 sample_indices)

Stage = Callable[[Iterator[Any]], Iterator[Any]]  # one step of a pipeline: samples in, samples out
Targets = Literal["label", "captions"]  # what a task learns from: `cls` ids, or `txt`/json captions


# ------------------------------------------------------------------ what a sample holds


def sample_label(sample: dict) -> int:
    """The integer class id in the ``cls`` member."""
    if "cls" not in sample:
        raise DataError("sample has no cls member")
    try:
        return int(sample["cls"])
    except ValueError as e:
        raise DataError(f"cls member {sample['cls'][:20]!r} is not an integer") from e


def sample_captions(sample: dict) -> list[str]:
    """The ``txt`` caption plus any further ones in ``json["captions"]`` (a list); none is bad input."""
    try:
        captions = [sample["txt"].decode()] if "txt" in sample else []
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError as e:  # not UTF-8, not JSON
        raise DataError(f"unreadable txt or json member: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"json member is a {type(meta).__name__}, not an object")
    extra = meta.get("captions") or []
    if not isinstance(extra, list):
        raise DataError(f"json captions is a {type(extra).__name__}, not a list")
    captions += [c for c in extra if isinstance(c, str) and c not in captions]
    if not captions:
        raise DataError("sample has no caption")
    return captions


@dataclass
class ClipSpec:
    """What the model needs from each sample, and how to sample and augment it."""

    frames: int
    size: int
    train: bool
    sampling: str
    frame_stride: int
    crop_scale: tuple[float, float]
    hflip_prob: float
    num_clips: int
    num_crops: int
    normalize: T.Normalizer
    targets: Targets = "label"

    @classmethod
    def from_config(cls, data: DataConfig, model: ModelConfig, train: bool, evaluation: EvalConfig | None = None,
                    frames: int | None = None, targets: Targets = "label") -> "ClipSpec":
        """``frames`` overrides model.num_frames (a long video feeds several encoder clips)."""
        views = (1, 1) if train or evaluation is None else (evaluation.num_clips, evaluation.num_crops)
        return cls(frames or model.num_frames, model.img_size, train, data.sampling, data.frame_stride,
                   tuple(data.crop_scale), data.hflip_prob, *views, T.Normalizer(data.mean, data.std), targets)

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops

    @property
    def span(self) -> int:
        """Frames a video needs so that no pick repeats a frame."""
        return (self.frames - 1) * self.frame_stride + 1 if self.sampling == "dense" else self.frames

    def frame_indices(self, num_frames: int, rng: np.random.Generator | None) -> np.ndarray:
        """The frames of all temporal clips, clip after clip: (num_clips * frames,)."""
        def pick(clip: int) -> np.ndarray:
            if self.sampling == "dense":
                return dense_indices(num_frames, self.frames, self.frame_stride, rng, clip, self.num_clips)
            return sample_indices(num_frames, self.frames, rng, clip, self.num_clips)
        return np.concatenate([pick(k) for k in range(self.num_clips)])


class DecodedCache:
    """A small LRU of fully decoded videos keyed by sample key (for datasets that fit in memory).

    With the cache off, only the picked frames are decoded; with it on, a video is decoded
    whole once so that later epochs can pick other frames from memory.
    """

    def __init__(self, capacity: int, data: DataConfig) -> None:
        self.capacity, self.threads, self.items = capacity, data.decode_threads, OrderedDict()
        self.limits = DecodeLimits(data.max_decode_pixels, data.decode_timeout_s)

    def read(self, key: str, data: bytes, choose: Callable[[int], np.ndarray]) -> np.ndarray:
        """The frames ``choose(num_frames)`` picks for this sample, (picks, H, W, 3) uint8."""
        if not self.capacity:
            return read_frames(data, choose, self.threads, self.limits)
        if key in self.items:
            self.items.move_to_end(key)
        else:
            try:
                self.items[key] = decode_frames(data, self.threads, self.limits)
            except VideoTooLarge:  # too long to keep whole: decode only the picks
                return read_frames(data, choose, self.threads, self.limits)
            if len(self.items) > self.capacity:
                self.items.popitem(last=False)
        video = self.items[key]
        return video[choose(len(video))]


# ------------------------------------------------------------------ stages


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


def split_by(index: int, count: int) -> Stage:
    """Every ``count``-th item from the ``index``-th on: items[index::count]."""
    return lambda items: itertools.islice(items, index, None, count)


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


def seed_per_sample(seed: int, epoch: int) -> Callable[[dict], dict]:
    """Adds ``rng``, the sample's augmentation randomness, seeded by (seed, epoch, key)."""
    def add_rng(s: dict) -> dict:
        return {**s, "rng": np.random.default_rng([seed, epoch, zlib.crc32(s["__key__"].encode())])}
    return add_rng


def parse_targets(targets: Targets) -> Callable[[dict], dict]:
    """Adds what the task learns from: ``label`` (the ``cls`` member) or ``captions``; DataError when missing/bad."""
    def parse(s: dict) -> dict:
        return {**s, "label": sample_label(s)} if targets == "label" else {**s, "captions": sample_captions(s)}
    return parse


def decode(spec: ClipSpec, cache: DecodedCache, pos: StreamPosition) -> Callable[[dict], dict]:
    """Replaces ``mp4`` by ``frames``, the frames ``spec`` picks (only those are decoded).

    Bytes that do not decode raise CorruptVideo, a DataError. Videos too short for the clip
    repeat frames (``sample_indices``, ``dense_indices``) and are counted in ``pos.short``.
    """
    def decode_one(s: dict) -> dict:
        if "mp4" not in s:
            raise DataError("sample has no mp4 member")
        rng = s["rng"] if spec.train else None
        length = [0]  # the video's true frame count, as last seen by the decoder

        def choose(n: int) -> np.ndarray:
            length[0] = n
            return spec.frame_indices(n, rng)

        frames = cache.read(s["__key__"], s["mp4"], choose)
        pos.short += length[0] < spec.span
        h, w = frames.shape[1:3]
        out = {k: v for k, v in s.items() if k != "mp4"}  # the frames replace the encoded video
        return {**out, "frames": frames.reshape(spec.num_clips, spec.frames, h, w, 3)}  # (clips, T, H, W, 3) uint8
    return decode_one


def choose_views(spec: ClipSpec) -> Callable[[dict], dict]:
    """Adds ``views``: (clip, crop box, flip) per view; and for captions the ``text`` trained on (None in eval).

    Training: one random resized crop, flipped with ``hflip_prob``, and one caption per clip per epoch,
    drawn from the sample's ``rng`` after its frames. Evaluation: clip-major, view v = clip * num_crops + crop.
    """
    def choose(s: dict) -> dict:
        h, w = s["frames"].shape[2:4]
        if spec.train:
            rng = s["rng"]
            box = T.random_resized_crop_box(h, w, spec.crop_scale, rng)
            views = [(0, box, bool(rng.random() < spec.hflip_prob))]
        else:
            boxes = T.spatial_crop_boxes(h, w, spec.num_crops)
            views = [(k, box, False) for k in range(spec.num_clips) for box in boxes]
        if spec.targets == "captions":
            text = s["captions"][int(s["rng"].integers(len(s["captions"])))] if spec.train else None
            return {**s, "views": views, "text": text}
        return {**s, "views": views}
    return choose


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


def _empty_batch(*shape: int) -> torch.Tensor:
    """An uninitialised uint8 tensor of ``shape``."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    # In a loader worker, build the batch in shared memory (as torch's default_collate does):
    # handing it to the training process then moves no pixels.
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def collate(samples: list[dict], spec: ClipSpec, stream: str, position: StreamPosition) -> dict[str, Any]:
    """Crop and resize every view straight into its slot of one preallocated uint8 batch tensor."""
    video = _empty_batch(len(samples), spec.views, 3, spec.frames, spec.size, spec.size)  # (B, V, C, T, H, W)
    for slots, s in zip(video, samples):
        clips = torch.from_numpy(s["frames"])  # (clips, T, H, W, C) uint8
        for slot, (k, box, flip) in zip(slots, s["views"]):
            slot.copy_(T.crop_flip_resize(clips[k], box, flip, spec.size).permute(3, 0, 1, 2))  # (C, T, H, W)
    targets = ({"label": torch.tensor([s["label"] for s in samples])} if spec.targets == "label"  # (B,)
               else {"captions": [s["captions"] for s in samples], "text": [s["text"] for s in samples]})
    return {"video": video if spec.views > 1 else video.flatten(0, 1),  # (B, V, C, T, H, W) or (B, C, T, H, W)
            **targets, "key": [s["__key__"] for s in samples], "stream": stream, "position": position.state(),
            "events": position.take_events()}


def to_device(batch: dict[str, Any], device: torch.device, normalize: T.Normalizer) -> dict[str, Any]:
    """A loader batch on ``device``, its uint8 video normalised there to float32 (``spec.normalize``).

    Copies are non-blocking: from pinned memory (``make_loader(pin_memory=True)``) they do not stall the host.
    """
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return {**out, "video": normalize(out["video"])}


# ------------------------------------------------------------------ streams


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class TrainStream(IterableDataset):
    """Infinite, epoch-seeded training batches for one rank.

    ``resume`` maps stream names (``rank<r>/worker<w>``) to the positions recorded in a
    checkpoint; each stream skips the raw samples it had consumed (cheap: no decoding).
    ``resume_layout`` (``layout_state``'s output) says which layout wrote them; when it is
    another world size or worker count, the positions of all old streams are regrouped
    (data/position.py) and the new streams read exactly what the old ones had left.
    """

    def __init__(self, data: DataConfig, model: ModelConfig, rank: int, world: int, batch_size: int, seed: int,
                 resume: dict[str, dict[str, Any]] | None = None, frames: int | None = None,
                 targets: Targets = "label", resume_layout: dict[str, Any] | None = None):
        self.source = ShardSource.from_config(data, "train")  # a folder or URL: manifest, shard URLs, reading
        self.manifest, self.shards = self.source.manifest, self.source.shards
        self.names = [s["name"] for s in self.manifest["shards"]]
        self.counts = [s["num_samples"] for s in self.manifest["shards"]]
        check_readers(data, self.manifest, world)
        self.spec = ClipSpec.from_config(data, model, train=True, frames=frames, targets=targets)
        self.data, self.rank, self.world, self.batch_size, self.seed = data, rank, world, batch_size, seed
        self.layout = Layout(world, max(1, data.num_workers))
        self.resume, self.taken, self.regrouped = resume or {}, {}, None
        if resume_layout is not None:
            self._restore_layout(resume_layout)

    def _restore_layout(self, recorded: dict[str, Any]) -> None:
        index_of = {name: i for i, name in enumerate(self.names)}
        named = [*recorded.get("taken", {}).values(), *(s.get("done", {}) for s in self.resume.values())]
        gone = sorted({shard for part in named for shard in part} - set(index_of))
        if gone:
            raise ValueError(f"data.train={self.data.train}: the checkpoint's data position names shards that are "
                             f"not in its manifest ({', '.join(gone[:3])}); resume with the run's dataset")
        taken = {int(e): {index_of[shard]: Ranges.parse(r) for shard, r in part.items()}
                 for e, part in recorded.get("taken", {}).items()}
        old = Layout(recorded["ranks"], recorded["workers"])
        if old == self.layout:
            self.taken = taken
            return
        # Another world size or worker count: every rank regroups all old streams the same way.
        self.regrouped = regroup(self.resume, old, taken, self.order, self.counts, index_of, self.data.resampled)
        self.regrouped.note = f"data: {old} -> {self.layout}: {self.regrouped.note}"
        self.taken = self.regrouped.taken
        # The old totals (bad and short samples, lost shards, read retries) go on with the first stream,
        # so logged sums continue.
        self.resume = {name: {"epoch": self.regrouped.epoch, **(self.regrouped.totals if k == 0 else {})}
                       for k, name in enumerate(self.layout.names())}

    def order(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s shard order (indices): the same on every rank, for any world size."""
        return shuffled(list(range(len(self.shards))), f"{self.seed}-{epoch}")

    def positions(self) -> dict[str, dict[str, Any]]:
        """Where this rank's streams start (what a checkpoint records for a stream that has not yet delivered)."""
        return {name: StreamPosition(**self.resume.get(name, {})).state()
                for name in self.layout.names() if name.startswith(f"rank{self.rank}/")}

    def layout_state(self, positions: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint records beside every stream's ``positions``: the layout, and what was taken
        of the epochs that were in progress when it last changed (while a stream is still in one)."""
        oldest = min((p["epoch"] for p in positions.values()), default=0)
        return {"ranks": self.layout.ranks, "workers": self.layout.workers,
                "taken": {str(e): {self.names[i]: str(r) for i, r in part.items()}
                          for e, part in self.taken.items() if e >= oldest}}

    def stages(self, epoch: int, worker: int, workers: int, pos: StreamPosition, cache: DecodedCache | None = None,
               resume_at: int = 0, raw: bool = False) -> list:
        """Epoch ``epoch`` of this rank/worker's stream: ``[source, stage, ...]`` for ``run``.

        ``resume_at`` raw samples are skipped undecoded; ``raw`` stops after the shuffle buffer.
        """
        if self.data.resampled:
            # Every stream draws its own shards with replacement, so any shard count suits any
            # world size; its epoch is its share of the manifest. A good shard yields at least
            # one sample, so that many draws suffice (fewer samples only if shards are broken).
            quota = self.manifest["num_samples"] // (self.world * workers)
            shards_per_epoch = math.ceil(quota * len(self.shards) / self.manifest["num_samples"])
            pipeline = [
                resampled(self.shards, quota, random.Random(f"resample-{self.seed}-{epoch}-{self.rank}-{worker}")),
                # tar members -> samples (remote shards prefetched); unreadable members and shards skipped, counted
                self.source.samples(pos, shards_per_epoch),
                take(quota),  # this stream's share of an epoch
            ]
        else:
            # Whole shards order[k::streams] for stream k = rank + world * worker (split by rank, then by
            # worker); in an epoch that was in progress when the world size changed, its part of the rest.
            part = share(self.order(epoch), self.counts, self.taken.get(epoch), self.rank + self.world * worker,
                         self.world * workers)
            pipeline = [
                [self.shards[i] for i in part],  # this stream's shards (paths or URLs), in the epoch's order
                # tar members -> samples (remote shards prefetched); unreadable members and shards skipped, counted;
                # a lost shard gives its manifest count of placeholders, so its indices still line up
                self.source.samples(pos),
                number_samples(self.source.names),  # __shard__, __index__: what a position records
                keep({self.names[i]: r for i, r in part.items()}),  # only its part of partly read shards
            ]
        order = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
        pipeline.append(shuffle(self.data.shuffle_buffer, order))  # shuffle buffer, seeded per stream and epoch
        if raw:
            return pipeline
        spec, cache = self.spec, cache or DecodedCache(0, self.data)
        return pipeline + [
            pos.count,  # raw samples consumed this epoch, and which: what a checkpoint records
            drop_first(resume_at),  # resume mid-epoch: drop what was already trained on, without decoding
            each_or_skip(check_not_lost, pos),  # placeholders of a shard that could not be read: skipped, counted
            each(seed_per_sample(self.seed, epoch)),  # per-sample rng from (seed, epoch, key)
            each_or_skip(parse_targets(spec.targets), pos),  # label or captions; bad ones skipped and counted
            each_or_skip(decode(spec, cache, pos), pos),  # only the picked frames; a corrupt mp4 is skipped, counted
            each(choose_views(spec)),  # random resized crop box, flip, one caption
        ]

    def epoch_samples(self, epoch: int, worker: int, workers: int, pos: StreamPosition) -> Iterator[dict]:
        """The raw (undecoded) samples this rank/worker reads in ``epoch``, in order."""
        return run(self.stages(epoch, worker, workers, pos, raw=True))

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        name, spec = f"rank{self.rank}/worker{worker}", self.spec
        pos = StreamPosition(**self.resume.get(name, {}))
        cache = DecodedCache(self.data.decoded_cache_clips, self.data)
        resume_at, pos.consumed, pos.done = pos.consumed, 0, {}  # counted again while skipping

        def epochs() -> Iterator[dict]:
            nonlocal resume_at
            while True:
                yield from run(self.stages(pos.epoch, worker, workers, pos, cache, resume_at))
                pos.next_epoch()
                resume_at = 0

        # crop + flip + resize on uint8, normalise into one batch tensor; batches span epoch ends
        yield from batch(self.batch_size, lambda group: collate(group, spec, name, pos), partial=False)(epochs())


class EvalStream(IterableDataset):
    """Every validation sample exactly once across ranks (and workers): sample i goes to rank i % world.

    With ``evaluation.num_clips * num_crops = V > 1`` views, ``video`` is (B, V, C, T, H, W).
    ``num_workers`` must equal the loader's; ``num_batches`` accounts for the split.
    """

    def __init__(self, data: DataConfig, model: ModelConfig, rank: int, world: int, batch_size: int,
                 evaluation: EvalConfig | None = None, num_workers: int = 0, frames: int | None = None,
                 targets: Targets = "label"):
        self.source = ShardSource.from_config(data, "val")  # a folder or URL: manifest, shard URLs, reading
        self.manifest, self.shards = self.source.manifest, self.source.shards
        self.spec = ClipSpec.from_config(data, model, train=False, evaluation=evaluation, frames=frames,
                                         targets=targets)
        self.data, self.rank, self.world, self.batch_size = data, rank, world, batch_size
        self.workers = max(1, num_workers)

    @property
    def num_batches(self) -> int:
        """Batches on the busiest rank; every rank runs this many (padding) so collectives line up."""
        def batches(rank: int) -> int:
            local = len(range(rank, self.manifest["num_samples"], self.world))
            return sum(math.ceil(len(range(w, local, self.workers)) / self.batch_size) for w in range(self.workers))
        return max(batches(r) for r in range(self.world))

    def stages(self, worker: int, workers: int, pos: StreamPosition) -> list:
        """This rank/worker's share of the validation set: ``[source, stage, ...]`` for ``run``."""
        spec = self.spec
        return [
            self.shards,  # every shard, in manifest order
            # tar members -> samples (remote shards prefetched); an unreadable shard gives placeholders, so that
            # every rank still agrees on each sample's index
            self.source.samples(pos),
            split_by(self.rank, self.world),  # sample i -> rank i % world
            split_by(worker, workers),  # then -> worker (i // world) % workers
            pos.count,
            each_or_skip(check_not_lost, pos),  # placeholders of a shard that could not be read: skipped, counted
            each_or_skip(parse_targets(spec.targets), pos),  # label or captions; bad ones skipped and counted
            each_or_skip(decode(spec, DecodedCache(0, self.data), pos), pos),  # corrupt, huge, hanging: skipped
            each(choose_views(spec)),  # num_clips x num_crops fixed views
            batch(self.batch_size, lambda group: collate(group, spec, f"eval{self.rank}/worker{worker}", pos),
                  partial=True),
        ]

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        if workers != self.workers:
            raise ValueError(f"EvalStream(num_workers={self.workers}) is read by {workers} loader workers; "
                             "pass the same count to both")
        yield from run(self.stages(worker, workers, StreamPosition()))


def _ignore_stop_signals(worker_id: int) -> None:
    # Slurm signals every process of a job step; the training process handles preemption
    # (finish the step, checkpoint) and its workers must survive until it is done.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(stream: TrainStream | EvalStream, num_workers: int, prefetch_factor: int | None = None,
                pin_memory: bool = False) -> DataLoader:
    """Batches are formed inside the stream, so the DataLoader only adds worker processes.

    ``prefetch_factor`` (batches queued per worker) defaults to the stream's ``data.prefetch_factor``.
    ``pin_memory`` (for a GPU) copies each batch into page-locked memory in a background thread, so that
    its copy to the GPU runs asynchronously.
    """
    prefetch = prefetch_factor or stream.data.prefetch_factor
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch if num_workers else None, worker_init_fn=_ignore_stop_signals,
                      pin_memory=pin_memory)
