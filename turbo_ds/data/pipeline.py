"""WebDataset loaders: one ordered list of stages per split.

Training stream of one rank/worker (infinite; epoch e is a deterministic function of the seed):

    1. shards: shuffle(seed, e) -> split by node -> split by worker
       (data.resampled: draw shards with replacement, seeded by (seed, e, rank, worker))
    2. tar samples (a truncated or garbage member is skipped and counted)
    3. shuffle buffer
    4. choose frame indices from the container metadata (uniform segments or a dense window),
       decode only those frames (a corrupt mp4 is skipped and counted)
    5. choose the crop box and flip
    6. batch: crop + flip + resize on uint8, normalise straight into the batch tensor

Evaluation stream: every shard in order, sample i goes to rank i % world (then to worker
(i // world) % workers); num_clips x num_crops views per sample, no randomness.
Augmentation randomness is seeded per sample by (seed, epoch, key), so a sample looks
the same whichever worker decodes it. Bad data (a sample that raises DataError, an
unreadable tar file or member) is skipped and counted; any other exception is a bug
and propagates.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
import tarfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import tarfile_samples

from turbo_ds.config import DataConfig, EvalConfig, ModelConfig
from turbo_ds.data import transforms as T
from turbo_ds.data.errors import DataError
from turbo_ds.data.shards import read_manifest, shard_paths
from turbo_ds.data.video import decode_frames, dense_indices, read_frames, sample_indices


Targets = Literal["label", "captions"]  # what a task learns from: `cls` ids, or `txt`/json captions


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


# What reading a missing, truncated or garbage tar file raises (opening it, parsing its headers,
# decompressing, grouping its members); webdataset passes them to StreamPosition.tar_handler.
TAR_READ_ERRORS = (OSError, EOFError, ValueError, tarfile.TarError, zlib.error)


class StreamPosition:
    """Where a stream stands: epoch, raw samples consumed in it, bad samples skipped and short
    videos (fewer frames than the clip needs: frames repeat) so far.

    It travels with every batch, so a checkpoint records exactly what training consumed
    and a resumed stream continues from there instead of restarting its epoch.
    """

    def __init__(self, epoch: int = 0, consumed: int = 0, skipped: int = 0, short: int = 0):
        self.epoch, self.consumed, self.skipped, self.short = epoch, consumed, skipped, short

    def count(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self.consumed += 1
            yield sample

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset's handler for reading tar files: an unreadable file or member is skipped and counted."""
        if not isinstance(exn, TAR_READ_ERRORS):
            raise exn
        self.skipped += 1
        return True

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "skipped": self.skipped, "short": self.short}


class DecodedCache:
    """A small LRU of fully decoded videos keyed by sample key (for datasets that fit in memory).

    With the cache off, only the picked frames are decoded; with it on, a video is decoded
    whole once so that later epochs can pick other frames from memory.
    """

    def __init__(self, capacity: int, threads: int = 1) -> None:
        self.capacity, self.threads, self.items = capacity, threads, OrderedDict()

    def read(self, key: str, data: bytes, choose: Callable[[int], np.ndarray]) -> np.ndarray:
        """The frames ``choose(num_frames)`` picks for this sample, (picks, H, W, 3) uint8."""
        if not self.capacity:
            return read_frames(data, choose, self.threads)
        if key in self.items:
            self.items.move_to_end(key)
        else:
            self.items[key] = decode_frames(data, self.threads)
            if len(self.items) > self.capacity:
                self.items.popitem(last=False)
        video = self.items[key]
        return video[choose(len(video))]


