"""What a sample holds and how it becomes part of a batch: parsing, decoding, views, collate.

A sample is the dict of its tar members (``__key__``, ``mp4``, ``cls``, ``txt``, ``json``);
the per-sample stages here add ``rng`` (seed per sample), ``label`` or ``captions`` (parse
targets), ``frames`` in place of ``mp4`` (decode), ``views`` and ``text`` (choose views).
Augmentation randomness is seeded per sample by (seed, epoch, key), so a sample looks the
same whichever worker decodes it. A sample that is bad input (corrupt mp4, a video over
``data.max_decode_pixels`` x 16 or still decoding after ``data.decode_timeout_s``, missing or
unparsable member, no caption) raises ``DataError``, which the stream skips and counts
(``each_or_skip`` in data/stages.py). ``ClipSpec`` says what the model needs from each sample;
the streams that run these stages in order are in data/streams.py.

Batches leave the loader as uint8 pixels: a quarter of the bytes of float32 to pass from a
worker, pin and copy to the GPU, and no float work in the workers; ``to_device`` normalises
them on the training device (bit for bit what normalising in the loader gave).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import get_worker_info

from turbo_ds.config import DataConfig, EvalConfig, ModelConfig
from turbo_ds.data import transforms as T
from turbo_ds.data.errors import DataError
from turbo_ds.data.position import StreamPosition
from turbo_ds.data.video import (DecodeLimits, VideoTooLarge, decode_frames, dense_indices, read_frames,
                                 sample_indices)

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
    repeat: int = 1  # training clips per decoded video (data.repeat_aug)
    randaug: T.RandAugment | None = None  # training: each clip's ops drawn here, applied on the device

    @classmethod
    def from_config(cls, data: DataConfig, model: ModelConfig, train: bool, evaluation: EvalConfig | None = None,
                    frames: int | None = None, targets: Targets = "label") -> "ClipSpec":
        """``frames`` overrides model.num_frames (a long video feeds several encoder clips)."""
        views = (1, 1) if train or evaluation is None else (evaluation.num_clips, evaluation.num_crops)
        return cls(frames or model.num_frames, model.img_size, train, data.sampling, data.frame_stride,
                   tuple(data.crop_scale), data.hflip_prob, *views, T.Normalizer(data.mean, data.std), targets,
                   data.repeat_aug if train else 1,
                   T.RandAugment(data.randaug.n, data.randaug.m) if train and data.randaug.n else None)

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops

    @property
    def span(self) -> int:
        """Frames a video needs so that no pick repeats a frame."""
        return (self.frames - 1) * self.frame_stride + 1 if self.sampling == "dense" else self.frames

    def stored(self, meta: dict) -> "ClipSpec":
        """This spec for a video stored at another rate than its source's (json ``fps`` vs ``source_fps``, as
        ``build_shards.py --fps`` writes): ``frame_stride`` counts source frames, so in stored frames it scales
        by their ratio (at least 1; 16x4 from 30 fps stored at 7.5 fps: 16 consecutive stored frames)."""
        fps, source = meta.get("fps"), meta.get("source_fps")
        if self.sampling != "dense" or not isinstance(fps, (int, float)) or not isinstance(source, (int, float)) \
                or fps <= 0 or source <= 0 or fps == source:
            return self
        return replace(self, frame_stride=max(1, round(self.frame_stride * fps / source)))

    @property
    def clips(self) -> int:
        """Temporal clips decoded per video: evaluation's num_clips, or training's repeated copies."""
        return self.num_clips * self.repeat

    def frame_indices(self, num_frames: int, rng: np.random.Generator | None) -> np.ndarray:
        """The frames of all temporal clips, clip after clip: (clips * frames,)."""
        if self.repeat > 1:
            return self.copy_indices(num_frames, rng)

        def pick(clip: int) -> np.ndarray:
            if self.sampling == "dense":
                return dense_indices(num_frames, self.frames, self.frame_stride, rng, clip, self.num_clips)
            return sample_indices(num_frames, self.frames, rng, clip, self.num_clips)
        return np.concatenate([pick(k) for k in range(self.num_clips)])

    def copy_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """Training's ``repeat`` copies, copy after copy. Dense: each copy its own window, all inside one
        stretch of 1.5 windows (so the decoder reads at most half a window more for K clips); uniform: the
        copies share their frames (another jitter per copy would decode K times the frames)."""
        if self.sampling != "dense":
            return np.tile(sample_indices(num_frames, self.frames, rng), self.repeat)
        stretch = min(num_frames, self.span + self.span // 2)
        first = int(rng.integers(0, num_frames - stretch + 1))
        return np.concatenate([first + dense_indices(stretch, self.frames, self.frame_stride, rng)
                               for _ in range(self.repeat)])


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


def _meta(sample: dict) -> dict:
    """The sample's json member as a dict; {} when absent or unreadable (the metadata only refines sampling)."""
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


