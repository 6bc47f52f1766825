"""Build WebDataset shards from ``Item`` lists: parallel, resumable, byte-reproducible, in parts.

An output folder holds::

    <prefix>-000000.tar ...    shards; shard k holds items [k*S, (k+1)*S) that built fine
    errors.jsonl               skipped items, one {"row", "path", "reason"} a line
    manifest.json              written last (by the merge): the folder is complete when it exists
    .build/settings.json       written first: a rerun (every part) must use the same settings
    .build/<shard>.json        a shard's completion record (sample count + its errors)
    .build/parts.json          how many parts the build was cut into, and how many shards it has
    .build/part-000003.json    part 3's record, written when all its shards are: their names, sample
                               counts and sizes, its errors, the settings and class names it used

Every file is written to a temp name and renamed, so a killed run (even ``kill -9``)
leaves only complete files; a rerun skips shards that have a completion record and
rebuilds the rest, ending with the same bytes as an uninterrupted run. One item (one
video) is one unit of work: workers transcode items, and a shard is written, its items in
manifest order, once all of them are in. So every worker is busy even when a manifest holds
fewer (long) videos than one shard, and the bytes do not depend on the number of workers.

Parts: rows are cut into shards first, then part i of N builds the contiguous shards
``part_shards(i, N, K)``, so several machines (a Slurm array) build one dataset, each part
resumable on its own. ``merge`` checks that every part's record is there and agrees with the
others, then writes errors.jsonl and manifest.json: the bytes of a one-part build.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from turbo_ds.data.locations import join, redact
from turbo_ds.data.shards import MANIFEST, make_manifest, shard_bytes, shard_name
from turbo_ds.data.transport import ReadFailed, read_bytes, remote_size, write_bytes
from turbo_ds.data.video import CorruptVideo
from turbo_ds.fileio import atomic_write_bytes, atomic_write_json, json_bytes, temp_path
from turbo_ds.prep.manifest_rows import ROWS, Item, read_member
from turbo_ds.prep.transcode import TranscodeSettings, describe_error, probe, transcode

BUILD_DIR = ".build"
SETTINGS = "settings.json"
PARTS = "parts.json"
ERRORS = "errors.jsonl"
TOOL = "data_prep/build_shards.py"
# Settings whose option name is not simply "--" + the key with dashes.
OPTION_NAMES = {"manifest_sha256": "--manifest (the file's contents changed)",
                "input_shards_sha256": "--input-shards (the tar files changed)"}


class BuildError(RuntimeError):
    """The build cannot start (settings mismatch, a concurrent run) or its parts cannot be merged (one missing,
    one built otherwise); the message says how to fix it."""


class SkipSample(Exception):
    """This item cannot be built; it is listed in errors.jsonl and the build goes on."""


SKIPPED = (SkipSample, CorruptVideo, OSError)


@dataclass(frozen=True)
class BuildSettings:
    """Everything that determines the output bytes (saved, and compared on every rerun)."""

    task: str
    inputs: tuple[tuple[str, Any], ...]  # identity of the input: paths and content hashes
    video_root: str | None = None
    shard_size: int = 256
    prefix: str = "shard"
    transcode: TranscodeSettings | None = TranscodeSettings()  # None: store the bytes as they are
    class_names: tuple[str, ...] | None = None  # given with --class-names

    def record(self) -> dict[str, Any]:
        """A flat JSON-ready dict whose keys are named after the command-line options."""
        encoding = asdict(self.transcode) if self.transcode else {}
        rec = {"task": self.task, **dict(self.inputs), "video_root": self.video_root,
               "shard_size": self.shard_size, "prefix": self.prefix,
               "no_transcode": self.transcode is None, **encoding,
               "class_names": list(self.class_names) if self.class_names is not None else None}
        return json.loads(json.dumps(rec))  # tuples -> lists, as read back from disk


@dataclass(frozen=True)
class ShardJob:
    """One shard's work: self-contained so a worker process needs nothing else."""

    name: str
    items: tuple[Item, ...]
    out: str
    task: str
    video_root: str | None
    transcode: TranscodeSettings | None
    class_ids: dict[str, int]


