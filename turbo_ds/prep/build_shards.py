"""Build WebDataset shards (turbo_ds schema) from real videos.

    python data_prep/build_shards.py --task action_cls --manifest train.csv --video-root videos/ --out data/k400/train
    python data_prep/build_shards.py --task video_language --input-shards 'webvid/*.tar' --out data/webvid/train
    python data_prep/build_shards.py --task video_language --input-shards 'webvid/*.tar' --out s3://bucket/webvid/train

Input: a manifest (CSV with a header, or JSONL) plus the folder its relative paths start
from, or existing WebDataset/video2dataset shards (video member + txt/cls/json):
  action_cls      path,label[,start,end]               (labels -> ids in sorted order;
                                                        integer labels are the ids)
  video_language  path,caption                         (repeat a path for more captions;
                                                        JSONL may give "caption": [...])
  long_video      path,label[,start,end][,segments]    (seconds; segments: JSON list of
                                                        {"start","end","label"})

Each video is re-encoded to H.264 mp4 (resampled by timestamps to --fps, downscaled to
--short-side, cut to --max-seconds, a keyframe every --gop frames; audio dropped unless
--keep-audio), or stored as it is with --no-transcode; --for-config RECIPE picks the rate, keyframe
interval and short side that recipe samples (16x4 dense from 30 fps: 7.5 fps, a keyframe every 8
frames, the model's crop size as short side), so a training clip decodes only the frames it uses.
Shard k holds manifest items [k*S, (k+1)*S) (after --shuffle's fixed reordering, when given), so
the output is byte-identical for any --workers. A killed run resumes when started again with the
same command. Unusable rows (missing file, undecodable
video, missing field) are skipped and listed in OUT/errors.jsonl; the run ends with
"N written, M skipped" and exits 1 only when nothing was written.

A URL --out (s3://, gs://, or http(s):// on a server that accepts PUT) is built in a local
staging folder (--staging) and then uploaded: the shards and errors.jsonl first, manifest.json
last, so a reader never sees a manifest before its shards. A rerun resumes the build and uploads
only what the store lacks (same name and size). Delete the staging folder once it is uploaded.

Many machines: --part I --parts N (in a Slurm array task: SLURM_ARRAY_TASK_ID and
SLURM_ARRAY_TASK_COUNT) builds only part I of the shards, into a folder all parts share or
the same URL, resumable on its own; the part that finishes last merges them (manifest.json,
errors.jsonl), as does `build_shards.py --merge OUT`, which refuses, naming them, parts that
are missing or were built with other settings. The result has the bytes of a one-part build.
slurm/build_shards.sh runs this as an array job.

    sbatch --array=0-63%16 slurm/build_shards.sh --task video_language --manifest webvid.csv --out /shared/webvid/train
    python data_prep/build_shards.py --merge /shared/webvid/train
"""

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from turbo_ds.config import ConfigError, load_config
from turbo_ds.data.locations import is_remote, join, redact
from turbo_ds.data.shards import MANIFEST
from turbo_ds.data.transport import ReadFailed, delete, remote_size, write_bytes
from turbo_ds.prep.manifest_rows import (ROWS, TASKS, ManifestError, assign_classes, read_class_names,
                                         read_input_shard_items, read_manifest_items)
from turbo_ds.prep.shard_builder import (BUILD_DIR, ERRORS, PARTS, BuildError, BuildResult, BuildSettings, Part, build,
                                         merge, read_build_json)
from turbo_ds.prep.transcode import TranscodeSettings, recipe_encoding

