"""Summarise a shard folder (or URL) and draw a contact sheet of a few samples.

    python data_prep/inspect_shards.py data/k400/train [--png sheet.png --samples 4]
    python data_prep/inspect_shards.py s3://bucket/k400/train        # also https://..., gs://..., pipe:...

Prints samples per shard and in total (checked against manifest.json when present), the
class histogram (names from the manifest) or the caption-length histogram,
duration/fps/frames/resolution statistics, and how many videos do not decode (every
video is decoded unless --no-decode, within the training loader's bounds: data.max_decode_pixels
and data.decode_timeout_s at their defaults; memory stays bounded on any video). --png writes K rows x 8
evenly spaced frames of the first K decodable samples. A URL is read shard by shard (each downloaded to a
temp file, with retries; one that cannot be read is listed as unreadable and the rest go on); it needs its
manifest.json next to the shards, or --manifest.
"""

import argparse
import json
import struct
import sys
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from turbo_ds.data.locations import is_remote, redact
from turbo_ds.data.shards import MANIFEST, shard_paths
from turbo_ds.data.source import ShardSource
from turbo_ds.data.transport import ReadFailed, read_bytes
from turbo_ds.data.video import CorruptVideo, DecodeLimits, iter_frames, read_frames, sample_indices
from turbo_ds.fileio import atomic_write_bytes
from turbo_ds.prep.manifest_rows import VIDEO_EXTS, read_member, tar_samples

SHEET_FRAMES, CELL_HEIGHT, GAP = 8, 64, 2
CAPTION_BINS = (0, 5, 10, 15, 20, 30, 50)  # words


# ---------------------------------------------------------------- PNG (no PIL needed)

def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB as a PNG with zlib alone (PIL is not a dependency)."""
    h, w, _ = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = zlib.compress(rows.tobytes(), 9)
    atomic_write_bytes(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _resize(frame: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize to ``height``, keeping the aspect ratio."""
    h, w, _ = frame.shape
    width = max(1, round(w * height / h))
    return frame[np.linspace(0, h - 1, height).round().astype(int)][:, np.linspace(0, w - 1, width).round().astype(int)]


def contact_sheet(videos: list[np.ndarray]) -> np.ndarray:
    """One row per video (T, H, W, 3): SHEET_FRAMES evenly spaced frames, on a dark background."""
    rows = [np.concatenate([np.pad(_resize(v[i], CELL_HEIGHT), ((0, 0), (0, GAP), (0, 0)), constant_values=32)
                            for i in sample_indices(len(v), SHEET_FRAMES, None)], axis=1) for v in videos]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, GAP), (0, width - r.shape[1]), (0, 0)), constant_values=32) for r in rows]
    return np.concatenate(rows, axis=0)  # (K*(CELL_HEIGHT+GAP), width, 3)


# ---------------------------------------------------------------- statistics

@dataclass
class Unreadable:
    """A shard of a URL that could not be downloaded (after retries)."""

    name: str
    reason: str


def _shards(location: str, manifest_location: str | None = None) -> tuple[Iterator[Path | Unreadable], dict]:
    """Local paths of the shards (a URL's are downloaded one at a time), or why one cannot be read."""
    if is_remote(location) or manifest_location is not None:
        source = ShardSource(location, manifest_location, key="FOLDER", manifest_key="--manifest")
        return _downloaded(source), source.manifest
    folder = Path(location)
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest:
        return iter([Path(p) for p in shard_paths(folder, manifest)]), manifest
    return iter(sorted(folder.glob("*.tar"))), manifest


def _downloaded(source: ShardSource) -> Iterator[Path | Unreadable]:
    with tempfile.TemporaryDirectory(prefix="inspect_shards_") as tmp:
        for url, entry in zip(source.shards, source.manifest["shards"]):
            path = Path(tmp) / entry["name"]
            try:
                path.write_bytes(read_bytes(url, source.policy))
            except ReadFailed as e:
                yield Unreadable(entry["name"], str(e))
                continue
            yield path
            path.unlink()


