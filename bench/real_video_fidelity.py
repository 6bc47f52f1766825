#!/usr/bin/env python
"""Does Turbo keep accuracy on real video? Keep 0.25 vs 1.0 on a motion task cut from real footage.

    bash bench/fetch_real_videos.sh /tmp/real_videos              # 16 real files, sha256-checked (never commit them)
    python bench/real_video_fidelity.py --videos /tmp/real_videos --json fidelity.json
    python bench/real_video_fidelity.py --videos /tmp/real_videos --ablation --budget-s 180

The task (built once, cached in --cache): 16-frame 64x64 clips cut from every source video, whose
label only motion tells apart. Eight classes of two kinds:

  camera pans   pan_left, pan_right, pan_up, pan_down   (a 64x64 window sliding 2 px a frame)
  playback      forward_1x, forward_2x, reverse_1x, reverse_2x   (a fixed window; 1x = 15 frames/s
                                                                   of source time, 2x = 30)

A still frame gives none of them away: the window's content is real footage either way. Train and
val are split by time inside each source (train clips end before 70% of its duration, val clips
start after it), so no source frame is in both. Clips become shards through our own
``build_shards.py``. Then the real trainer (``turbo_ds/train.py``, 1 rank, DeepSpeed) trains keep
0.25 and keep 1.0 at equal wall-clock and at equal steps (``bench/turbo_vs_full.py``); with
--ablation, each setting of ABLATION (keep 0.25) at equal wall-clock instead.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

from turbo_vs_full import REPO, add_arguments, compare, train_for, write_ds_config

from turbo_ds.fileio import atomic_write_json
from turbo_ds.prep.transcode import encode_mp4

FRAMES, SIZE, FPS = 16, 64, 15  # clip length, side and frame rate: the recipe's model input
DECODE_SHORT_SIDE = 96  # sources are downscaled to this first; the window moves within it
PAN_PX = 2  # window shift per frame: 30 px over a clip, within the 96 px short side
SPEEDS = {"1x": 1, "2x": 2}  # source frames at FPS advanced per clip frame
TRAIN_FRACTION = 0.7
CLIPS = {"train": 120, "val": 30}  # per class
CLASSES = [f"pan_{d}" for d in ("left", "right", "up", "down")] + \
    [f"{d}_{s}" for d in ("forward", "reverse") for s in SPEEDS]
VERSION = 3  # bump when the task changes: the cache is keyed by it

# keep 0.25, equal wall-clock: what the recipe's defaults came from ("lr=F" scales the JSON's lr by F)
ABLATION = {
    "recipe": [],
    "strategy tube": ["turbo.strategy=tube"],
    "strategy motion": ["turbo.strategy=motion"],
    "keep ramp 0.25 -> 0.5": ["turbo.schedule=linear", "turbo.keep_ratio_end=0.5"],
    "full-token tail, 30 steps": ["turbo.full_token_steps=30"],
    "label smoothing 0.1": ["train.label_smoothing=0.1"],
    "crop scale [0.4, 1]": ["data.crop_scale=[0.4,1.0]"],
    "no warmup": ["train.warmup_steps=0"],
    "lr x0.5": ["lr=0.5"],
    "lr x2": ["lr=2"],
}


def resampled(path: Path) -> np.ndarray | None:
    """Every frame of ``path`` at FPS (nearest earlier frame by timestamp), short side DECODE_SHORT_SIDE,
    (T, H, W, 3) uint8; None when the file has no decodable video."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            times, frames = [], []
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                w, h = frame.width, frame.height
                scale = DECODE_SHORT_SIDE / min(w, h)
                size = (round(w * scale / 2) * 2, round(h * scale / 2) * 2)
                frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
                times.append(frame.time)
    except (av.FFmpegError, IndexError):
        return None
    if len(frames) < 2:
        return None
    times = np.array(times) - times[0]
    grid = np.arange(0, times[-1], 1 / FPS)  # the source on a FPS time grid
    return np.stack(frames)[np.searchsorted(times, grid, side="right") - 1]


def cut(video: np.ndarray, label: str, split: str, rng: np.random.Generator) -> np.ndarray | None:
    """One (FRAMES, SIZE, SIZE, 3) clip of ``label`` from ``video``'s ``split`` part; None if it does not fit."""
    n, h, w, _ = video.shape
    boundary = int(n * TRAIN_FRACTION)
    lo, hi = (0, boundary) if split == "train" else (boundary, n)
    speed = SPEEDS.get(label.rsplit("_", 1)[-1], 1)
    span = (FRAMES - 1) * speed + 1
    if hi - lo < span:
        return None
    first = int(rng.integers(lo, hi - span + 1))
    times = first + speed * np.arange(FRAMES)  # (FRAMES,) source frames
    if label.startswith("reverse"):
        times = times[::-1]
    steps = np.arange(FRAMES) * PAN_PX
    moves = {"pan_left": (0, -1), "pan_right": (0, 1), "pan_up": (-1, 0), "pan_down": (1, 0)}
    dy, dx = moves.get(label, (0, 0))
    travel_y, travel_x = abs(dy) * steps[-1], abs(dx) * steps[-1]
    if h - SIZE < travel_y or w - SIZE < travel_x:
        return None
    y0 = int(rng.integers(0, h - SIZE - travel_y + 1)) + (travel_y if dy < 0 else 0)
    x0 = int(rng.integers(0, w - SIZE - travel_x + 1)) + (travel_x if dx < 0 else 0)
    ys, xs = y0 + dy * steps, x0 + dx * steps  # (FRAMES,) window corners
    return np.stack([video[t, y:y + SIZE, x:x + SIZE] for t, y, x in zip(times, ys, xs)])