ENCODING_OPTIONS = ("fps", "short_side", "max_seconds", "crf", "gop", "keep_audio")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, help="what the rows are for (required to build)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="CSV (with a header) or JSONL (.jsonl) listing the videos")
    src.add_argument("--input-shards", metavar="DIR_OR_GLOB",
                     help="existing shards to re-shard/re-encode: a folder of .tar files or a quoted glob")
    src.add_argument("--merge", metavar="OUT",
                     help="only merge the finished parts of the build at OUT (a folder or URL): check them, write "
                          "manifest.json; refuses, naming them, parts missing or built with other settings")
    p.add_argument("--video-root", type=Path,
                   help="folder the manifest paths are relative to (default: the manifest's folder)")
    p.add_argument("--out",
                   help="output dataset folder (created; rerun to resume), or a URL: s3://, gs://, or http(s):// "
                        "on a server that accepts PUT (built in --staging, then uploaded, manifest.json last); "
                        "required to build")
    p.add_argument("--staging", type=Path,
                   help="with a URL --out: the local folder to build in before uploading (default: "
                        "TMPDIR/turbo_ds_build/<hash of the URL>); rerun with the same one to resume")
    p.add_argument("--class-names", type=Path,
                   help="fixed class list: a text file (one name a line) or another dataset folder/manifest.json, "
                        "so that e.g. train and val share label ids (default: the sorted labels of this manifest)")
    p.add_argument("--shard-size", type=int, default=256,
                   help="videos per shard (default 256); the main process holds about one shard's bytes in memory")
    p.add_argument("--shuffle", action="store_true",
                   help="shuffle the manifest's rows (fixed seed, so a rerun resumes) before cutting shards: "
                        "a manifest grouped by label otherwise gives shards of one or two classes each")
    p.add_argument("--prefix", default="shard", help="shard file prefix: PREFIX-000000.tar (default 'shard')")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel processes, one video each at a time (default: CPU count); never changes the output")
    parts = p.add_argument_group("parts (one build on many machines; never changes the output)")
    parts.add_argument("--part", type=int, metavar="I",
                       help="build only part I (from 0) of the shards (default: $SLURM_ARRAY_TASK_ID, else 0)")
    parts.add_argument("--parts", type=int, metavar="N",
                       help="how many parts the build is cut into (default: $SLURM_ARRAY_TASK_COUNT, else 1); "
                            "the part that finishes last merges them")
    enc = p.add_argument_group("encoding (default: re-encode to H.264 yuv420p mp4)")
    enc.add_argument("--for-config", type=Path, metavar="RECIPE",
                     help="store videos as the recipe YAML samples them (e.g. configs/k400_vitb.yaml: 16x4 dense -> "
                          "--fps 7.5 --gop 8 --short-side 224); explicit --fps/--gop/--short-side win")
    enc.add_argument("--fps", type=float, help="output frame rate (default: the source rate, at most 30)")
    enc.add_argument("--short-side", type=int,
                     help="downscale so the shorter side is this many pixels, keeping the aspect ratio and even "
                          "sizes; never upscales; 0 keeps the size (default 256)")
    enc.add_argument("--max-seconds", type=float, help="keep at most this many seconds of each video (default: all)")
    enc.add_argument("--crf", type=int, help="x264 constant rate factor, lower is better quality (default 23)")
    enc.add_argument("--gop", type=int, help="frames between keyframes (default: one second's worth)")
    enc.add_argument("--keep-audio", action="store_true", default=None,
                     help="re-encode the first audio track as AAC (default: audio is dropped)")
    enc.add_argument("--no-transcode", action="store_true",
                     help="store each video's bytes as they are (any container, in the 'mp4' member; "
                          "json records fps/size/frames probed from it); start/end ranges are recorded, not cut")
    return p


def _transcode_settings(a: argparse.Namespace, p: argparse.ArgumentParser) -> TranscodeSettings | None:
    given = {k: getattr(a, k) for k in ENCODING_OPTIONS if getattr(a, k) is not None}
    if a.no_transcode:
        options = ", ".join([*("--" + k.replace("_", "-") for k in given), *["--for-config"] * bool(a.for_config)])
        if options:
            p.error(f"--no-transcode stores videos unchanged; drop {options}")
        return None
    checks = {"fps": lambda v: v > 0, "short_side": lambda v: v >= 0, "max_seconds": lambda v: v > 0,
              "crf": lambda v: 0 <= v <= 51, "gop": lambda v: v >= 1}
    for key, ok in checks.items():
        if key in given and not ok(given[key]):
            p.error(f"--{key.replace('_', '-')} {given[key]} is out of range")
    if a.for_config:
        try:
            given = {**recipe_encoding(load_config(a.for_config)), **given}
        except ConfigError as e:
            p.error(f"--for-config {a.for_config}: {e}")
    return TranscodeSettings(**given)