def _stat(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = np.asarray(values, float)
    return f"min {v.min():.3g}  mean {v.mean():.3g}  max {v.max():.3g}"


def _histogram(rows: list[tuple[str, int]]) -> list[str]:
    total = sum(n for _, n in rows) or 1
    return [f"  {label:<32} {n:>7}  {'#' * round(40 * n / total)}" for label, n in rows]


def _class_rows(counts: Counter, names: list[str] | None) -> list[tuple[str, int]]:
    names = names or []
    ids = sorted(set(range(len(names))) | set(counts))  # classes without samples show too
    return [(f"{k:>4} {names[k] if k < len(names) else ''}", counts[k]) for k in ids]


def _caption_bins(lengths: list[int]) -> dict[str, int]:
    edges = [*CAPTION_BINS, float("inf")]
    return {(f"{a}-{b - 1}" if b != float("inf") else f"{a}+"): sum(a <= n < b for n in lengths)
            for a, b in zip(edges, edges[1:])}


def inspect(location: str | Path, decode: bool, keep: int,
            manifest_location: str | None = None) -> tuple[dict, list[np.ndarray]]:
    """Statistics of every sample, plus the decoded frames of the first ``keep`` decodable ones."""
    paths, manifest = _shards(str(location), manifest_location)
    stats = {"task": manifest.get("task"), "shards": {}, "total": 0, "classes": Counter(), "caption_words": [],
             "captions_per_video": [], "duration": [], "fps": [], "frames": [], "resolution": Counter(),
             "undecodable": [], "sheet_keys": [], "class_names": manifest.get("class_names")}
    listed = {s["name"]: s["num_samples"] for s in manifest.get("shards", [])}
    videos = []
    for path in paths:
        if isinstance(path, Unreadable):
            stats["shards"][path.name] = {"samples": 0, "manifest": listed.get(path.name), "unreadable": path.reason}
            continue
        count = 0
        for group in tar_samples(path):
            count += 1
            key = group["_key"]
            meta = json.loads(group.get("_json", "{}"))
            _add_labels(stats, group, meta)
            for field in ("duration", "fps", "frames"):
                if field in meta:
                    stats[field].append(meta[field])
            if "width" in meta:
                stats["resolution"][f"{meta['width']}x{meta['height']}"] += 1
            video = next((group[e] for e in VIDEO_EXTS if e in group), None)
            if decode or len(videos) < keep:
                frames = _decode(path, video, key, stats, full=len(videos) < keep)
                if frames is not None and len(videos) < keep:
                    videos.append(frames)
                    stats["sheet_keys"].append(key)
        stats["shards"][path.name] = {"samples": count, "manifest": listed.get(path.name)}
        stats["total"] += count
    return stats, videos


def _add_labels(stats: dict, group: dict, meta: dict) -> None:
    if "_cls" in group:
        stats["classes"][int(group["_cls"])] += 1
    captions = meta.get("captions") or ([group["_txt"]] if "_txt" in group else [])
    if captions:
        stats["captions_per_video"].append(len(captions))
        stats["caption_words"].extend(len(c.split()) for c in captions)


def _decode(tar: Path, video, key: str, stats: dict, full: bool) -> np.ndarray | None:
    """Decode (and so validate, within the loader's bounds) one video; for the sheet (``full``), its
    SHEET_FRAMES evenly spaced frames are returned, (SHEET_FRAMES, H, W, 3): never the whole video."""
    try:
        if video is None:
            raise CorruptVideo("no video member")
        data = read_member(tar, video.offset_data, video.size)
        if full:
            return read_frames(data, lambda n: sample_indices(n, SHEET_FRAMES, None), limits=DecodeLimits())
        for _ in iter_frames(data, limits=DecodeLimits(), rgb=False):  # every frame, one at a time
            pass
    except CorruptVideo as e:
        stats["undecodable"].append({"shard": tar.name, "key": key, "reason": str(e)})
        return None


def report(stats: dict, manifest_names: list[str] | None) -> str:
    lines = [f"task: {stats['task'] or 'unknown (no manifest)'}", "samples per shard:"]
    for name, s in stats["shards"].items():
        note = "" if s["manifest"] in (None, s["samples"]) else f"  (manifest says {s['manifest']}!)"
        note += f"  (unreadable: {s['unreadable']})" if "unreadable" in s else ""
        lines.append(f"  {name:<28} {s['samples']:>7}{note}")
    lines.append(f"total: {stats['total']} samples in {len(stats['shards'])} shards")
    if stats["classes"]:
        lines += ["class histogram:", *_histogram(_class_rows(stats["classes"], manifest_names))]
    if stats["caption_words"]:
        lines += [f"captions: {len(stats['caption_words'])} ({_stat(stats['captions_per_video'])} per video)",
                  "caption length (words):", *_histogram(list(_caption_bins(stats["caption_words"]).items()))]
    lines += [f"duration (s): {_stat(stats['duration'])}", f"fps: {_stat(stats['fps'])}",
              f"frames: {_stat(stats['frames'])}",
              "resolution: " + ", ".join(f"{r} x{n}" for r, n in stats["resolution"].most_common(5))]
    lines.append(f"undecodable: {len(stats['undecodable'])}")
    lines += [f"  {u['shard']} {u['key']}: {u['reason']}" for u in stats["undecodable"][:10]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="dataset folder (tar shards, manifest.json optional) or URL (https://, s3://, "
                                  "gs://, pipe:; manifest.json next to the shards or --manifest)")
    p.add_argument("--manifest", help="the dataset's manifest.json (path or URL) when it is not in FOLDER")
    p.add_argument("--png", type=Path, help="write a contact sheet of --samples rows x 8 frames here")
    p.add_argument("--samples", type=int, default=4, help="rows of the contact sheet (default 4)")
    p.add_argument("--no-decode", action="store_true", help="skip the decodability check (much faster)")
    p.add_argument("--json", type=Path, help="also write the statistics as JSON here")
    a = p.parse_args(argv)
    try:
        stats, videos = inspect(a.folder, decode=not a.no_decode, keep=a.samples if a.png else 0,
                                manifest_location=a.manifest)
    except ValueError as e:  # a URL without a readable manifest
        print(f"inspect_shards: error: {redact(str(e))}", file=sys.stderr)
        return 2
    if not stats["shards"]:
        print(f"inspect_shards: error: no .tar shards in {a.folder}", file=sys.stderr)
        return 2
    print(report(stats, stats.pop("class_names")))
    if a.png:
        if not videos:
            print("inspect_shards: no decodable sample for the contact sheet", file=sys.stderr)
            return 1
        write_png(a.png, contact_sheet(videos))
        print(f"contact sheet: {a.png} (rows: {', '.join(stats['sheet_keys'])})")
    if a.json:
        a.json.write_text(json.dumps({**stats, "classes": {str(k): v for k, v in sorted(stats["classes"].items())},
                                      "resolution": dict(stats["resolution"])}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