def build_task(videos: Path, cache: Path, seed: int = 0) -> Path:
    """The task's ``train``/``val`` shards in ``cache`` (built once per sources, seed and VERSION); returns ``cache``."""
    sources = sorted(p for p in videos.rglob("*") if p.is_file() and p.name != "SOURCES.txt")
    if not sources:
        sys.exit(f"no videos under {videos}: run `bash bench/fetch_real_videos.sh {videos}` first")
    key = hashlib.sha256(json.dumps([VERSION, seed, [(str(p.relative_to(videos)), p.stat().st_size)
                                                     for p in sources]]).encode()).hexdigest()[:12]
    root, stamp = cache, cache / "task.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        print(f"task: cached in {root}", flush=True)
        return root
    shutil.rmtree(root, ignore_errors=True)  # another version or an interrupted build: start clean
    print(f"task: decoding {len(sources)} source videos ...", flush=True)
    decoded = {}
    for path in sources:
        video = resampled(path)
        name = str(path.relative_to(videos))
        print(f"  {name}: " + ("not decodable, skipped" if video is None else
                               f"{len(video) / FPS:.1f} s, {video.shape[2]}x{video.shape[1]}"), flush=True)
        if video is not None:
            decoded[name] = video
    rng = np.random.default_rng(seed)
    for split, per_class in CLIPS.items():
        clips = root / "clips" / split
        clips.mkdir(parents=True, exist_ok=True)
        rows, names = [], sorted(decoded)
        for label in CLASSES:
            fits = [n for n in names if cut(decoded[n], label, split, np.random.default_rng(0)) is not None]
            if not fits:
                sys.exit(f"no source video is long or large enough for a {split} clip of {label}")
            for i in range(per_class):  # sources in turn, so every source serves every label it fits
                source = fits[i % len(fits)]
                clip = cut(decoded[source], label, split, rng)
                file = f"{label}_{i:04d}.mp4"
                (clips / file).write_bytes(encode_mp4(clip, fps=FPS))
                rows.append({"path": file, "label": label, "source": source})
        with open(clips / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["path", "label", "source"])
            writer.writeheader()
            writer.writerows(rows)
        cmd = [sys.executable, "data_prep/build_shards.py", "--task", "action_cls", "--manifest",
               str(clips / "manifest.csv"), "--out", str(root / split), "--fps", str(FPS), "--short-side", str(SIZE),
               "--shard-size", "128", "--shuffle"]  # rows come grouped by label
        if split != "train":
            cmd += ["--class-names", str(root / "train")]  # the same label ids
        print(f"task: {split}: {len(rows)} clips -> shards", flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    atomic_write_json(stamp, {"key": key, "sources": list(decoded), "classes": CLASSES})  # last: marks it complete
    return root


def ablation(args: argparse.Namespace, tmp: Path) -> dict:
    """ABLATION's settings (keep 0.25) at equal wall-clock: setting -> top-1."""
    table = {}
    for name, sets in ABLATION.items():
        run_args = argparse.Namespace(**vars(args))
        for factor in (float(s.removeprefix("lr=")) for s in sets if s.startswith("lr=")):  # an lr is in the JSON
            base = json.loads(Path(args.ds_config).read_text())["optimizer"]["params"]["lr"]
            run_args.ds_config = write_ds_config(args, tmp, base * factor)
        sets = tuple(s for s in sets if not s.startswith("lr="))
        run = table[name] = train_for(args.budget_s, tmp / f"ablation_{len(table)}", run_args, 0.25, sets)
        print(f"ablation | {name:26s} | {run['steps']:5d} steps | {run['wall_s']:5.0f} s | top-1 {run['top1']:.3f}",
              flush=True)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, "configs/real_small.yaml", budget_s=300, steps=600, calibration_steps=60)
    p.add_argument("--videos", type=Path, required=True, help="folder written by bench/fetch_real_videos.sh")
    p.add_argument("--cache", type=Path, default=REPO / "data" / "real_fidelity", help="where the task's shards go")
    p.add_argument("--ablation", action="store_true", help="run the ablation table instead of keep 0.25 vs 1.0")
    args = p.parse_args()
    root = build_task(args.videos, args.cache)
    args.set = [f"data.train={root / 'train'}", f"data.val={root / 'val'}", *args.set]
    chance = 1 / len(CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        args.ds_config = write_ds_config(args, Path(tmp))
        if args.ablation:
            table = ablation(args, Path(tmp))
            result = {"ablation": {k: v["top1"] for k, v in table.items()}, "budget_s": args.budget_s, "runs": table}
        else:
            result = compare(args, Path(tmp))
    result.update(chance=chance, classes=CLASSES, task=str(root))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "classes")}, default=str))
    if args.json:
        atomic_write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
