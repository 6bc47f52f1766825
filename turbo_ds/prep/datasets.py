"""The standard datasets' own annotation files -> build manifest rows, in each dataset's official class order.

One adapter per dataset (``DATASETS``) reads the files the dataset ships (``--annotations``),
keeps one split and lists its videos: where each may lie under the video root, its label
(or captions, or segments) and the class names in the order that published checkpoints
use, so that label ids match e.g. a Kinetics-400 VideoMAE head. ``VideoIndex`` then finds
the files on disk. ``turbo_ds.prep.prepare_dataset`` turns that into a ``build_shards`` run.

The official class orders are derived from the annotation files themselves (nothing is
downloaded); each adapter's docstring states the convention it assumes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from turbo_ds.prep.manifest_rows import ROWS, VIDEO_EXTS, ManifestError, read_records


class AnnotationError(ManifestError):
    """The annotation files are not this dataset's (or this version's), or the split does not exist."""


@dataclass(frozen=True)
class Video:
    """One video of a split, as the annotations describe it."""

    places: tuple[str, ...]
    "where the file may be, best first: 'dir/name' (under the video root) or 'name' (anywhere under it); no extension"
    label: str | None = None
    captions: tuple[str, ...] = ()
    segments: tuple[dict, ...] | None = None  # [{start, end, label}] in seconds
    full_video: str | None = None
    "a place of the uncut source video, used (and cut to ``cut``) when no place of the clip exists"
    cut: tuple[float, float] | None = None


@dataclass(frozen=True)
class Listing:
    videos: list[Video]
    class_names: list[str] | None  # official order; None for caption datasets
    source: str  # the annotation file(s) read, for messages


@dataclass(frozen=True)
class Dataset:
    """How to read one dataset: its task (build_shards --task), splits and annotation files."""

    title: str
    task: str
    splits: tuple[str, ...]
    read: Callable[[Path, str], Listing]
    annotations: str  # what --annotations points at, for --help
    ext: str  # extension of its videos as distributed: the path named for a missing one
    num_classes: int | None = None


# ---------------------------------------------------------------- helpers

def _fail(path: Path, what: str, found: str, expected: str) -> AnnotationError:
    return AnnotationError(f"{path} is not {what}: found {found or 'nothing'}; expected {expected}")


def _read_csv(path: Path, what: str) -> list[dict]:
    if path.suffix.lower() != ".csv":
        raise _fail(path, what, f"a {path.suffix or 'suffix-less'} file", "a .csv file")
    try:
        return read_records(path)
    except UnicodeDecodeError as e:
        raise _fail(path, what, f"binary data ({e.reason})", "a text CSV") from None


def _columns(path: Path, records: list[dict], required: tuple[str, ...], what: str) -> list[dict]:
    """``records``, once they have the required columns (the error names the columns found vs expected)."""
    columns = list(records[0]) if records else []
    if not records or any(c not in columns for c in required):
        raise _fail(path, what, f"columns {', '.join(c for c in columns if c)}", f"columns {', '.join(required)}")
    return records


def _csv(path: Path, required: tuple[str, ...], what: str) -> list[dict]:
    return _columns(path, _read_csv(path, what), required, what)


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, what, f"no JSON ({e})", "a JSON file") from None


def _keys_of(entries: list, required: set[str], path: Path, what: str) -> None:
    """Every entry is an object with ``required`` keys (checked on all, reported on the first bad one)."""
    for entry in entries:
        if not isinstance(entry, dict) or not required <= entry.keys():
            found = f"keys {', '.join(sorted(entry))}" if isinstance(entry, dict) else type(entry).__name__
            raise _fail(path, what, found, f"keys {', '.join(sorted(required))}")


def _folder(path: Path) -> Path:
    """The folder of annotation files ``--annotations`` names (itself, or a file's folder)."""
    if not path.exists():
        raise AnnotationError(f"--annotations {path} does not exist")
    return path if path.is_dir() else path.parent


def _file_in(path: Path, names: tuple[str, ...], what: str, any_file: bool = False) -> Path:
    """The first of ``names`` in the folder ``path`` (or in a file's folder); ``any_file``: a file as given."""
    if any_file and path.is_file():
        return path
    folder = _folder(path)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise AnnotationError(f"{folder} holds no {' or '.join(names)} ({what})")


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-empty lines (the official lists have CRLF endings)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _stem(name: str) -> str:
    """'Class/v_x.avi' -> 'v_x'."""
    return name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _numbered_split(split: str) -> tuple[str, int]:
    """'train2' -> ('train', 2)."""
    m = re.fullmatch(r"([a-z]+)(\d)", split)
    return m.group(1), int(m.group(2))


def _numbered(parts: tuple[str, ...], folds: int) -> tuple[str, ...]:
    return tuple(f"{p}{k}" for k in range(1, folds + 1) for p in parts)


# ---------------------------------------------------------------- Kinetics

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
KINETICS_FILES = {"train": ("train.csv",), "val": ("validate.csv", "val.csv"), "test": ("test.csv",)}
KINETICS_SPLIT_VALUES = {"validate": "val", "validation": "val"}


def _kinetics_split(record: dict) -> str:
    value = (record.get("split") or "").strip()
    return KINETICS_SPLIT_VALUES.get(value, value)


def read_kinetics(path: Path, split: str) -> Listing:
    """Kinetics-400/600/700: the official CSV ``label,youtube_id,time_start,time_end,split``.

    ``--annotations`` is the split's CSV or the folder of ``train.csv``/``validate.csv``/
    ``test.csv``; rows whose ``split`` column names another split are left out (``validate``
    counts as ``val``); extra columns (``is_cc``) are ignored. Each row is a 10 s clip of a
    YouTube video: the file is ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` anywhere
    under the video root (flat, as the CVDF archives, or in per-label folders, as the
    ActivityNet downloader), or else the full ``<youtube_id>.<ext>``, cut to
    [time_start, time_end]. Class order: the file's label names sorted (Python string order),
    as the official label maps and VideoMAE / mmaction2 / PySlowFast use; build val/test with
    the same class list as train (a split naming fewer classes shifts the ids: this warns).
    The Kinetics-600/700 test CSVs have no labels and are refused.
    """
    what = "an official Kinetics CSV (label,youtube_id,time_start,time_end,split)"
    file = _file_in(path, KINETICS_FILES[split], what, any_file=True)
    records = _read_csv(file, what)
    if records and "label" not in records[0] and "youtube_id" in records[0]:
        raise AnnotationError(f"{file} has no label column (columns {', '.join(records[0])}): an unlabelled "
                              "test set cannot be built for action_cls; build train or val")
    records = _columns(file, records, KINETICS_COLUMNS, what)
    names = sorted({r["label"].strip() for r in records if r.get("label")})
    splits = {_kinetics_split(r) for r in records} - {""}
    if splits and split not in splits:
        raise AnnotationError(f"{file} has no rows of split {split!r} (its split column holds "
                              f"{', '.join(sorted(splits))})")
    videos = []
    for n, r in enumerate(records, start=2):  # line 1 is the header
        if splits and _kinetics_split(r) != split:
            continue
        yid = (r["youtube_id"] or "").strip()
        try:
            start, end = float(r["time_start"]), float(r["time_end"])
        except (TypeError, ValueError):
            raise _fail(file, what, f"time_start={r['time_start']!r}, time_end={r['time_end']!r} on line {n}",
                        "seconds") from None
        clip = f"{yid}_{int(start):06d}_{int(end):06d}"
        videos.append(Video((clip,), label=(r["label"] or "").strip() or None, full_video=yid, cut=(start, end)))
    return Listing(videos, names, str(file))


# ---------------------------------------------------------------- Something-Something v2

SSV2_FILES = {"labels": "labels.json", "train": "train.json", "val": "validation.json"}
SSV2_PREFIX = "something-something-v2-"


def read_ssv2(path: Path, split: str) -> Listing:
    """Something-Something v2: the official JSON files, in the folder ``--annotations``.

    ``something-something-v2-labels.json`` (``{template: "id"}``, also accepted without the
    prefix) gives the 174 class ids; ``...-train.json`` / ``...-validation.json`` list
    ``{"id", "label", "template", "placeholders"}``. A video's class is its template with the
    placeholder brackets removed ("Putting [something] on a surface" -> "Putting something on
    a surface"), as the dataset's own loaders and VideoMAE do; class names are the labels
    JSON's keys in id order. Videos are ``<id>.webm``. The test set is unlabelled (no split).
    """
    files = {k: _file_in(path, (SSV2_PREFIX + name, name), "the Something-Something v2 annotations")
             for k, name in SSV2_FILES.items() if k in ("labels", split)}
    what = "the Something-Something v2 labels JSON ({template: id})"
    labels = _json(files["labels"], what)
    if not isinstance(labels, dict) or not all(str(v).strip().isdigit() for v in labels.values()):
        raise _fail(files["labels"], what, type(labels).__name__ if not isinstance(labels, dict)
                    else f"values {', '.join(map(repr, list(labels.values())[:3]))}", "{template: id} with integer ids")
    ids = {name: int(v) for name, v in labels.items()}
    if sorted(ids.values()) != list(range(len(ids))):
        raise _fail(files["labels"], what, "ids with gaps or repeats", f"ids 0..{len(ids) - 1}")
    names = sorted(ids, key=ids.get)
    what = "a Something-Something v2 split JSON ([{id, label, template, placeholders}])"
    entries = _json(files[split], what)
    if not isinstance(entries, list):
        raise _fail(files[split], what, type(entries).__name__, "a list")
    _keys_of(entries, {"id", "template"}, files[split], what)
    videos = [Video((str(e["id"]).strip(),), label=e["template"].replace("[", "").replace("]", "").strip())
              for e in entries]
    return Listing(videos, names, str(files[split]))


# ---------------------------------------------------------------- UCF101, HMDB51

def read_ucf101(path: Path, split: str) -> Listing:
    """UCF101: the official ``ucfTrainTestlist`` folder (split 1-3: ``train1`` ... ``test3``).

    ``classInd.txt`` ("1 ApplyEyeMakeup") gives the class ids (1-based in the file, 0-based
    here); ``trainlist0K.txt`` lines are "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
    ``testlist0K.txt`` lines give the path only, whose folder names the class (matched to
    classInd.txt ignoring case: the videos of HandstandPushups are named HandStandPushups).
    Videos are ``<Class>/<name>.avi`` or ``<name>.avi`` anywhere under the video root.
    """
    part, k = _numbered_split(split)
    what = "UCF101's classInd.txt ('<id> <ClassName>' lines)"
    ind = _file_in(path, ("classInd.txt",), "UCF101's ucfTrainTestlist folder")
    ids: dict[int, str] = {}
    for n, line in _lines(ind):
        m = re.fullmatch(r"(\d+)\s+(\S+)", line)
        if not m:
            raise _fail(ind, what, f"line {n} {line!r}", "'<id> <ClassName>'")
        ids[int(m.group(1))] = m.group(2)
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise _fail(ind, what, "ids with gaps or repeats", f"ids 1..{len(ids)}")
    names = [ids[i] for i in sorted(ids)]
    by_folder = {name.lower(): name for name in names}
    what = f"a UCF101 {part} list ('<Class>/<video>.avi{' <class id>' if part == 'train' else ''}' lines)"
    split_file = _file_in(ind, (f"{part}list0{k}.txt",), what)
    videos = []
    for n, line in _lines(split_file):
        fields = line.split()
        if len(fields) not in (1, 2) or "/" not in fields[0] or (len(fields) == 2 and not fields[1].isdigit()):
            raise _fail(split_file, what, f"line {n} {line!r}", "'<Class>/<video>.avi [<class id>]'")
        rel = fields[0]
        folder = rel.split("/", 1)[0]
        label = ids.get(int(fields[1]), fields[1]) if len(fields) == 2 else by_folder.get(folder.lower(), folder)
        videos.append(Video((rel.rsplit(".", 1)[0], _stem(rel)), label=label))
    return Listing(videos, names, str(split_file))


HMDB_SPLIT_FILE = re.compile(r"(.+)_test_split([123])\.txt")
HMDB_MEMBERSHIP = {"train": "1", "test": "2"}  # 0: in neither


def read_hmdb51(path: Path, split: str) -> Listing:
    """HMDB51: the official ``testTrainMulti_7030_splits`` folder (split 1-3: ``train1`` ... ``test3``).

    One file per class and split, ``<class>_test_split<k>.txt``, with lines "<video>.avi <m>":
    m = 1 training, 2 testing, 0 unused. Class order: the class names sorted (the order of
    the official archives' folder listing, used by mmaction2 and VideoMAE). Videos are
    ``<class>/<video>.avi`` or ``<video>.avi`` anywhere under the video root.
    """
    part, k = _numbered_split(split)
    folder = _folder(path)
    files = sorted(p for p in folder.iterdir() if HMDB_SPLIT_FILE.fullmatch(p.name))
    if not files:
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
        raise _fail(folder, "HMDB51's split folder (testTrainMulti_7030_splits)", found,
                    "files <class>_test_split<1-3>.txt")
    names = sorted({HMDB_SPLIT_FILE.fullmatch(p.name).group(1) for p in files})
    videos = []
    for file in files:
        cls, fold = HMDB_SPLIT_FILE.fullmatch(file.name).groups()
        if int(fold) != k:
            continue
        for n, line in _lines(file):
            video, _, member = line.rpartition(" ")
            if member not in ("0", "1", "2") or not video.strip():
                raise _fail(file, "an HMDB51 split file", f"line {n} {line!r}", "'<video>.avi <0|1|2>'")
            if member == HMDB_MEMBERSHIP[part]:
                stem = _stem(video.strip())
                videos.append(Video((f"{cls}/{stem}", stem), label=cls))
    return Listing(videos, names, f"{folder}/*_test_split{k}.txt")


# ---------------------------------------------------------------- MSR-VTT, WebVid

MSRVTT_DATA = "MSRVTT_data.json"
MSRVTT_LISTS = {"train9k": "MSRVTT_train.9k.csv", "train7k": "MSRVTT_train.7k.csv"}
MSRVTT_TEST_1K = "MSRVTT_JSFUSION_test.csv"
MSRVTT_OFFICIAL = {"train": "train", "val": "validate", "test": "test"}


def read_msrvtt(path: Path, split: str) -> Listing:
    """MSR-VTT, in the folder ``--annotations`` (the files of the CLIP4Clip / Frozen releases).

    ``MSRVTT_data.json`` (``{"videos": [{"video_id", "split"}], "sentences": [{"video_id",
    "caption"}]}``, as the official train_val_videodatainfo.json) gives the 20 captions of
    every video. Splits: ``train9k`` / ``train7k`` (the ``video_id`` column of
    ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv``, 20 captions each), ``test1k`` (the
    1k-A test set: ``MSRVTT_JSFUSION_test.csv``, one caption per video, its ``sentence``
    column, as every 1k-A retrieval result is reported), and the official full split
    ``train`` / ``val`` / ``test`` (6,513 / 497 / 2,990 videos, the json's ``split``).
    Videos are ``<video_id>.mp4`` (video0 ... video9999).
    """
    if split == "test1k":
        test = _file_in(path, (MSRVTT_TEST_1K,), "the MSR-VTT 1k-A test list")
        records = _csv(test, ("video_id", "sentence"), "the MSR-VTT 1k-A test CSV (key,vid_key,video_id,sentence)")
        videos = [Video((r["video_id"].strip(),), captions=(r["sentence"].strip(),)) for r in records]
        return Listing(videos, None, str(test))
    data_file = _file_in(path, (MSRVTT_DATA,), "MSR-VTT's captions")
    what = "MSR-VTT's MSRVTT_data.json ({videos: [...], sentences: [...]})"
    data = _json(data_file, what)
    if not isinstance(data, dict) or not {"videos", "sentences"} <= data.keys():
        raise _fail(data_file, what, f"keys {', '.join(data) if isinstance(data, dict) else type(data).__name__}",
                    "keys videos, sentences")
    _keys_of(data["sentences"], {"video_id", "caption"}, data_file, what)
    captions: dict[str, list[str]] = {}
    for s in sorted(data["sentences"], key=lambda s: s.get("sen_id", 0)):
        captions.setdefault(s["video_id"], []).append(str(s["caption"]).strip())
    if split in MSRVTT_LISTS:
        listed = _file_in(path, (MSRVTT_LISTS[split],), f"the MSR-VTT {split} list")
        ids = [r["video_id"].strip() for r in _csv(listed, ("video_id",), f"the MSR-VTT {split} list (video_id)")]
        source = listed
    else:
        _keys_of(data["videos"], {"video_id", "split"}, data_file, what)
        ids = [v["video_id"] for v in data["videos"] if v["split"] == MSRVTT_OFFICIAL[split]]
        source = data_file
    return Listing([Video((vid,), captions=tuple(captions.get(vid, ()))) for vid in ids], None, str(source))


WEBVID_FILES = {"train": ("results_2M_train.csv", "results_10M_train.csv"),
                "val": ("results_2M_val.csv", "results_10M_val.csv")}


def read_webvid(path: Path, split: str) -> Listing:
    """WebVid-2M / 10M: the results CSV ``videoid,contentUrl,duration,page_dir,name``.

    ``--annotations`` is the split's CSV or the folder holding ``results_2M_train.csv`` /
    ``results_2M_val.csv`` (else the 10M files). The caption is ``name``; videos are
    ``<page_dir>/<videoid>.mp4`` (the layout of the WebVid download scripts) or
    ``<videoid>.mp4`` anywhere under the video root.
    """
    file = _file_in(path, WEBVID_FILES[split], "the WebVid results CSVs", any_file=True)
    records = _csv(file, ("videoid", "name", "page_dir"), "a WebVid results CSV (videoid,contentUrl,duration,"
                                                         "page_dir,name)")
    videos = [Video((f"{r['page_dir'].strip()}/{r['videoid'].strip()}", r["videoid"].strip()),
                    captions=(r["name"].strip(),) if (r["name"] or "").strip() else ()) for r in records]
    return Listing(videos, None, str(file))


# ---------------------------------------------------------------- Breakfast, COIN

BREAKFAST_FPS = 15
BREAKFAST_FILE = re.compile(r"(P\d+)_([A-Za-z]+\d*)_(P\d+)_([a-z]+)")
BREAKFAST_LINE = re.compile(r"(\d+)\s*-\s*(\d+)\s+(\S+)")


def _breakfast_test_persons(k: int) -> set[str]:
    """The 4 official splits hold out 13 people each: s1 P03-P15, s2 P16-P28, s3 P29-P41, s4 P42-P54."""
    first = 3 + 13 * (k - 1)
    return {f"P{i:02d}" for i in range(first, first + 13)}


def read_breakfast(path: Path, split: str) -> Listing:
    """Breakfast: the coarse segmentation files (``segmentation_coarse``, searched recursively).

    Each ``<person>_<camera>_<person>_<activity>.txt`` (e.g. P03_cam01_P03_cereals.txt) has
    lines "1-30 SIL": 1-based inclusive frame ranges at 15 fps and the sub-action, which
    become segments [(first - 1) / 15, last / 15) s. The video's label is the activity (10
    classes, sorted by name: there is no published id order). Splits ``train1``-``train4`` /
    ``test1``-``test4``: split s holds out persons of s1 P03-P15, s2 P16-P28, s3 P29-P41,
    s4 P42-P54. Videos are ``<person>/<camera>/<person>_<activity>.avi`` as in
    BreakfastII_15fps_qvga_sync (for ``stereo01``: ``<person>/stereo/<person>_<activity>_ch0.avi``,
    then ``_ch1``), or named like the annotation file anywhere under the video root.
    """
    part, k = _numbered_split(split)
    held_out = _breakfast_test_persons(k)
    folder = _folder(path)
    files = sorted(folder.rglob("*.txt"))
    what = "Breakfast's coarse segmentation ('<person>_<camera>_<person>_<activity>.txt' files)"
    if not files:
        raise _fail(folder, what, "no .txt files", "files like P03_cam01_P03_cereals.txt")
    parsed = []
    for file in files:
        m = BREAKFAST_FILE.fullmatch(file.stem)
        if not m:
            raise _fail(file, what, f"the file name {file.name!r}", "'<person>_<camera>_<person>_<activity>.txt'")
        parsed.append((file, m.groups()))
    names = sorted({groups[3] for _, groups in parsed})
    videos = []
    for file, (person, camera, _, activity) in parsed:
        if (person in held_out) != (part == "test"):
            continue
        segments = []
        for n, line in _lines(file):
            m = BREAKFAST_LINE.fullmatch(line)
            if not m:
                raise _fail(file, what, f"line {n} {line!r}", "'<first frame>-<last frame> <action>'")
            first, last, action = int(m.group(1)), int(m.group(2)), m.group(3)
            segments.append({"start": (first - 1) / BREAKFAST_FPS, "end": last / BREAKFAST_FPS, "label": action})
        base = f"{person}_{activity}"
        places = ((f"{person}/stereo/{base}_ch0", f"{person}/stereo/{base}_ch1") if camera.startswith("stereo")
                  else (f"{person}/{camera}/{base}",))
        videos.append(Video((*places, file.stem), label=activity, segments=tuple(segments)))
    return Listing(videos, names, f"{folder}/**/*.txt")


COIN_SUBSETS = {"train": "training", "test": "testing"}


def read_coin(path: Path, split: str) -> Listing:
    """COIN: ``COIN.json`` (the file, or the folder holding it).

    ``{"database": {youtube_id: {"recipe_type", "class", "subset", "annotation": [{"segment":
    [start, end], "label"}], ...}}}``: the label is the task (``class``, 180 of them) and its
    id is ``recipe_type``, so class names are listed by recipe_type; the step annotations
    become segments (seconds). ``subset`` training / testing are the splits ``train`` / ``test``.
    Videos are ``<youtube_id>.mp4`` anywhere under the video root (the official downloader
    writes ``<recipe_type>/<youtube_id>.mp4``), used whole.
    """
    file = _file_in(path, ("COIN.json",), "COIN's annotations", any_file=True)
    what = "COIN's COIN.json ({database: {youtube_id: {recipe_type, class, subset, annotation}}})"
    data = _json(file, what)
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise _fail(file, what, f"keys {', '.join(data) if isinstance(data, dict) else type(data).__name__}",
                    "a 'database' object")
    entries = data["database"]
    _keys_of(list(entries.values()), {"recipe_type", "class", "subset", "annotation"}, file, what)
    by_id: dict[int, str] = {}
    for yid, e in entries.items():
        if not str(e["recipe_type"]).isdigit():
            raise _fail(file, what, f"recipe_type {e['recipe_type']!r} ({yid})", "an integer task id")
        _keys_of(e["annotation"], {"segment"}, file, f"{what}: a step annotation of {yid}")
        if by_id.setdefault(int(e["recipe_type"]), e["class"]) != e["class"]:
            raise _fail(file, what, f"recipe_type {e['recipe_type']} named both {by_id[int(e['recipe_type'])]!r} "
                        f"and {e['class']!r} ({yid})", "one class per recipe_type")
    names = [by_id.get(i, f"<recipe_type {i}>") for i in range(max(by_id, default=-1) + 1)]
    videos = []
    for yid, e in entries.items():
        if e["subset"] == COIN_SUBSETS[split]:
            segments = tuple({"start": float(a["segment"][0]), "end": float(a["segment"][1]), "label": a.get("label")}
                             for a in e["annotation"])
            videos.append(Video((yid,), label=e["class"], segments=segments))
    return Listing(videos, names, str(file))


# ---------------------------------------------------------------- the table

def _kinetics(n: int) -> Dataset:
    return Dataset(f"Kinetics-{n}", "action_cls", ("train", "val", "test"), read_kinetics,
                   "the split's official CSV, or the folder of train.csv/validate.csv/test.csv", "mp4", n)


DATASETS: dict[str, Dataset] = {
    "kinetics400": _kinetics(400),
    "kinetics600": _kinetics(600),
    "kinetics700": _kinetics(700),
    "ssv2": Dataset("Something-Something v2", "action_cls", ("train", "val"), read_ssv2,
                    "the folder of something-something-v2-{labels,train,validation}.json", "webm", 174),
    "ucf101": Dataset("UCF101", "action_cls", _numbered(("train", "test"), 3), read_ucf101,
                      "the ucfTrainTestlist folder (classInd.txt, trainlist0K.txt, testlist0K.txt)", "avi", 101),
    "hmdb51": Dataset("HMDB51", "action_cls", _numbered(("train", "test"), 3), read_hmdb51,
                      "the testTrainMulti_7030_splits folder (<class>_test_split<k>.txt)", "avi", 51),
    "msrvtt": Dataset("MSR-VTT", "video_language", ("train9k", "train7k", "test1k", "train", "val", "test"),
                      read_msrvtt, "the folder of MSRVTT_data.json, MSRVTT_train.{9k,7k}.csv, "
                      "MSRVTT_JSFUSION_test.csv", "mp4"),
    "webvid": Dataset("WebVid", "video_language", ("train", "val"), read_webvid,
                      "the split's results CSV, or the folder of results_2M_{train,val}.csv", "mp4"),
    "breakfast": Dataset("Breakfast", "long_video", _numbered(("train", "test"), 4), read_breakfast,
                         "the coarse segmentation folder (P03_cam01_P03_cereals.txt ...)", "avi", 10),
    "coin": Dataset("COIN", "long_video", ("train", "test"), read_coin, "COIN.json (or its folder)", "mp4", 180),
}


def class_count_warning(name: str, listing: Listing) -> str | None:
    """None when the class list has the dataset's size; a warning when smaller (ids shift); an error when larger."""
    ds = DATASETS[name]
    n = len(listing.class_names or [])
    if ds.num_classes is None or n == ds.num_classes:
        return None
    if n > ds.num_classes:
        raise AnnotationError(f"{listing.source} names {n} classes, but {ds.title} has {ds.num_classes}: these are "
                              f"the annotations of another dataset or version (datasets: {', '.join(DATASETS)})")
    return (f"{listing.source} names {n} classes, not {ds.title}'s {ds.num_classes}: label ids will not match "
            f"published {ds.title} checkpoints; give --class-names with the full class list (e.g. the train "
            f"split's dataset folder) if this split lacks some classes")


# ---------------------------------------------------------------- finding the files

class VideoIndex:
    """Every video file under a root, found by its path without extension or by its bare file name stem.

    One walk of the tree (not a stat per candidate name), so finding a million videos costs
    one directory listing. A stem found in several folders is ambiguous and never matched by
    stem alone (``ambiguous`` names them); the same name with several extensions in one
    folder resolves to the first of ``VIDEO_EXTS`` (mp4 first).
    """

    def __init__(self, root: Path):
        self.root = root
        self.by_path: dict[str, str] = {}
        self.by_stem: dict[str, str] = {}
        self.ambiguous: dict[str, list[str]] = {}
        rank = {ext: i for i, ext in enumerate(VIDEO_EXTS)}
        for folder, dirs, files in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip .build and friends
            rel_folder = os.path.relpath(folder, root)
            for f in sorted(files):
                stem, dot, ext = f.rpartition(".")
                if not dot or ext.lower() not in rank:
                    continue
                rel = f if rel_folder == "." else f"{rel_folder}/{f}"
                key = rel.rsplit(".", 1)[0]
                if key in self.by_path:  # same name, another extension: keep the preferred one
                    old = self.by_path[key]
                    if rank[ext.lower()] < rank[old.rsplit(".", 1)[1].lower()]:
                        self.by_path[key] = rel
                        if self.by_stem.get(stem) == old:
                            self.by_stem[stem] = rel
                    continue
                self.by_path[key] = rel
                if stem in self.ambiguous:
                    self.ambiguous[stem].append(rel)
                elif stem in self.by_stem:
                    self.ambiguous[stem] = [self.by_stem.pop(stem), rel]
                else:
                    self.by_stem[stem] = rel

    def find(self, place: str) -> str | None:
        return self.by_path.get(place) if "/" in place else self.by_stem.get(place)


@dataclass(frozen=True)
class Found:
    rows: list[dict]  # build manifest rows, in listing order
    found: int
    cut: int  # found as full source videos, to be cut
    ambiguous: list[str]  # stems of listed videos that match several files


def manifest_rows(listing: Listing, index: VideoIndex, ds: Dataset) -> Found:
    """build_shards rows for every listed video: the file found on disk, or the expected path (reported missing)."""
    rows, found, cut, ambiguous = [], 0, 0, []
    for v in listing.videos:
        path = next((p for p in map(index.find, v.places) if p), None)
        rng = None
        if path is None and v.full_video is not None:
            path, rng = index.find(v.full_video), v.cut
        row: dict[str, Any] = {}
        if path is None:
            ambiguous += [p for p in v.places if p in index.ambiguous]
            path, rng = f"{v.places[0]}.{ds.ext}", None
            row["missing"] = True  # not read by the builder; a file that appears later changes the manifest
        else:
            found += 1
            cut += rng is not None
        row["path"] = path
        if ROWS[ds.task].captions:
            row["captions"] = list(v.captions)
        else:
            row["label"] = v.label
        if rng is not None:
            row["start"], row["end"] = rng
        if v.segments is not None:
            row["segments"] = list(v.segments)
        rows.append(row)
    return Found(rows, found, cut, ambiguous)
