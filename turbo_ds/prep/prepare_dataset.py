"""Build a standard dataset's shards from its own annotation files, in one command.

    python data_prep/prepare_dataset.py kinetics400 --annotations k400/annotations/train.csv \\
        --video-root k400/train --split train --out data/k400/train --workers 16
    python data_prep/prepare_dataset.py ssv2 --annotations ssv2/labels --video-root ssv2/videos \\
        --split val --out data/ssv2/val

Reads the dataset's annotations, keeps one split, finds every listed video under
--video-root (one walk of the tree; names as the dataset distributes them, any video
extension, in any sub-folder) and writes into OUT:
  build_manifest.jsonl   the rows handed to the shard builder (missing videos included:
                         the builder lists them in OUT/errors.jsonl)
  class_names.json       the class names in the dataset's official order (classification)
then runs the shard builder (data_prep/build_shards.py) on them: every other option
(--workers, --shard-size, --fps, --short-side, --part/--parts, ...) is the builder's. It ends with
"<name> <split>: N listed / M found / K written". Rerunning the same command resumes; once
videos appeared or vanished under --video-root the listing differs, and a rerun into the
same OUT stops and says so (build into a new --out). In a Slurm array task (slurm/build_shards.sh)
each task builds its part of OUT; the last part to finish merges them (build_shards.py --merge OUT).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from turbo_ds.data.shards import MANIFEST
from turbo_ds.fileio import atomic_write_bytes, atomic_write_json
from turbo_ds.prep import build_shards
from turbo_ds.prep.datasets import DATASETS, AnnotationError, VideoIndex, class_count_warning, manifest_rows
from turbo_ds.prep.manifest_rows import ROWS, ManifestError
from turbo_ds.prep.shard_builder import BUILD_DIR, SETTINGS

BUILD_MANIFEST = "build_manifest.jsonl"
CLASS_NAMES = "class_names.json"
OWN_OPTIONS = ("--task", "--manifest", "--input-shards")  # the builder's options this tool sets itself


def _datasets_help() -> str:
    lines = ["datasets (NAME: task; splits; --annotations):"]
    for name, ds in DATASETS.items():
        lines.append(f"  {name:<12} {ds.task}; {', '.join(ds.splits)}\n  {'':<12} {ds.annotations}")
    builder = [opt for action in build_shards._parser()._actions for opt in action.option_strings[:1]
               if opt not in (*OWN_OPTIONS, "-h", "--out", "--video-root", "--class-names", "--merge")]
    lines += ["", "shard builder options (passed through; see data_prep/build_shards.py --help):",
              "  " + " ".join(builder)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=_datasets_help(), allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", choices=DATASETS, help=f"the dataset: {', '.join(DATASETS)}")
    p.add_argument("--annotations", required=True, type=Path,
                   help="the dataset's annotation file or folder, as distributed (see the list below)")
    p.add_argument("--video-root", required=True, type=Path, help="folder holding the videos (searched recursively)")
    p.add_argument("--split", required=True, help="which split to build (see the list below)")
    p.add_argument("--out", required=True, type=Path, help="output dataset folder (created; rerun to resume)")
    p.add_argument("--class-names", type=Path,
                   help="the class list to use instead of the official order read from the annotations "
                        "(a text file, or a dataset folder / manifest.json)")
    return p


def _check_unchanged(out: Path, manifest: bytes) -> None:
    """A folder built from another listing must not have its build manifest overwritten: say so first."""
    settings = out / BUILD_DIR / SETTINGS
    if settings.is_file():
        built = json.loads(settings.read_text()).get("manifest_sha256")
        if built not in (None, hashlib.sha256(manifest).hexdigest()):
            raise AnnotationError(f"{out} was built from another listing (other annotations or split, or videos "
                                  f"added/removed under --video-root since): use a new --out, or delete {out} to "
                                  "rebuild it")


def _written(out: Path) -> int:
    manifest = out / MANIFEST
    return json.loads(manifest.read_text())["num_samples"] if manifest.is_file() else 0


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a, rest = p.parse_known_args(argv)
    ds = DATASETS[a.name]
    clash = [o for o in OWN_OPTIONS if any(r == o or r.startswith(o + "=") for r in rest)]
    if clash:
        p.error(f"{', '.join(clash)}: set by prepare_dataset from NAME and --annotations; drop it")
    if a.split not in ds.splits:
        p.error(f"--split {a.split}: {a.name} has the splits {', '.join(ds.splits)}")
    captions = ROWS[ds.task].captions
    if captions and a.class_names:
        p.error(f"--class-names: {a.name} is a captions dataset ({ds.task}), it has no classes")
    if not a.video_root.is_dir():
        p.error(f"--video-root {a.video_root} is not a folder")
    try:
        listing = ds.read(a.annotations, a.split)
        if not listing.videos:
            raise AnnotationError(f"{listing.source} lists no videos of split {a.split}")
        warning = None if captions or a.class_names else class_count_warning(a.name, listing)
        print(f"prepare_dataset: {a.name} {a.split}: {len(listing.videos)} videos listed in {listing.source}; "
              f"looking for them under {a.video_root}", file=sys.stderr)
        index = VideoIndex(a.video_root)
        found = manifest_rows(listing, index, ds)
        if found.cut and "--no-transcode" in rest:
            raise AnnotationError(f"{found.cut} videos are full source videos to cut to their annotated range; "
                                  "--no-transcode stores videos unchanged: drop --no-transcode")
        manifest = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in found.rows).encode()
        _check_unchanged(a.out, manifest)
    except ManifestError as e:  # AnnotationError, or a file read_records cannot use
        print(f"prepare_dataset: error: {e}", file=sys.stderr)
        return 2
    if warning:
        print(f"prepare_dataset: warning: {warning}", file=sys.stderr)
    if found.ambiguous:
        stem = found.ambiguous[0]
        print(f"prepare_dataset: warning: {len(found.ambiguous)} listed names match several files under "
              f"{a.video_root} and count as not found (e.g. {stem}: {', '.join(index.ambiguous[stem][:3])}); "
              "point --video-root at one split's folder", file=sys.stderr)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(a.out / BUILD_MANIFEST, manifest)
    args = ["--task", ds.task, "--manifest", str(a.out / BUILD_MANIFEST), "--video-root", str(a.video_root),
            "--out", str(a.out), *rest]
    if not captions:
        if a.class_names is None:
            atomic_write_json(a.out / CLASS_NAMES, {"dataset": a.name, "class_names": listing.class_names})
        args += ["--class-names", str(a.class_names or a.out / CLASS_NAMES)]
    status = build_shards.main(args)
    if status == 2:  # the builder refused to start; it said why
        return status
    listed = len(listing.videos)
    if status == 0 and not (a.out / MANIFEST).is_file():  # a part, not the last to finish: no total yet
        print(f"{a.name} {a.split}: {listed} listed / {found.found} found; the written count comes with the merge")
        return status
    written = _written(a.out)
    problems = [f"{n} {what}" for n, what in ((listed - found.found, "not found on disk"),
                                               (found.found - written, "found but unusable")) if n]
    detail = f" ({', '.join(problems)}: see {a.out / 'errors.jsonl'})" if problems else ""
    print(f"{a.name} {a.split}: {listed} listed / {found.found} found / {written} written{detail}")
    return status


if __name__ == "__main__":
    sys.exit(main())