def _inputs(a: argparse.Namespace):
    """(items, input identity for the saved settings, video root)."""
    if a.manifest is not None:
        items = read_manifest_items(a.manifest, a.task)
        root = (a.video_root or a.manifest.parent).resolve()
        if not root.is_dir():
            raise ManifestError(f"--video-root {root} is not a folder")
        identity = (("manifest", str(a.manifest.resolve())), ("manifest_sha256", _sha256(a.manifest)))
        return items, identity, str(root)
    items, tars = read_input_shard_items(a.input_shards, a.task)
    signature = hashlib.sha256("".join(f"{t.resolve()}:{t.stat().st_size}\n" for t in tars).encode()).hexdigest()
    return items, (("input_shards", a.input_shards), ("input_shards_sha256", signature)), None


def grouped_by_label(items: list, shard_size: int) -> bool:
    """Whether the labelled ``items`` come in runs of one label long enough that a shard holds few classes:
    a loader's shuffle buffer (a few hundred samples) then mixes only neighbouring classes and every
    training batch is nearly one class, so the model learns nothing."""
    labels = [it.label for it in items if it.error is None and it.label is not None]
    if len(labels) <= shard_size or len(set(labels)) < 2:
        return False
    runs = 1 + sum(a != b for a, b in zip(labels, labels[1:]))
    return len(labels) / runs > 8  # shuffled rows: runs of about 1 + 1/(classes - 1)


