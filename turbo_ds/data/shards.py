"""Dataset folders on disk: numbered WebDataset tar shards plus a ``manifest.json``.

A dataset folder (one per split) holds ``<prefix>-000000.tar, ...`` and a manifest::

    {"format": "turbo_ds.shards/1", "task": "action_cls", "num_samples": 2048,
     "shards": [{"name": "train-000000.tar", "num_samples": 128}, ...],
     "class_names": [...], "build": {"tool": "...", "settings": {...}}}

Optional: ``class_texts``, how each class reads in a sentence (zero-shot prompts; default: the
class name with ``_`` as a space).

Every file appears under its final name only when complete (written to a temp name,
then renamed), so a reader never sees a partial shard or manifest.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turbo_ds.fileio import atomic_write_bytes, atomic_write_json

MANIFEST = "manifest.json"
FORMAT = "turbo_ds.shards/1"

if TYPE_CHECKING:
    from turbo_ds.config import DataConfig


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes]:
    """Turn a sample dict (``__key__``, ``mp4`` bytes, ``cls`` int, ``txt`` str, ``json`` dict) into tar members."""
    out = {}
    for ext, value in sample.items():
        if ext == "__key__":
            continue
        if isinstance(value, bytes):
            out[ext] = value
        elif ext == "json":
            out[ext] = json.dumps(value, sort_keys=True).encode()
        else:
            out[ext] = str(value).encode()
    return out


def write_shard(path: str | os.PathLike, samples: list[dict[str, Any]]) -> int:
    """Write one complete tar shard atomically; byte-identical for identical samples."""
    atomic_write_bytes(path, shard_bytes(samples))
    return len(samples)


def shard_bytes(samples: list[dict[str, Any]]) -> bytes:
    """The tar shard of ``samples``; the same bytes for the same samples."""
    buf = io.BytesIO()
    # Fixed metadata (mtime, owner) makes shards reproducible byte for byte.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in encode_sample(sample).items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uname = info.gname = "turbo_ds"
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def make_manifest(*, task: str, shards: list[dict[str, Any]], class_names: list[str] | None = None,
                  build: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A dataset folder's manifest (written with ``fileio.json_bytes``, as ``write_manifest`` does)."""
    return {
        "format": FORMAT,
        "task": task,
        "num_samples": sum(s["num_samples"] for s in shards),
        "shards": shards,
        "class_names": class_names,
        "build": build or {},
        **extra,
    }


def write_manifest(folder: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Write ``make_manifest(**fields)`` into ``folder``; returns it."""
    manifest = make_manifest(**fields)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """``manifest`` (parsed JSON) if it is one of ours; ValueError naming ``where`` otherwise."""
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if found != FORMAT:
        raise ValueError(f"{where}: format {found!r} is not {FORMAT!r}")
    return manifest


def missing_shards(folder: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    return [s["name"] for s in manifest["shards"] if not (Path(folder) / s["name"]).is_file()]


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Load and check a dataset folder's manifest; errors name the folder and the fix."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {folder}: build the shards with data_prep/ (e.g. "
            f"python data_prep/make_demo_data.py --out DIR) or point the config at a dataset folder")
    manifest = check_manifest(json.loads(path.read_text()), str(path))
    missing = missing_shards(folder, manifest)
    if missing:
        raise FileNotFoundError(f"{folder}: shards listed in {MANIFEST} are missing: {missing[:3]}")
    return manifest


def shard_paths(folder: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    return [str(Path(folder) / s["name"]) for s in manifest["shards"]]


def check_readers(data: DataConfig, manifest: dict[str, Any], world: int) -> None:
    """ValueError unless every one of ``world`` ranks x data.num_workers readers gets data each epoch.

    Without data.resampled, each reader reads whole shards (shards[rank::world][worker::workers]),
    so a reader without a shard would have nothing; resampled streams draw shards with
    replacement, so any shard count works, but each needs at least one sample per epoch.
    """
    workers = max(1, data.num_workers)
    readers = world * workers
    if data.resampled and manifest["num_samples"] < readers:
        raise ValueError(f"data.train={data.train}: {manifest['num_samples']} samples cannot give each of "
                         f"{world} ranks x {workers} workers an epoch; lower data.num_workers")
    if not data.resampled and len(manifest["shards"]) < readers:
        raise ValueError(f"data.train={data.train}: {len(manifest['shards'])} shards cannot feed {world} ranks x "
                         f"{workers} workers (each reads whole shards); rebuild with a smaller shard size, lower "
                         "data.num_workers or set data.resampled=true (shards drawn with replacement)")