def decode_samples(samples: Iterator[dict], spec: ClipSpec, cache: DecodedCache, pos: StreamPosition,
                   seed: int) -> Iterator[dict]:
    """Decode each sample's picked frames and choose its views; corrupt ones are counted and skipped, never
    fatal; videos too short for the clip repeat frames (``sample_indices``, ``dense_indices``) and are counted."""
    for s in samples:
        rng = np.random.default_rng([seed, pos.epoch, zlib.crc32(s["__key__"].encode())]) if spec.train else None
        length = [0]  # the video's true frame count, as last seen by the decoder

        def choose(n: int) -> np.ndarray:
            length[0] = n
            return spec.frame_indices(n, rng)

        try:
            target = {"label": sample_label(s)} if spec.targets == "label" else {"captions": sample_captions(s)}
            if "mp4" not in s:
                raise DataError("sample has no mp4 member")
            frames = cache.read(s["__key__"], s["mp4"], choose)
        except DataError:  # bad data (CorruptVideo is one); anything else is a bug and propagates
            pos.skipped += 1
            continue
        pos.short += length[0] < spec.span
        h, w = frames.shape[1:3]
        if spec.train:
            box = T.random_resized_crop_box(h, w, spec.crop_scale, rng)
            views = [(0, box, bool(rng.random() < spec.hflip_prob))]
        else:  # clip-major: view v = clip * num_crops + crop
            boxes = T.spatial_crop_boxes(h, w, spec.num_crops)
            views = [(k, box, False) for k in range(spec.num_clips) for box in boxes]
        if "captions" in target and spec.train:  # one caption per clip per epoch, seeded like the crop
            target["text"] = target["captions"][int(rng.integers(len(target["captions"])))]
        yield {"frames": frames.reshape(spec.num_clips, spec.frames, h, w, 3), "views": views, "key": s["__key__"],
               **target}


def _empty_batch(*shape: int) -> torch.Tensor:
    if get_worker_info() is None:
        return torch.empty(shape)
    # In a loader worker, build the batch in shared memory (as torch's default_collate does):
    # handing it to the training process then moves no pixels.
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0).set_(storage).view(shape)