def _staging(a: argparse.Namespace) -> Path:
    if a.staging is not None:
        return a.staging
    digest = hashlib.sha256(a.out.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "turbo_ds_build" / digest


def check_writable(url: str) -> None:
    """Fail before the build, not after it, when the store refuses uploads (a probe object, then removed)."""
    probe = join(url, ".turbo_ds_upload_probe")
    write_bytes(probe, b"build_shards upload check\n")
    delete(probe)


def upload(folder: Path, url: str, names: list[str], last: list[str], keep_same_size: bool = True) -> int:
    """Copy ``names`` from ``folder`` to ``url`` (with ``keep_same_size``, those the store holds already with the
    same size are kept), then ``last``, which say that the rest is complete; returns how many files were sent."""
    sent = 0
    for name in tqdm(names, unit="file", desc="upload", file=sys.stderr, mininterval=1.0):
        target = join(url, name)
        if not keep_same_size or remote_size(target) != (folder / name).stat().st_size:
            write_bytes(target, (folder / name).read_bytes())
            sent += 1
    for name in last:
        write_bytes(join(url, name), (folder / name).read_bytes())
    return sent + len(last)


def upload_part(folder: Path, url: str, part: Part, record: dict) -> None:
    """A part's shards, then the records that say they are there. A shard is kept only when this part's
    record at ``url`` lists the same bytes (a rerun after the upload): sizes alone do not tell a shard from
    one built with other settings (tar files come in 10 kB blocks)."""
    before = {s["name"]: s for s in (read_build_json(url, part.record_name) or {"shards": []})["shards"]}
    names = [s["name"] for s in record["shards"] if s["num_samples"] and (
        before.get(s["name"]) != s or remote_size(join(url, s["name"])) != s["size"])]
    upload(folder, url, names, [f"{BUILD_DIR}/{PARTS}", f"{BUILD_DIR}/{part.record_name}"], keep_same_size=False)


def _part(a: argparse.Namespace, p: argparse.ArgumentParser) -> Part:
    """This run's part, from --part/--parts or the Slurm array task."""
    env = os.environ
    index, count = a.part, a.parts
    source = ["--part", "--parts"]
    if index is None and "SLURM_ARRAY_TASK_ID" in env:
        index, source[0] = int(env["SLURM_ARRAY_TASK_ID"]), "SLURM_ARRAY_TASK_ID"
    if count is None and "SLURM_ARRAY_TASK_COUNT" in env:
        count, source[1] = int(env["SLURM_ARRAY_TASK_COUNT"]), "SLURM_ARRAY_TASK_COUNT"
    index, count = index or 0, count or 1
    if count < 1 or not 0 <= index < count:
        p.error(f"part {index} ({source[0]}) of {count} ({source[1]}) does not exist: parts run from 0 to N-1 "
                f"(sbatch --array=0-{count - 1}, or give --part I --parts N, e.g. --parts N when rerunning one task)")
    return Part(index, count)


def _merge_only(location: str) -> int:
    try:
        result = merge(location)
    except BuildError as e:
        print(f"build_shards: error: {e}", file=sys.stderr)
        return 2
    except ReadFailed as e:
        print(f"build_shards: error: cannot read the parts at {redact(location)}: {e}", file=sys.stderr)
        return 2
    return _report(result, location, "merged: ")


def _report(result: BuildResult, location: str, prefix: str = "", start: float | None = None) -> int:
    """Print 'N written, M skipped'; status 1 when nothing was written."""
    took = f", {time.time() - start:.1f} s" if start is not None else ""
    errors = join(location, ERRORS)
    print(f"{prefix}{result.written} written, {result.skipped} skipped ({redact(location)}{took}"
          f"{'; see ' + redact(errors) if result.skipped else ''})")
    if not result.written:
        print(f"build_shards: nothing was written; the reasons are in {redact(errors)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    if a.merge is not None:
        given = [opt for opt, v in (("--task", a.task), ("--out", a.out), ("--part", a.part), ("--parts", a.parts))
                 if v is not None]
        if given:
            p.error(f"--merge OUT merges what the parts wrote there; drop {', '.join(given)}")
        return _merge_only(a.merge)
    if a.task is None or a.out is None:
        p.error("--task and --out are required to build")
    part = _part(a, p)
    remote = is_remote(a.out)
    if a.staging is not None and not remote:
        p.error("--staging is for a URL --out (a local --out is built in place)")
    out = _staging(a) if remote else Path(a.out)
    if a.shard_size < 1 or a.workers < 1:
        p.error("--shard-size and --workers must be at least 1")
    transcode = _transcode_settings(a, p)
    start = time.time()
    try:
        items, identity, root = _inputs(a)
        if a.shuffle:
            random.Random(0).shuffle(items)
            items = [replace(it, index=i) for i, it in enumerate(items)]  # the index is the build order
            identity += (("shuffle", True),)  # another order is another output: a rerun must not mix them
        elif grouped_by_label(items, a.shard_size):
            print("build_shards: warning: the manifest lists videos grouped by label, so each shard will hold "
                  "few classes and training batches too; rerun with --shuffle (or shuffle the rows yourself)",
                  file=sys.stderr)
        given = read_class_names(a.class_names) if a.class_names else None
        items, class_names = (items, None) if ROWS[a.task].captions else assign_classes(items, given)
        settings = BuildSettings(task=a.task, inputs=identity, video_root=root, shard_size=a.shard_size,
                                 prefix=a.prefix, transcode=transcode,
                                 class_names=tuple(given) if given is not None else None)
        if remote:
            check_writable(a.out)
        record = build(items, settings, class_names, out, workers=a.workers, part=part)
        if part.count == 1:  # the whole build: the dataset at once, then its upload
            result = merge(str(out))
            if remote and result.written:
                names = [s["name"] for s in result.manifest["shards"]] + [ERRORS]
                sent = upload(out, a.out, names, [MANIFEST])
                print(f"uploaded {sent} files to {redact(a.out)} (built in {out}; delete it when no longer needed)")
            return _report(result, a.out, start=start)
        if remote:
            upload_part(out, a.out, part, record)
        first, end, total = record["first_shard"], record["end_shard"], record["num_shards"]
        shards = (f"shards {first}-{end - 1} of {total}" if end > first else
                  f"no shard of {total}: more parts than shards")
        print(f"part {part.index} of {part.count} ({shards}): {sum(s['num_samples'] for s in record['shards'])} "
              f"written, {len(record['errors'])} skipped ({time.time() - start:.1f} s)")
        result = merge(a.out, if_complete=True)  # the last part to finish merges
        if result is None:
            print(f"other parts are still to finish; the last one merges them (or: build_shards.py --merge "
                  f"{redact(a.out)})")
            return 0
        return _report(result, a.out, f"all {part.count} parts done, merged: ")
    except (ManifestError, BuildError) as e:
        print(f"build_shards: error: {e}", file=sys.stderr)
        return 2
    except ReadFailed as e:
        print(f"build_shards: error: cannot upload to --out: {e}; build into a local folder and copy it, or use a "
              "store that accepts uploads (s3://, gs://, an http server with PUT enabled, e.g. nginx dav_methods PUT)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