# ------------------------------------------------------------------ per-sample stages


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
        clip = spec.stored(_meta(s))  # the dense stride in the video's stored frames
        length = [0]  # the video's true frame count, as last seen by the decoder

        def choose(n: int) -> np.ndarray:
            length[0] = n
            return clip.frame_indices(n, rng)

        frames = cache.read(s["__key__"], s["mp4"], choose)
        pos.short += length[0] < clip.span
        h, w = frames.shape[1:3]
        out = {k: v for k, v in s.items() if k != "mp4"}  # the frames replace the encoded video
        return {**out, "frames": frames.reshape(spec.clips, spec.frames, h, w, 3)}  # (clips, T, H, W, 3) uint8
    return decode_one


def choose_views(spec: ClipSpec) -> Callable[[dict], dict]:
    """Adds ``views``: (clip, crop box, flip) per view; and for captions the ``text`` trained on (None in eval).

    Training: per copy (``repeat``; ``copies`` makes them samples), one random resized crop, flipped with
    ``hflip_prob``, one caption (``text``: one per copy) and, with ``data.randaug``, its RandAugment ops
    (``randaug``: one draw per copy), drawn from the sample's ``rng`` after its frames.
    Evaluation: clip-major, view v = clip * num_crops + crop.
    """
    def choose(s: dict) -> dict:
        h, w = s["frames"].shape[2:4]
        if not spec.train:
            boxes = T.spatial_crop_boxes(h, w, spec.num_crops)
            views = [(k, box, False) for k in range(spec.num_clips) for box in boxes]
            return {**s, "views": views, **({"text": None} if spec.targets == "captions" else {})}
        rng, views, per_copy = s["rng"], [], {"text": [], "randaug": []}
        for k in range(spec.repeat):
            box = T.random_resized_crop_box(h, w, spec.crop_scale, rng)
            views.append((k, box, bool(rng.random() < spec.hflip_prob)))
            if spec.targets == "captions":
                per_copy["text"].append(s["captions"][int(rng.integers(len(s["captions"])))])
            if spec.randaug is not None:
                per_copy["randaug"].append(spec.randaug.draw(rng))
        return {**s, "views": views, **{key: v for key, v in per_copy.items() if v}}
    return choose


def copies(samples: Iterator[dict]) -> Iterator[dict]:
    """Each training sample once per copy (``choose_views``' views): one view, caption and RandAugment draw
    each, the frames shared."""
    for s in samples:
        for k, view in enumerate(s["views"]):
            yield {**s, "views": [view], **{key: s[key][k] for key in ("text", "randaug") if key in s}}


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
    # each clip's RandAugment ops, applied on the device: (B, n, 2)
    drawn = {"randaug": torch.tensor([s["randaug"] for s in samples])} if spec.randaug is not None else {}
    return {"video": video if spec.views > 1 else video.flatten(0, 1),  # (B, V, C, T, H, W) or (B, C, T, H, W)
            **targets, **drawn, "key": [s["__key__"] for s in samples], "stream": stream, "position": position.state(),
            "events": position.take_events()}


def to_device(batch: dict[str, Any], device: torch.device, normalize: T.Normalizer,
              randaug: T.RandAugment | None = None) -> dict[str, Any]:
    """A loader batch on ``device``, its uint8 video augmented there (``spec.randaug``, training: each clip's
    drawn ops, batched) and normalised to float32 (``spec.normalize``).

    Copies are non-blocking: from pinned memory (``make_loader(pin_memory=True)``) they do not stall the host.
    """
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    drawn, video = out.pop("randaug", None), out["video"]
    if randaug is not None and drawn is not None:
        video = randaug(video, drawn)
    return {**out, "video": normalize(video)}