@dataclass(frozen=True)
class BuildResult:
    written: int
    skipped: int
    manifest: dict | None


@dataclass(frozen=True)
class Part:
    """Which share of the build this run makes: part ``index`` of ``count``."""

    index: int = 0
    count: int = 1

    @property
    def record_name(self) -> str:
        return f"part-{self.index:06d}.json"

    def shards(self, num_shards: int) -> range:
        """Its contiguous shards; the parts' shard counts differ by at most one."""
        return range(self.index * num_shards // self.count, (self.index + 1) * num_shards // self.count)


# ---------------------------------------------------------------- one sample

def _load(item: Item, video_root: str | None) -> str | bytes:
    """The video as a path (manifest input) or bytes (a member of an input shard)."""
    if item.member is not None:
        return read_member(*item.member)
    path = Path(video_root or ".") / item.source
    if not path.is_file():
        raise SkipSample(f"file not found: {item.source}")
    return str(path)


def _shift_segments(segments: tuple[dict, ...], offset: float, duration: float) -> list[dict]:
    """Segments moved onto the cut clip's timeline; those outside it are dropped."""
    shifted = []
    for seg in segments:
        start, end = max(0.0, seg["start"] - offset), min(duration, seg["end"] - offset)
        if end > start:
            shifted.append({**seg, "start": round(start, 6), "end": round(end, 6)})
    return shifted


def _task_fields(item: Item, info: dict, cut: bool) -> dict[str, Any]:
    """The json fields that carry the task's labels."""
    fields: dict[str, Any] = {}
    if item.label is not None:
        fields["label"] = item.label
    if item.captions:
        fields["captions"] = list(item.captions)
    if cut and item.start is not None:  # the clip starts at source time item.start
        fields["source_start"] = item.start
    if not cut:  # stored as is: the range still applies to the stored video
        fields.update({k: v for k, v in (("start", item.start), ("end", item.end)) if v is not None})
    if item.segments is not None:
        fields["segments"] = (_shift_segments(item.segments, item.start or 0.0, info["duration"])
                              if cut else list(item.segments))
    return fields


def make_sample(item: Item, job: ShardJob) -> dict[str, Any]:
    """The shard sample for ``item``; raises one of SKIPPED when it cannot be built."""
    if item.error is not None:
        raise SkipSample(item.error)
    src = _load(item, job.video_root)
    if job.transcode is not None:
        data, info = transcode(src, job.transcode, item.start, item.end)
    else:
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        info = probe(data)
    meta = {**info, "source": item.source, "row": item.row, **item.extra,
            **_task_fields(item, info, cut=job.transcode is not None)}
    sample = {"__key__": f"{item.index:09d}", "mp4": data, "json": meta}
    if item.label is not None and not ROWS[job.task].captions:
        sample["cls"] = job.class_ids[item.label]
    if item.captions:
        sample["txt"] = item.captions[0]
    return sample


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, SkipSample) else describe_error(e)


def _outcome(item: Item, job: ShardJob) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the sample, None), or (None, the errors.jsonl record) when the item cannot be built."""
    try:
        return make_sample(item, job), None
    except SKIPPED as e:
        return None, {"row": item.row, "path": item.source, "reason": _reason(e)}


def _write_shard(job: ShardJob, outcomes: list[tuple[dict | None, dict | None]]) -> None:
    """Write one shard from its items' outcomes (in item order), then its completion record."""
    samples = [sample for sample, _ in outcomes if sample is not None]
    errors = [error for _, error in outcomes if error is not None]
    data = shard_bytes(samples) if samples else b""
    if samples:  # a shard whose items all failed has no tar, only its record
        atomic_write_bytes(Path(job.out) / job.name, data)
    atomic_write_json(_record_path(job.out, job.name), {"num_samples": len(samples), "errors": errors,
                                                        **_fingerprint(data)})


