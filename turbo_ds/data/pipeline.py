"""WebDataset loaders: one ordered list of stages per split.

Training stream of one rank (infinite; epoch e is a deterministic function of the seed):

    shards --shuffle(seed, e)--> split by node --> split by worker --> tar samples
      --> shuffle buffer --> decode mp4 (skip + count corrupt) --> sample T frames
      --> random resized crop + flip --> normalise --> batch

Evaluation stream: every shard in order, sample i goes to rank i % world, centre crop.
Augmentation randomness is seeded per sample by (seed, epoch, key), so a sample looks
the same whichever worker decodes it.
"""

from __future__ import annotations

import itertools
import math
import random
import signal
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from webdataset.filters import _shuffle
from webdataset.tariterators import tarfile_samples
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from turbo_ds.config import DataConfig, ModelConfig
from turbo_ds.data import transforms as T
from turbo_ds.data.shards import read_manifest, shard_paths
from turbo_ds.data.video import CorruptVideo, decode_frames, sample_indices


@dataclass
class ClipSpec:
    """What the model needs from each sample, and how to augment it."""

    frames: int
    size: int
    train: bool
    crop_scale: tuple[float, float]
    hflip_prob: float
    mean: list[float]
    std: list[float]

    @classmethod
    def from_config(cls, data: DataConfig, model: ModelConfig, train: bool) -> "ClipSpec":
        return cls(model.num_frames, model.img_size, train, tuple(data.crop_scale), data.hflip_prob, data.mean, data.std)


class StreamPosition:
    """Where a stream stands: epoch, raw samples consumed in it, and bad samples skipped so far.

    It travels with every batch, so a checkpoint records exactly what training consumed
    and a resumed stream continues from there instead of restarting its epoch.
    """

    def __init__(self, epoch: int = 0, consumed: int = 0, skipped: int = 0):
        self.epoch, self.consumed, self.skipped = epoch, consumed, skipped

    def count(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self.consumed += 1
            yield sample

    def tar_handler(self, exn: Exception) -> bool:
        self.skipped += 1  # a truncated or garbage tar member: skip it, keep reading
        return True

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "skipped": self.skipped}


class DecodedCache:
    """A small LRU of decoded clips keyed by sample key (for datasets that fit in memory)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.items = capacity, OrderedDict()

    def get(self, key: str, data: bytes) -> np.ndarray:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        clip = decode_frames(data)
        if self.capacity:
            self.items[key] = clip
            if len(self.items) > self.capacity:
                self.items.popitem(last=False)
        return clip


def prepare_clip(frames: np.ndarray, spec: ClipSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """Decoded (F, H, W, 3) uint8 -> normalised (C, T, size, size) float."""
    clip = torch.from_numpy(frames[sample_indices(len(frames), spec.frames, rng)])  # (T, H, W, C)
    h, w = clip.shape[1:3]
    if spec.train:
        box = T.random_resized_crop_box(h, w, spec.crop_scale, rng)
        x = T.crop_resize(clip, box, spec.size)
        if rng.random() < spec.hflip_prob:
            x = x.flip(-1)
    else:
        x = T.crop_resize(clip, T.center_crop_box(h, w), spec.size)
    return T.normalize(x, spec.mean, spec.std)


def decode_samples(samples: Iterator[dict], spec: ClipSpec, cache: DecodedCache, pos: StreamPosition,
                   seed: int) -> Iterator[dict]:
    """Decode and augment each sample; corrupt ones are counted and skipped, never fatal."""
    for s in samples:
        try:
            frames = cache.get(s["__key__"], s["mp4"])
            label = int(s["cls"])
        except (CorruptVideo, KeyError, ValueError, TypeError):
            pos.skipped += 1
            continue
        rng = np.random.default_rng([seed, pos.epoch, zlib.crc32(s["__key__"].encode())]) if spec.train else None
        yield {"video": prepare_clip(frames, spec, rng), "label": label}


def collate(samples: list[dict], stream: str, position: StreamPosition) -> dict[str, Any]:
    return {"video": torch.stack([s["video"] for s in samples]),  # (B, C, T, H, W)
            "label": torch.tensor([s["label"] for s in samples]),  # (B,)
            "stream": stream, "position": position.state()}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class TrainStream(IterableDataset):
    """Infinite, epoch-seeded training batches for one rank.

    ``resume`` maps stream names (``rank<r>/worker<w>``) to the positions recorded in a
    checkpoint; each stream skips the raw samples it had consumed (cheap: no decoding).
    """

    def __init__(self, data: DataConfig, model: ModelConfig, rank: int, world: int, batch_size: int, seed: int,
                 resume: dict[str, dict[str, int]] | None = None):
        self.manifest = read_manifest(data.train)
        self.shards = shard_paths(data.train, self.manifest)
        readers = world * max(1, data.num_workers)
        if len(self.shards) < readers:
            raise ValueError(f"data.train={data.train}: {len(self.shards)} shards cannot feed {world} ranks x "
                             f"{max(1, data.num_workers)} workers; rebuild with a smaller shard size or lower data.num_workers")
        self.spec = ClipSpec.from_config(data, model, train=True)
        self.data, self.rank, self.world, self.batch_size, self.seed = data, rank, world, batch_size, seed
        self.resume = resume or {}

    def epoch_samples(self, epoch: int, worker: int, workers: int, pos: StreamPosition) -> Iterator[dict]:
        """The raw (undecoded) samples this rank/worker reads in ``epoch``, in order."""
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
        cache = DecodedCache(self.data.decoded_cache_clips)
        skip, pos.consumed = pos.consumed, 0  # counted again while skipping
        while True:
            raw = pos.count(self.epoch_samples(pos.epoch, worker, workers, pos))
            raw = itertools.islice(raw, skip, None)  # resume mid-epoch: drop what was already trained on
            batch = []
            for sample in decode_samples(raw, self.spec, cache, pos, self.seed):
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield collate(batch, stream, pos)
                    batch = []
            # A partial batch at the end of an epoch is dropped, like drop_last.
            pos.epoch, pos.consumed, skip = pos.epoch + 1, 0, 0


class EvalStream(IterableDataset):
    """Every validation sample exactly once across ranks: sample i goes to rank i % world."""

    def __init__(self, data: DataConfig, model: ModelConfig, rank: int, world: int, batch_size: int):
        self.manifest = read_manifest(data.val)
        self.shards = shard_paths(data.val, self.manifest)
        self.spec = ClipSpec.from_config(data, model, train=False)
        self.rank, self.world, self.batch_size = rank, world, batch_size

    @property
    def num_batches(self) -> int:
        """Batches on the busiest rank; every rank runs this many (padding) so collectives line up."""
        return math.ceil(math.ceil(self.manifest["num_samples"] / self.world) / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        pos = StreamPosition()
        samples = tarfile_samples(({"url": u} for u in self.shards), handler=pos.tar_handler)
        mine = pos.count(itertools.islice(samples, self.rank, None, self.world))
        decoded = decode_samples(mine, self.spec, DecodedCache(0), pos, seed=0)
        while chunk := list(itertools.islice(decoded, self.batch_size)):
            yield collate(chunk, f"eval{self.rank}", pos)


def _ignore_stop_signals(worker_id: int) -> None:
    # Slurm signals every process of a job step; the training process handles preemption
    # (finish the step, checkpoint) and its workers must survive until it is done.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(stream: IterableDataset, num_workers: int) -> DataLoader:
    """Batches are formed inside the stream, so the DataLoader only adds worker processes."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers else None, worker_init_fn=_ignore_stop_signals)