def collate(samples: list[dict], spec: ClipSpec, stream: str, position: StreamPosition) -> dict[str, Any]:
    """Crop, resize and normalise every view straight into its slot of one preallocated batch tensor."""
    video = _empty_batch(len(samples), spec.views, 3, spec.frames, spec.size, spec.size)  # (B, V, C, T, H, W)
    for slots, s in zip(video, samples):
        clips = torch.from_numpy(s["frames"])  # (clips, T, H, W, C) uint8
        for slot, (k, box, flip) in zip(slots, s["views"]):
            spec.normalize(T.crop_flip_resize(clips[k], box, flip, spec.size), out=slot)
    targets = ({"label": torch.tensor([s["label"] for s in samples])} if spec.targets == "label"  # (B,)
               else {"captions": [s["captions"] for s in samples], "text": [s.get("text") for s in samples]})
    return {"video": video if spec.views > 1 else video.flatten(0, 1),  # (B, V, C, T, H, W) or (B, C, T, H, W)
            **targets, "key": [s["key"] for s in samples], "stream": stream, "position": position.state()}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class TrainStream(IterableDataset):
    """Infinite, epoch-seeded training batches for one rank.

    ``resume`` maps stream names (``rank<r>/worker<w>``) to the positions recorded in a
    checkpoint; each stream skips the raw samples it had consumed (cheap: no decoding).
    """

    def __init__(self, data: DataConfig, model: ModelConfig, rank: int, world: int, batch_size: int, seed: int,
                 resume: dict[str, dict[str, int]] | None = None, frames: int | None = None,
                 targets: Targets = "label"):
        self.manifest = read_manifest(data.train)
        self.shards = shard_paths(data.train, self.manifest)
        readers = world * max(1, data.num_workers)
        if data.resampled and self.manifest["num_samples"] < readers:
            raise ValueError(f"data.train={data.train}: {self.manifest['num_samples']} samples cannot give each of "
                             f"{world} ranks x {max(1, data.num_workers)} workers an epoch; lower data.num_workers")
        if not data.resampled and len(self.shards) < readers:
            raise ValueError(f"data.train={data.train}: {len(self.shards)} shards cannot feed {world} ranks x "
                             f"{max(1, data.num_workers)} workers; rebuild with a smaller shard size, lower "
                             "data.num_workers or set data.resampled=true")
        self.spec = ClipSpec.from_config(data, model, train=True, frames=frames, targets=targets)
        self.data, self.rank, self.world, self.batch_size, self.seed = data, rank, world, batch_size, seed
        self.resume = resume or {}

    def epoch_samples(self, epoch: int, worker: int, workers: int, pos: StreamPosition) -> Iterator[dict]:
        """The raw (undecoded) samples this rank/worker reads in ``epoch``, in order."""
        if self.data.resampled:
            # Every stream draws its own shards with replacement, so any shard count suits any
            # world size; its epoch is its share of the manifest. A good shard yields at least
            # one sample, so that many draws suffice (fewer samples only if shards are broken).
            share = self.manifest["num_samples"] // (self.world * workers)
            draw = random.Random(f"resample-{self.seed}-{epoch}-{self.rank}-{worker}")
            urls = ({"url": draw.choice(self.shards)} for _ in range(share))
            samples = itertools.islice(tarfile_samples(urls, handler=pos.tar_handler), share)
        else:
            shards = list(self.shards)
            random.Random(f"{self.seed}-{epoch}").shuffle(shards)  # same order on every rank
            mine = shards[self.rank :: self.world][worker::workers]  # split by node, then by worker
            samples = tarfile_samples(({"url": u} for u in mine), handler=pos.tar_handler)
        rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
        return _shuffle(samples, self.data.shuffle_buffer, self.data.shuffle_buffer // 2, rng=rng)

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        stream = f"rank{self.rank}/worker{worker}"
        pos = StreamPosition(**self.resume.get(stream, {}))
        cache = DecodedCache(self.data.decoded_cache_clips, self.data.decode_threads)
        skip, pos.consumed = pos.consumed, 0  # counted again while skipping
        while True:
            raw = pos.count(self.epoch_samples(pos.epoch, worker, workers, pos))
            raw = itertools.islice(raw, skip, None)  # resume mid-epoch: drop what was already trained on
            batch = []
            for sample in decode_samples(raw, self.spec, cache, pos, self.seed):
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield collate(batch, self.spec, stream, pos)
                    batch = []
            # A partial batch at the end of an epoch is dropped, like drop_last.
            pos.epoch, pos.consumed, skip = pos.epoch + 1, 0, 0


class EvalStream(IterableDataset):
    """Every validation sample exactly once across ranks (and workers): sample i goes to rank i % world.

    With ``evaluation.num_clips * num_crops = V > 1`` views, ``video`` is (B, V, C, T, H, W).
    ``num_workers`` must equal the loader's; ``num_batches`` accounts for the split.
    """

    def __init__(self, data: DataConfig, model: ModelConfig, rank: int, world: int, batch_size: int,
                 evaluation: EvalConfig | None = None, num_workers: int = 0, frames: int | None = None,
                 targets: Targets = "label"):
        self.manifest = read_manifest(data.val)
        self.shards = shard_paths(data.val, self.manifest)
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

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        if workers != self.workers:
            raise ValueError(f"EvalStream(num_workers={self.workers}) is read by {workers} loader workers; "
                             "pass the same count to both")
        pos = StreamPosition()
        samples = tarfile_samples(({"url": u} for u in self.shards), handler=pos.tar_handler)
        mine = itertools.islice(itertools.islice(samples, self.rank, None, self.world), worker, None, workers)
        decoded = decode_samples(pos.count(mine), self.spec, DecodedCache(0, self.data.decode_threads), pos, seed=0)
        while chunk := list(itertools.islice(decoded, self.batch_size)):
            yield collate(chunk, self.spec, f"eval{self.rank}/worker{worker}", pos)


def _ignore_stop_signals(worker_id: int) -> None:
    # Slurm signals every process of a job step; the training process handles preemption
    # (finish the step, checkpoint) and its workers must survive until it is done.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(stream: TrainStream | EvalStream, num_workers: int, prefetch_factor: int | None = None) -> DataLoader:
    """Batches are formed inside the stream, so the DataLoader only adds worker processes.

    ``prefetch_factor`` (batches queued per worker) defaults to the stream's ``data.prefetch_factor``.
    """
    prefetch = prefetch_factor or stream.data.prefetch_factor
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch if num_workers else None, worker_init_fn=_ignore_stop_signals)