def _fingerprint(data: bytes) -> dict[str, Any]:
    """Size and sha256 of a shard: what tells an upload that resumes which shards the store holds already."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest() if data else None}


def build_shard(job: ShardJob, progress: Callable[[], None] = lambda: None) -> None:
    """Build one shard in this process."""
    outcomes = []
    for item in job.items:
        outcomes.append(_outcome(item, job))
        progress()
    _write_shard(job, outcomes)


# ---------------------------------------------------------------- worker processes


def _die_with_parent(parent: int) -> None:
    """A killed build (even kill -9) must not leave workers behind still writing into OUT."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def _run_jobs(jobs: list[ShardJob], workers: int, bar: tqdm) -> None:
    """Items go to the workers in order, at most 2 per worker in flight, so this process holds the samples of
    only the shards with an item in flight; each shard is written as soon as its last item is in."""
    items = [(k, i, item) for k, job in enumerate(jobs) for i, item in enumerate(job.items)]
    if workers <= 1 or len(items) <= 1:  # in-process: no start-up cost, easy to debug
        for job in jobs:
            build_shard(job, lambda: bar.update(1))
        return
    bare = [dataclasses.replace(job, items=()) for job in jobs]  # what a worker needs besides its item
    outcomes: list[list] = [[None] * len(job.items) for job in jobs]
    missing = [len(job.items) for job in jobs]
    # spawn: FFmpeg/threads in a forked child are not safe, and spawn is portable.
    ctx, todo = mp.get_context("spawn"), iter(items)
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        running: dict = {}
        while True:
            for k, i, item in itertools.islice(todo, 2 * workers - len(running)):
                running[pool.submit(_outcome, item, bare[k])] = k, i
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                k, i = running.pop(future)
                outcomes[k][i] = future.result()  # a worker's crash stops the build (rerun resumes)
                bar.update(1)
                missing[k] -= 1
                if not missing[k]:
                    _write_shard(jobs[k], outcomes[k])
                    outcomes[k] = []  # free its samples


# ---------------------------------------------------------------- the output folder

def _record_path(out: str | Path, name: str) -> Path:
    return Path(out) / BUILD_DIR / f"{name}.json"


def _option(key: str) -> str:
    return OPTION_NAMES.get(key, "--" + key.replace("_", "-"))


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two settings records, sorted."""
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _also(keys: list[str]) -> str:
    return f" (also differs: {', '.join(_option(k) for k in keys)})" if keys else ""


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Save the settings on the first run; on a rerun (or another part) they must match what built the folder."""
    path = out / BUILD_DIR / SETTINGS
    if not path.exists():
        tmp = temp_path(path)
        tmp.write_bytes(json_bytes(settings))
        try:  # link, not rename: of parts starting at once on a shared filesystem, exactly one saves its settings
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: rename (parts starting at the same moment may race)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    saved = json.loads(path.read_text())
    diffs = _differing(saved, settings)
    if diffs:
        first = diffs[0]
        raise BuildError(f"{out} holds shards built with different settings: {_option(first)} was "
                         f"{saved.get(first)!r}, now {settings.get(first)!r}{_also(diffs[1:])}. Use a new --out, or "
                         f"delete {out} to rebuild it with the new settings.")


