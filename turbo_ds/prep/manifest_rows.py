"""What ``build_shards`` builds: one ``Item`` per output sample, in a fixed order.

Items come from a build manifest (CSV with a header, or JSONL) or from existing
WebDataset / video2dataset shards. Their order is the file order, so item ``i`` always
lands in output shard ``i // shard_size`` whatever the number of workers. A row with a
problem (missing field, bad number) stays in the list as an item with ``error`` set:
it keeps its slot and is reported, never silently dropped.

Manifest columns per task (JSONL may also give ``captions`` as a list)::

    action_cls      path,label[,start,end]              (start/end: cut a clip from a longer video)
    video_language  path,caption        (repeated rows with the same path are grouped)
    long_video      path,label[,start,end][,segments]   (segments: [{start, end, label}, ...])
"""

from __future__ import annotations

import csv
import glob
import json
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from turbo_ds.data.shards import MANIFEST



@dataclass(frozen=True)
class RowSchema:
    """What a manifest row of one ``--task`` holds."""

    required: tuple[str, ...]
    captions: bool = False
    "rows carry captions (rows sharing a path are one video) instead of a class label"
    ranges: bool = False
    "rows may cut a start/end range and carry segment annotations"


ROWS = {"action_cls": RowSchema(("path", "label"), ranges=True), "video_language": RowSchema(("path", "caption"), captions=True),
        "long_video": RowSchema(("path", "label"), ranges=True)}
TASKS = tuple(ROWS)
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "ogv", "flv", "ts", "3gp", "wmv")
MAX_META_BYTES = 1 << 20  # txt/cls/json members larger than this are not metadata


class ManifestError(ValueError):
    """The manifest as a whole is unusable (wrong columns, no usable rows)."""


@dataclass(frozen=True)
class Item:
    """One output sample to build."""

    index: int  # position in the build order; output shard = index // shard_size
    row: int  # 1-based manifest record (CSV header not counted) or input-shard sample number
    source: str  # video path relative to the video root, or "<shard>.tar/<member>"
    label: str | None = None
    captions: tuple[str, ...] = ()
    start: float | None = None  # seconds; long_video range to cut
    end: float | None = None
    segments: tuple[dict, ...] | None = None
    member: tuple[str, int, int] | None = None  # (tar path, data offset, size) for input shards
    extra: dict = field(default_factory=dict)  # extra json fields kept from the input (e.g. url)
    error: str | None = None


# ---------------------------------------------------------------- manifest files

def read_records(path: str | Path) -> list[dict | str]:
    """The manifest's records in file order; a record that does not parse becomes its error string."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return [_json_record(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often add a BOM
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ManifestError(f"manifest {path} is empty (a CSV needs a header row)")
        return [{k.strip(): v for k, v in rec.items() if k is not None} for rec in reader]


def _json_record(line: str) -> dict | str:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e}"
    return rec if isinstance(rec, dict) else "invalid JSON: not an object"


def check_columns(path: str | Path, records: list[dict | str], task: str) -> None:
    """Fail early when a required column is absent from every record (usually a wrong --task or header)."""
    present = set().union(*(r.keys() for r in records if isinstance(r, dict)))
    if ROWS[task].captions and "captions" in present:
        present.add("caption")
    missing = [c for c in ROWS[task].required if c not in present]
    if missing:
        raise ManifestError(f"manifest {path} has no {', '.join(repr(c) for c in missing)} column "
                            f"(columns: {', '.join(sorted(present)) or 'none'}); --task {task} needs "
                            f"{','.join(ROWS[task].required)}")


def _text(rec: dict, key: str) -> str | None:
    value = rec.get(key)
    text = str(value).strip() if value is not None else ""
    return text or None


def _seconds(rec: dict, key: str) -> float | None:
    text = _text(rec, key)
    if text is None:
        return None
    value = float(text)  # ValueError -> row error
    if value < 0:
        raise ValueError(f"{key}={text} is negative")
    return value


def _segments(value: Any) -> tuple[dict, ...] | None:
    if value is None or value == "":
        return None
    segs = json.loads(value) if isinstance(value, str) else value  # CSV holds a JSON string
    if not isinstance(segs, list) or not all(isinstance(s, dict) and {"start", "end"} <= s.keys() for s in segs):
        raise ValueError("segments must be a list of {start, end, label}")
    return tuple({**s, "start": float(s["start"]), "end": float(s["end"])} for s in segs)


def _captions(rec: dict) -> list[str]:
    value = rec.get("captions", rec.get("caption"))
    values = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def _item_fields(rec: dict, task: str) -> dict:
    """Task fields of one record; raises ValueError naming what is wrong."""
    if ROWS[task].captions:
        captions = _captions(rec)
        if not captions:
            raise ValueError("missing field 'caption'")
        return {"captions": tuple(captions)}
    label = _text(rec, "label")
    if label is None:
        raise ValueError("missing field 'label'")
    fields: dict[str, Any] = {"label": label}
    if ROWS[task].ranges:
        fields.update(start=_seconds(rec, "start"), end=_seconds(rec, "end"), segments=_segments(rec.get("segments")))
        if fields["start"] is not None and fields["end"] is not None and fields["end"] <= fields["start"]:
            raise ValueError(f"end={fields['end']} is not after start={fields['start']}")
    return fields


def items_from_records(records: list[dict | str], task: str) -> list[Item]:
    """One item per record; for video_language, records sharing a path are one item with all captions."""
    items: list[Item] = []
    by_path: dict[str, int] = {}
    for row, rec in enumerate(records, start=1):
        path = _text(rec, "path") if isinstance(rec, dict) else None
        try:
            if isinstance(rec, str):
                raise ValueError(rec)
            if path is None:
                raise ValueError("missing field 'path'")
            fields = _item_fields(rec, task)
        except (ValueError, TypeError) as e:
            items.append(Item(len(items), row, path or "", error=str(e)))
            continue
        if ROWS[task].captions and path in by_path:
            first = items[by_path[path]]
            items[by_path[path]] = replace(first, captions=first.captions + fields["captions"])
            continue
        by_path[path] = len(items)
        items.append(Item(len(items), row, path, **fields))
    return items


def read_manifest_items(path: str | Path, task: str) -> list[Item]:
    records = read_records(path)
    if not records:
        raise ManifestError(f"manifest {path} has no rows")
    check_columns(path, records, task)
    return require_usable(items_from_records(records, task), str(path))


def require_usable(items: list[Item], what: str) -> list[Item]:
    if not any(it.error is None for it in items):
        problems = "; ".join(f"row {it.row}: {it.error}" for it in items[:3])
        raise ManifestError(f"{what} has no usable rows ({len(items)} rows; {problems})")
    return items


# ---------------------------------------------------------------- class names

def _all_ints(labels: Iterable[str]) -> bool:
    return all(label.isdigit() for label in labels)


def assign_classes(items: list[Item], given: list[str] | None) -> tuple[list[Item], list[str]]:
    """Class names (``given``, else the sorted label set) and items whose unknown labels become errors.

    Labels that are all non-negative integers are taken as class ids already, so the names
    are "0".."max" and a class absent from this manifest does not shift the others.
    """
    labels = {it.label for it in items if it.error is None and it.label is not None}
    if given is not None:
        names = list(given)
    elif labels and _all_ints(labels):
        names = [str(i) for i in range(max(int(x) for x in labels) + 1)]
        items = [replace(it, label=str(int(it.label))) if it.label is not None and it.error is None else it
                 for it in items]
    else:
        names = sorted(labels)
    known = set(names)
    items = [replace(it, error=f"label {it.label!r} is not in the class list")
             if it.error is None and it.label is not None and it.label not in known else it for it in items]
    return items, names


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file (one a line) or a dataset folder / manifest.json (its class_names)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if path.suffix == ".json":
        names = json.loads(path.read_text()).get("class_names")
        if not names:
            raise ManifestError(f"{path} has no class_names")
        return list(names)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- input shards

def find_input_shards(spec: str) -> list[Path]:
    """Tar files named by a directory or a glob, sorted by name."""
    tars = sorted(Path(spec).glob("*.tar")) if Path(spec).is_dir() else sorted(map(Path, glob.glob(spec)))
    if not tars:
        raise ManifestError(f"--input-shards {spec}: no .tar files found")
    return tars


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key runs up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def tar_samples(tar_path: str | Path) -> Iterable[dict[str, tarfile.TarInfo]]:
    """Members grouped by key, in tar order, as {ext: TarInfo}; the small metadata members
    are also read, as {"_txt": str, "_cls": str, "_json": str}; videos are only located.
    ``group["_key"]`` is the sample key."""
    with tarfile.open(tar_path, "r:") as tar:
        key, group = None, {}
        for info in tar:
            if not info.isfile():
                continue
            k, ext = _split_key(info.name)
            if k != key and group:
                yield group
                group = {}
            key = k
            group["_key"], group[ext] = k, info
            if ext in ("txt", "cls", "json") and info.size <= MAX_META_BYTES:
                group["_" + ext] = tar.extractfile(info).read().decode("utf-8", "replace")
        if group:
            yield group


def _record_from_sample(group: dict, tar_path: Path, class_names: list[str] | None) -> dict:
    """A manifest-like record for one input sample (the same fields a manifest row has)."""
    meta = _json_record(group["_json"]) if "_json" in group else {}
    if isinstance(meta, str):
        return {"_error": f"json member: {meta}"}
    rec = {k: meta[k] for k in ("start", "end", "segments", "url") if k in meta}
    video = next((ext for ext in VIDEO_EXTS if ext in group), None)
    if video is not None:
        rec["path"] = f"{tar_path.name}/{group[video].name}"
        rec["_member"] = (str(tar_path), group[video].offset_data, group[video].size)
    captions = meta.get("captions") or ([group["_txt"]] if "_txt" in group else None) or meta.get("caption")
    if captions:
        rec["captions"] = captions if isinstance(captions, list) else [captions]
    if isinstance(meta.get("label"), str):
        rec["label"] = meta["label"]
    elif "_cls" in group and group["_cls"].strip():
        cls = group["_cls"].strip()
        rec["label"] = class_names[int(cls)] if class_names and cls.isdigit() and int(cls) < len(class_names) else cls
    return rec


def read_input_shard_items(spec: str, task: str) -> tuple[list[Item], list[Path]]:
    """Items for every sample of the input shards (sorted tars, tar order within each)."""
    tars = find_input_shards(spec)
    class_names = _input_class_names(tars[0].parent)
    items: list[Item] = []
    for tar_path in tars:
        for group in tar_samples(tar_path):
            rec = _record_from_sample(group, tar_path, class_names)
            no_video = f"no video member (expected one of: {', '.join(VIDEO_EXTS)})"
            [item] = items_from_records([rec.get("_error", no_video) if "_member" not in rec else rec], task)
            first_member = next(v for v in group.values() if isinstance(v, tarfile.TarInfo))
            items.append(replace(item, index=len(items), row=len(items) + 1,
                                 source=rec.get("path", f"{tar_path.name}/{first_member.name}"),
                                 member=rec.get("_member"), extra={"url": rec["url"]} if "url" in rec else {}))
    return require_usable(items, f"--input-shards {spec}"), tars


def read_member(tar_path: str | Path, offset: int, size: int) -> bytes:
    """A member's bytes, read directly at its data offset (no tar parsing)."""
    with open(tar_path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _input_class_names(folder: Path) -> list[str] | None:
    try:
        return read_class_names(folder)
    except (OSError, ValueError):
        return None