@contextmanager
def _exclusive(out: Path, part: Part) -> Iterator[None]:
    """One build per folder (per part) at a time; the lock dies with the process, so kill -9 frees it."""
    name = "lock" if part.count == 1 else f"lock.part-{part.index:06d}"
    with open(out / BUILD_DIR / name, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            which = "" if part.count == 1 else f" (part {part.index} of {part.count})"
            raise BuildError(f"another build_shards run is writing to {out}{which}; "
                             f"wait for it or use another --out") from None
        yield


def _remove_stale_temp(out: Path, jobs: list[ShardJob] | None) -> None:
    """Temp files of a killed run (see fileio.atomic_write_bytes) are never completed: delete them; those of
    ``jobs`` only when given (other parts may be writing theirs into the same folder right now)."""
    if jobs is None:
        found = [*out.glob(".*.tmp*"), *(out / BUILD_DIR).glob(".*.tmp*")]
    else:
        found = [p for job in jobs for p in (*out.glob(f".{job.name}.tmp*"),
                                             *(out / BUILD_DIR).glob(f".{job.name}.json.tmp*"))]
    for path in found:
        path.unlink(missing_ok=True)


def _is_done(job: ShardJob) -> bool:
    record = _record_path(job.out, job.name)
    if not record.exists():
        return False
    return json.loads(record.read_text())["num_samples"] == 0 or (Path(job.out) / job.name).exists()


def _jobs(items: list[Item], settings: BuildSettings, class_names: list[str] | None, out: Path) -> list[ShardJob]:
    class_ids = {name: i for i, name in enumerate(class_names or [])}
    size = settings.shard_size
    return [ShardJob(shard_name(settings.prefix, k), tuple(items[start:start + size]), str(out), settings.task,
                     settings.video_root, settings.transcode, class_ids)
            for k, start in enumerate(range(0, len(items), size))]


def _write_part(out: Path, part: Part, jobs: list[ShardJob], num_shards: int, settings: BuildSettings,
                class_names: list[str] | None) -> dict[str, Any]:
    """The part's record from its shard records (in shard order): what the merge needs of it."""
    shards, errors = [], []
    for job in jobs:
        record = json.loads(_record_path(out, job.name).read_text())
        if "sha256" not in record:  # recorded by an older build_shards
            record.update(_fingerprint((out / job.name).read_bytes() if record["num_samples"] else b""))
        shards.append({"name": job.name, **{k: record[k] for k in ("num_samples", "size", "sha256")}})
        errors += record["errors"]
    span = part.shards(num_shards)
    layout = {"parts": part.count, "num_shards": num_shards}
    record = {**layout, "part": part.index, "first_shard": span.start, "end_shard": span.stop, "shards": shards,
              "errors": errors, "settings": settings.record(), "class_names": class_names}
    atomic_write_json(out / BUILD_DIR / PARTS, layout)
    atomic_write_json(out / BUILD_DIR / part.record_name, record)
    return record


def build(items: list[Item], settings: BuildSettings, class_names: list[str] | None, out: str | Path,
          workers: int = 1, part: Part = Part()) -> dict[str, Any]:
    """Build (or finish building) ``part`` of ``out`` from ``items`` and return its record; see the module
    docstring. ``merge(out)`` then makes the dataset."""
    out = Path(out)
    if not (out / BUILD_DIR / SETTINGS).exists() and any(out.glob("*.tar")):
        raise BuildError(f"{out} already holds .tar files not built by build_shards (no {BUILD_DIR}/{SETTINGS}): "
                         f"use a new --out, or delete those files")
    (out / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    with _exclusive(out, part):
        _check_settings(out, settings.record())
        jobs = _jobs(items, settings, class_names, out)
        mine = [jobs[k] for k in part.shards(len(jobs))]
        _remove_stale_temp(out, None if part.count == 1 else mine)
        pending = [job for job in mine if not _is_done(job)]
        total = sum(len(job.items) for job in mine)
        done = total - sum(len(job.items) for job in pending)
        with tqdm(total=total, initial=done, unit="video", desc="build_shards", file=sys.stderr,
                  mininterval=1.0, smoothing=0.1) as bar:
            _run_jobs(pending, workers, bar)
        return _write_part(out, part, mine, len(jobs), settings, class_names)


# ---------------------------------------------------------------- the merge


def read_build_json(location: str, name: str) -> dict | None:
    """``location``/.build/``name`` (a folder or URL), or None when there is none."""
    try:
        return json.loads(read_bytes(join(location, f"{BUILD_DIR}/{name}")))
    except ReadFailed as e:
        if e.missing:
            return None
        raise


def _numbers(parts: list[int], one: str = "", many: str = "") -> str:
    """'part 3' + ``one``, or 'parts 1, 3' + ``many`` (a verb that agrees)."""
    return f"part{'s' if len(parts) > 1 else ''} {', '.join(map(str, parts))}{many if len(parts) > 1 else one}"


def _missing(missing: list[int], parts: int) -> str:
    part = f"--part {missing[0]}" if len(missing) == 1 else "--part I"
    return (f"{_numbers(missing)} of {parts} missing (not finished): run {'them' if len(missing) > 1 else 'it'} "
            f"({part} --parts {parts}, or in Slurm: sbatch --array={','.join(map(str, missing))} "
            f"slurm/build_shards.sh ... --parts {parts}) and merge again")


def _inconsistent(layout: dict, records: dict[int, dict]) -> str | None:
    """What keeps the parts from being one dataset (the parts named), or None."""
    def span(i: int) -> tuple[int, int, int, int]:
        shards = Part(i, layout["parts"]).shards(layout["num_shards"])
        return layout["parts"], layout["num_shards"], shards.start, shards.stop

    bad = [i for i, r in records.items() if (r["parts"], r["num_shards"], r["first_shard"], r["end_shard"]) != span(i)]
    if bad:
        r = records[bad[0]]
        return (f"{_numbers(bad, ' covers', ' cover')} other shards than in a {layout['parts']}-part build of "
                f"{layout['num_shards']} shards (part {bad[0]}: shards {r['first_shard']}-{r['end_shard'] - 1} of "
                f"{r['num_shards']}, as part {r['part']} of {r['parts']}): rerun with --parts {layout['parts']} and "
                "the others' options")
    kinds = Counter(json.dumps([r["settings"], r["class_names"]], sort_keys=True) for r in records.values())
    usual, names = json.loads(kinds.most_common(1)[0][0])
    odd = [i for i, r in records.items() if [r["settings"], r["class_names"]] != [usual, names]]
    if not odd:
        return None
    r = records[odd[0]]
    diffs = _differing(usual, r["settings"])
    what = (f"{_option(diffs[0])} {r['settings'].get(diffs[0])!r}, not {usual.get(diffs[0])!r}{_also(diffs[1:])}"
            if diffs else f"class names {r['class_names']!r}, not {names!r}")
    return (f"{_numbers(odd, ' was', ' were')} built with other settings than "
            f"{_numbers([i for i in records if i not in odd])} ({what}): rebuild {'them' if len(odd) > 1 else 'it'} "
            "with the others' options (in a fresh --staging)")


def _absent_shards(location: str, records: dict[int, dict]) -> str | None:
    """The first part whose shard is not at ``location`` with the size it was built with, or None."""
    for i, r in records.items():
        for shard in r["shards"]:
            if shard["num_samples"] and remote_size(join(location, shard["name"])) != shard["size"]:
                return (f"part {i}: {shard['name']} is missing from {redact(location)} or has another size than it "
                        f"was built with: rerun part {i}")
    return None


def merge(location: str, *, if_complete: bool = False) -> BuildResult | None:
    """Check every part of the build at ``location`` (a folder or URL) and write its errors.jsonl, then its
    manifest.json (when anything was written): the bytes a one-part build writes. BuildError (one line, naming
    the parts) when a part is missing or disagrees with the others; with ``if_complete``, None while parts are
    missing (a part that is not the last)."""
    layout = read_build_json(location, PARTS)
    if layout is None:
        if if_complete:
            return None
        raise BuildError(f"cannot merge {redact(location)}: no part has finished there (no {BUILD_DIR}/{PARTS})")
    records = {i: read_build_json(location, Part(i, layout["parts"]).record_name) for i in range(layout["parts"])}
    missing = [i for i, r in records.items() if r is None]
    if missing and if_complete:
        return None
    problem = (_missing(missing, layout["parts"]) if missing else
               _inconsistent(layout, records) or _absent_shards(location, records))
    if problem:
        raise BuildError(f"cannot merge {redact(location)}: {problem}")
    ordered = [records[i] for i in range(layout["parts"])]
    errors = [e for r in ordered for e in r["errors"]]
    write_bytes(join(location, ERRORS), "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode())
    shards = [{"name": s["name"], "num_samples": s["num_samples"]} for r in ordered for s in r["shards"]
              if s["num_samples"]]
    manifest = None
    if shards:
        first = ordered[0]
        manifest = make_manifest(task=first["settings"]["task"], shards=shards, class_names=first["class_names"],
                                 build={"tool": TOOL, "settings": first["settings"]}, num_skipped=len(errors))
        write_bytes(join(location, MANIFEST), json_bytes(manifest))  # last: the dataset is complete
    return BuildResult(sum(s["num_samples"] for s in shards), len(errors), manifest)
