#!/usr/bin/env python
"""Clips/s of the full training loader next to a raw PyAV decode loop on the same clips.

    python bench/loader_speed.py --shards DIR_OR_GLOB --json out.json [--workers 2 --batches 100 --batch-size 8]
    python bench/loader_speed.py --make-long /tmp/long --json long.json [--sampling dense --stride 2]
    python bench/loader_speed.py --make-real /tmp/real --json real.json --model-clips-per-s 1800 --skip-raw
    python bench/loader_speed.py --shards URL --local DIR --json out.json     # a store vs the same shards on disk
    python bench/loader_speed.py --shards DIR --nginx --json out.json          # DIR served by nginx on loopback

Loader: TrainStream through make_loader with W workers (decode only the picked frames +
sample + crop/resize/normalise + collate), decoded cache off. Raw: W processes, each
decoding every frame of its share of the same clips with plain PyAV (``container.decode``
+ ``frame.to_ndarray(format="rgb24")``, default threading; no frame is kept, so a 10-minute
720p film costs one frame of memory, not 39 GB); also the same loop with the
loader's decoder settings ("tuned": shared RGB converter, ``--decode-threads``) for
reference. Runs alternate (raw, tuned, loader) ``--repeats`` times; medians are reported,
so load from other processes hits all three alike. CPU ms/clip (all processes' user +
system time) shows the work done, which other processes on the machine do not distort.
``--make-long DIR`` first writes 64-frame 128x128 clips with 1-s GOPs (gop 8 at 8 fps) to
DIR/train and benchmarks those. ``--make-real DIR`` writes clips as a user's shards hold
them: camera-like 480x360 30 fps sources (a panning textured scene, a moving object, sensor
noise) transcoded by build_shards' own ``transcode`` to 256 short side, a keyframe every 16
frames; with it the model input defaults to 16 x 224 with K400's dense 16x4 sampling.

The GPU user's units: decode cost per clip per core (CPU ms per clip of the loader, all
its processes' time) and, with ``--model-clips-per-s R`` (the clips/s one GPU's training
step consumes), the *cores per GPU needed* = R x CPU s per clip. ``--repeat-aug K`` loads with
``data.repeat_aug`` K (the figures stay per delivered clip); ``--randaug N M`` also times
``data.randaug`` {n: N, m: M}'s batched ops on the CPU (``randaug_cpu_ms_per_clip``; in training
they run on the GPU). ``--make-real DIR --config RECIPE`` writes the clips as ``build_shards.py
--for-config RECIPE`` stores them and loads them with the recipe's model and data settings; with
``--model-clips-per-s R`` it also prints ``delivered_speedup``: Turbo's speed-up at 12, 16 and 24
cores per GPU (min of the GPU's rate and cores x clips/s per core, keep 0.25 over keep 1.0, whose
rate the ViT-B/16 FLOP model scales from R).

Remote shards: ``--shards URL`` (https://, s3://, gs://, pipe:) times the loader reading
them (whole shards prefetched, ``--prefetch-shards``); raw decoding reads the same clips
first, so it measures decoding only. ``--local DIR`` adds loader runs on the same dataset
from disk, alternating with the URL runs, and reports URL / disk. ``--nginx`` serves the
``--shards`` folder through nginx on 127.0.0.1 (a temp config, stopped at the end;
``--limit-rate`` caps each connection, e.g. 2m, to act as a slower store) and compares it
with the folder itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import io
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from turbo_ds.config import DataConfig, ModelConfig, load_config  # noqa: E402
from turbo_ds.data.locations import is_remote, redact  # noqa: E402
from turbo_ds.data.shards import MANIFEST, read_manifest, shard_name, write_manifest, write_shard  # noqa: E402
from turbo_ds.data.source import ShardSource  # noqa: E402
from turbo_ds.data.streams import TrainStream, make_loader  # noqa: E402
from turbo_ds.data.transforms import RandAugment  # noqa: E402
from turbo_ds.data.transport import read_bytes  # noqa: E402
from turbo_ds.data.video import iter_frames  # noqa: E402
from turbo_ds.prep.demo import CLASS_NAMES, DemoSettings, render_clip  # noqa: E402
from turbo_ds.models.flops import transformer_flops  # noqa: E402
from turbo_ds.prep.transcode import TranscodeSettings, encode_mp4, recipe_encoding, transcode  # noqa: E402


def make_long_clips(folder: Path, clips: int, frames: int = 64, size: int = 128, gop: int = 8,
                    shard_size: int = 8) -> Path:
    """Demo-style clips, longer and larger, with a keyframe every ``gop`` frames (1 s at 8 fps)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings, shards = DemoSettings(frames=frames, size=size), []
    for k, start in enumerate(range(0, clips, shard_size)):
        samples = []
        for i in range(start, min(start + shard_size, clips)):
            label = i % len(CLASS_NAMES)
            video, _, _ = render_clip(np.random.default_rng([7, i]), label, settings)
            samples.append({"__key__": f"long{i:07d}", "mp4": encode_mp4(video, settings.fps, gop=gop), "cls": label})
        write_shard(folder / shard_name("long", k), samples)
        shards.append({"name": shard_name("long", k), "num_samples": len(samples)})
    write_manifest(folder, task="action_cls", shards=shards, class_names=CLASS_NAMES,
                   build={"tool": "bench/loader_speed.py", "frames": frames, "size": size, "gop": gop})
    return folder


def real_looking_frames(rng: np.random.Generator, frames: int, width: int = 480,
                        height: int = 360) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames: a camera panning over a textured scene (detail at several scales) with a moving
    object and sensor noise, so the codec spends bits and motion vectors as on real footage."""
    scene = np.zeros((2 * height, 2 * width, 3), np.float32)  # panned over with wrap-around: any length
    for cell, weight in ((64, 60.0), (16, 40.0), (4, 25.0)):  # coarse shapes, mid detail, fine texture
        grid = rng.uniform(-1, 1, (2 * height // cell + 1, 2 * width // cell + 1, 3)).astype(np.float32)
        scene += weight * np.repeat(np.repeat(grid, cell, 0), cell, 1)[:2 * height, :2 * width]
    scene += 128
    ys, xs = np.mgrid[:height, :width]
    for t in range(frames):
        rows, cols = np.arange(t // 2, t // 2 + height) % (2 * height), np.arange(2 * t, 2 * t + width) % (2 * width)
        frame = scene[np.ix_(rows, cols)]  # pan right and down
        cy, cx = height / 2 + height / 4 * np.sin(t / 15), width / 2 + width / 3 * np.cos(t / 20)
        frame[(ys - cy) ** 2 + (xs - cx) ** 2 < (height / 8) ** 2] = (220, 60, 40)  # a moving object
        frame += rng.normal(0, 3, frame.shape).astype(np.float32)  # sensor noise
        yield np.clip(frame, 0, 255).astype(np.uint8)


DEFAULT_REAL = TranscodeSettings(short_side=256, gop=16)  # as build_shards writes today's shards


def real_build(clips: int, seconds: float, shard_size: int, settings: TranscodeSettings, fps: int = 30) -> dict:
    """What ``make_real_clips`` records in the manifest: a folder built with other settings is rebuilt."""
    return {"tool": "bench/loader_speed.py --make-real", "clips": clips, "seconds": seconds, "fps": fps,
            "shard_size": shard_size, "short_side": settings.short_side, "gop": settings.gop,
            "stored_fps": settings.fps}


def make_real_clips(folder: Path, clips: int, seconds: float, fps: int = 30, shard_size: int = 8,
                    settings: TranscodeSettings = DEFAULT_REAL) -> Path:
    """Camera-like sources transcoded as build_shards does: by default 256 short side, a keyframe every 16 frames."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tar"):  # another build's shards
        old.unlink()
    build, shards = real_build(clips, seconds, shard_size, settings, fps), []
    for k, start in enumerate(range(0, clips, shard_size)):
        samples = []
        for i in range(start, min(start + shard_size, clips)):
            frames = np.stack(list(real_looking_frames(np.random.default_rng([9, i]), round(seconds * fps))))
            source = encode_mp4(frames, fps, crf=18)  # (T, H, W, 3) -> a camera original
            data, info = transcode(source, settings)
            samples.append({"__key__": f"real{i:07d}", "mp4": data, "json": info, "cls": i % len(CLASS_NAMES)})
            print(f"  clip {i + 1}/{clips}: {info['frames']} frames of {info['width']}x{info['height']}, "
                  f"{len(data) / 1e6:.2f} MB", flush=True)
        write_shard(folder / shard_name("real", k), samples)
        shards.append({"name": shard_name("real", k), "num_samples": len(samples)})
    write_manifest(folder, task="action_cls", shards=shards, class_names=CLASS_NAMES, build=build)
    return folder


def dataset_folder(spec: str) -> str:
    """A dataset folder or URL as given, or a temporary folder (links + manifest) for a glob of tar shards."""
    if is_remote(spec) or (Path(spec) / MANIFEST).is_file():
        return spec
    tars = sorted(glob.glob(spec))
    if not tars:
        sys.exit(f"--shards {spec}: neither a dataset folder with {MANIFEST} nor a glob matching tar shards")
    folder = Path(tempfile.mkdtemp(prefix="loader_speed_"))
    shards = []
    for path in tars:
        (folder / Path(path).name).symlink_to(Path(path).resolve())
        with tarfile.open(path) as tar:
            shards.append({"name": Path(path).name, "num_samples": sum(m.name.endswith(".mp4") for m in tar)})
    write_manifest(folder, task="action_cls", shards=shards, class_names=None)
    return str(folder)


def read_clips(location: str | Path, count: int) -> list[bytes]:
    clips = []
    for url in ShardSource(str(location)).shards:
        with tarfile.open(fileobj=io.BytesIO(read_bytes(url))) as tar:
            clips += [tar.extractfile(m).read() for m in tar if m.name.endswith(".mp4")]
        if len(clips) >= count:
            break
    return [clips[i % len(clips)] for i in range(count)]


def plain_decode(data: bytes) -> int:
    """Every frame to RGB with plain PyAV; each frame is dropped once converted (memory: one frame, on any video)."""
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for f in container.decode(video=0) if f.to_ndarray(format="rgb24") is not None)


def tuned_decode(data: bytes, threads: int = 1) -> int:
    """The same with the loader's decoder settings (and its bounds: huge frames are downscaled)."""
    return sum(1 for _ in iter_frames(data, threads))


def clip_shape(data: bytes) -> tuple[int, int, int]:
    """(frames, height, width) from the container's metadata (frames: 0 when it does not say)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return stream.frames, stream.codec_context.height, stream.codec_context.width


def cpu_seconds() -> float:
    """User + system time of this process and of its finished (joined) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _raw_worker(clips: list[bytes], decode, barrier, results) -> None:
    barrier.wait()
    start, frames = time.perf_counter(), sum(decode(c) for c in clips)
    results.put((time.perf_counter() - start, frames))


def raw_rate(clips: list[bytes], workers: int, decode) -> dict[str, float]:
    """Clips/s and frames/s of ``workers`` processes decoding their shares of ``clips`` in a tight loop."""
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_raw_worker, args=(clips[w::workers], decode, barrier, results))
             for w in range(workers)]
    cpu = cpu_seconds()
    for p in procs:
        p.start()
    done = [results.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(t for t, _ in done)  # the wall time until the slowest process finished
    return {"clips_per_s": len(clips) / elapsed, "frames_per_s": sum(f for _, f in done) / elapsed,
            "cpu_ms_per_clip": (cpu_seconds() - cpu) * 1e3 / len(clips)}


def loader_rate(data: DataConfig, model: ModelConfig, batch_size: int, batches: int, warmup: int) -> dict[str, float]:
    """Clips/s of a fresh loader after ``warmup`` batches (worker start-up excluded from the wall time).

    Its CPU time covers everything (start-up, warm-up, batches prefetched but never taken),
    so ``cpu_ms_per_clip`` slightly overstates the loader's cost.
    """
    cpu = cpu_seconds()
    batches_iter = iter(make_loader(TrainStream.from_config(data, model, 0, 1, batch_size, seed=0), data.num_workers))
    for _ in range(warmup):
        next(batches_iter)
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    elapsed = time.perf_counter() - start
    del batches_iter  # shut the workers down (and reap them) before the next raw run
    return {"clips_per_s": batches * batch_size / elapsed,
            "cpu_ms_per_clip": (cpu_seconds() - cpu) * 1e3 / ((warmup + batches) * batch_size)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="dataset folder (tar shards + manifest.json), a glob of tar shards, or a URL "
                                      "(https://, s3://, gs://, pipe:) of a dataset")
    src.add_argument("--make-long", metavar="DIR", help="write 64-frame 128x128 gop-8 clips to DIR/train and use them")
    src.add_argument("--make-real", metavar="DIR", help="write camera-like clips transcoded as build_shards does (256 "
                                                         "short side, keyframe every 16) to DIR/train and use them")
    p.add_argument("--json", required=True, help="write the figures here")
    p.add_argument("--workers", type=int, default=2, help="loader workers = raw decode processes")
    p.add_argument("--batches", type=int, default=100, help="timed batches per loader run (and clips for raw runs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 2 x workers)")
    p.add_argument("--repeats", type=int, default=3, help="alternating raw/loader runs; medians are reported")
    p.add_argument("--frames", type=int, default=16, help="model.num_frames")
    p.add_argument("--size", type=int, default=None, help="model.img_size (default: 224 with --make-real, else the "
                                                          "clips' size)")
    p.add_argument("--sampling", choices=["uniform", "dense"], help="default: dense with --make-real (K400's 16x4), "
                                                                     "else uniform")
    p.add_argument("--stride", type=int, default=4, help="data.frame_stride for dense sampling")
    p.add_argument("--decode-threads", type=int, default=1)
    p.add_argument("--long-clips", type=int, default=64, help="clips written by --make-long")
    p.add_argument("--real-clips", type=int, default=8, help="clips written by --make-real")
    p.add_argument("--real-seconds", type=float, default=10.0, help="length of the --make-real clips")
    p.add_argument("--real-shard-size", type=int, default=8, help="clips per shard written by --make-real (the "
                                                                   "loader uses at most one worker per shard)")
    p.add_argument("--model-clips-per-s", type=float, help="clips/s one GPU's training step consumes: prints the "
                                                            "loader cores that GPU needs")
    p.add_argument("--skip-raw", action="store_true", help="time only the loader (raw runs decode every frame of "
                                                           "every clip: slow on long clips)")
    p.add_argument("--local", metavar="DIR", help="the same dataset on local disk: also time the loader on it, "
                                                  "alternating with the --shards runs, and report the ratio")
    p.add_argument("--nginx", action="store_true",
                   help="serve the --shards folder with nginx on 127.0.0.1 and compare it with the folder itself")
    p.add_argument("--limit-rate", default=None, help="--nginx: nginx limit_rate per connection, e.g. 2m (bytes/s)")
    p.add_argument("--prefetch-shards", type=int, default=2, help="data.prefetch_shards for remote shards")
    p.add_argument("--repeat-aug", type=int, default=None, help="data.repeat_aug: training clips per decoded video "
                   "(the figures are per delivered clip; --batch-size must be a multiple)")
    p.add_argument("--randaug", type=float, nargs=2, metavar=("N", "M"),
                   help="also time data.randaug {n: N, m: M} on the CPU path (batched, as on the device), per clip")
    p.add_argument("--config", metavar="RECIPE", help="--make-real: store the clips as `build_shards.py --for-config "
                   "RECIPE` does and load them with its model and data settings (frames, size, sampling, stride, "
                   "repeat_aug unless --repeat-aug is given)")
    a = p.parse_args(argv)
    if a.config and not a.make_real:
        p.error("--config: with --make-real DIR (the clips are written as that recipe's shards are built)")
    if a.model_clips_per_s is not None and a.model_clips_per_s <= 0:
        p.error(f"--model-clips-per-s={a.model_clips_per_s}: must be > 0")

    if a.make_long:
        folder = str(Path(a.make_long) / "train")
        if not (Path(folder) / MANIFEST).is_file():
            make_long_clips(Path(folder), a.long_clips)
    elif a.make_real:
        folder = str(Path(a.make_real) / "train")
        settings = recipe_settings(a).get("settings", DEFAULT_REAL)  # --config: the recipe's shards
        build = real_build(a.real_clips, a.real_seconds, a.real_shard_size, settings)
        if not (Path(folder) / MANIFEST).is_file() or read_manifest(folder).get("build") != build:
            print(f"writing {a.real_clips} camera-like {a.real_seconds:g}-s clips to {folder}", flush=True)
            make_real_clips(Path(folder), a.real_clips, a.real_seconds, shard_size=a.real_shard_size,
                            settings=settings)
        a.size, a.sampling = a.size or 224, a.sampling or "dense"
    else:
        folder = dataset_folder(a.shards)
    if not a.nginx:
        return run(a, folder)
    if is_remote(folder):
        p.error("--nginx serves a local --shards folder")
    from tests.servers import Nginx  # the nginx the tests use: temp config, free port

    limit = f"limit_rate {a.limit_rate};" if a.limit_rate else ""
    with tempfile.TemporaryDirectory(prefix="loader_speed_nginx_") as tmp, \
            Nginx(Path(folder).resolve().parent, Path(tmp), f"location / {{ {limit} }}") as web:
        a.local, url = folder, f"{web.url}/{Path(folder).resolve().name}"
        print(f"serving {folder} at {url} with nginx" + (f", limit_rate {a.limit_rate}" if limit else ""))
        run(a, url)


def run(a: argparse.Namespace, folder: str) -> None:
    shards = len(ShardSource(folder).shards)
    a.workers_requested = a.workers
    if a.workers > shards:  # each loader worker reads whole shards: the training stream refuses idle workers
        print(f"--workers {a.workers}: the dataset has {shards} shard(s); using {shards} worker(s) (more shards, "
              f"e.g. --real-shard-size, give more workers)", flush=True)
        a.workers = shards
    clips = read_clips(a.local or folder, a.batches * a.batch_size)
    frames_per_clip, height, width = clip_shape(clips[0])
    size = a.size or min(height, width)
    a.sampling = a.sampling or "uniform"
    data = DataConfig(train=folder, val=folder, num_workers=a.workers, decoded_cache_clips=0,
                      sampling=a.sampling, frame_stride=a.stride, decode_threads=a.decode_threads, shuffle_buffer=64,
                      prefetch_shards=a.prefetch_shards, repeat_aug=a.repeat_aug or 1)
    local = dataclasses.replace(data, train=a.local, val=a.local) if a.local else None
    model = ModelConfig(num_frames=a.frames, img_size=size)
    warmup = 2 * max(1, a.workers) if a.warmup is None else a.warmup
    procs = max(1, a.workers)

    runs = {"loader": [], **({"loader_local": []} if local else {})}
    if not a.skip_raw:
        runs.update(raw=[], tuned=[])
    loaders = [("loader", data)] + ([("loader_local", local)] if local else [])
    for repeat in range(a.repeats):
        if not a.skip_raw:
            runs["raw"].append(raw_rate(clips, procs, plain_decode))
            runs["tuned"].append(raw_rate(clips, procs, functools.partial(tuned_decode, threads=a.decode_threads)))
        for name, config in loaders[::-1] if repeat % 2 else loaders:  # URL and disk take turns going first
            runs[name].append(loader_rate(config, model, a.batch_size, a.batches, warmup))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    loader = med["loader"]
    # One core's share: CPU time is the work done, whatever else runs on the machine (wall clips/s is not).
    per_core = 1e3 / loader["cpu_ms_per_clip"]
    result = {
        "loader_clips_per_s": loader["clips_per_s"],
        "loader_frames_per_s": loader["clips_per_s"] * a.frames,  # frames delivered (decoded: these + GOP lead-ins)
        "loader_cpu_ms_per_clip": loader["cpu_ms_per_clip"], "clips_per_s_per_core": per_core,
        "model_clips_per_s": a.model_clips_per_s,
        "cores_per_gpu": a.model_clips_per_s / per_core if a.model_clips_per_s else None,
        "workers": a.workers, "workers_requested": a.workers_requested, "shard_count": shards,
        "batch_size": a.batch_size, "batches": a.batches, "repeats": a.repeats,
        "frames": a.frames, "size": size, "sampling": a.sampling, "frame_stride": a.stride,
        "decode_threads": a.decode_threads, "clip_frames": frames_per_clip, "clip_hw": [height, width],
        "shards": redact(folder), "prefetch_shards": a.prefetch_shards, "runs": runs, "repeat_aug": a.repeat_aug or 1,
    }
    if a.model_clips_per_s:
        result["delivered_speedup"] = delivered_speedup(a.model_clips_per_s, per_core, a.frames, size)
    if a.randaug:
        result["randaug_cpu_ms_per_clip"] = randaug_cpu_ms(a.frames, size, int(a.randaug[0]), a.randaug[1])
    if local:
        result.update(local_loader_clips_per_s=med["loader_local"]["clips_per_s"], local=a.local,
                      remote_vs_local=loader["clips_per_s"] / med["loader_local"]["clips_per_s"])
    if not a.skip_raw:
        raw, tuned = med["raw"], med["tuned"]
        result.update({
            "raw_decode_clips_per_s": raw["clips_per_s"], "ratio": loader["clips_per_s"] / raw["clips_per_s"],
            "raw_decode_frames_per_s": raw["frames_per_s"],  # every frame of every clip
            "tuned_decode_clips_per_s": tuned["clips_per_s"],
            "ratio_vs_tuned": loader["clips_per_s"] / tuned["clips_per_s"],
            "raw_decode_cpu_ms_per_clip": raw["cpu_ms_per_clip"], "tuned_decode_cpu_ms_per_clip": tuned["cpu_ms_per_clip"]})
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"clips: {frames_per_clip} frames of {height}x{width}; model {a.frames} frames at {size} px, "
          f"{a.sampling} sampling; {a.workers} workers / processes; medians of {a.repeats} runs")
    print(f"{'':30s}{'clips/s':>9s}{'frames/s':>10s}{'vs raw':>8s}{'CPU ms/clip':>13s}")
    rows = [] if a.skip_raw else [("raw PyAV decode (all frames)", raw, raw["frames_per_s"]),
                                  ("tuned decode (all frames)", tuned, tuned["frames_per_s"])]
    rows.append(("loader (picked frames)", loader, result["loader_frames_per_s"]))
    if local:
        rows.append(("loader, local disk", med["loader_local"], med["loader_local"]["clips_per_s"] * a.frames))
    for name, m, frames_s in rows:
        vs_raw = "-" if a.skip_raw else f"{m['clips_per_s'] / raw['clips_per_s']:.2f}x"
        print(f"{name:30s}{m['clips_per_s']:9.1f}{frames_s:10.0f}{vs_raw:>8s}{m['cpu_ms_per_clip']:13.2f}")
    if local:
        print(f"loader from {redact(folder)} / from local disk: {result['remote_vs_local']:.2f}x "
              f"(prefetch_shards {a.prefetch_shards})")
    print(f"loader: {loader['cpu_ms_per_clip']:.1f} CPU ms per {a.frames}x{size} clip = {per_core:.1f} clips/s per core")
    if a.model_clips_per_s:
        print(f"cores per GPU needed at {a.model_clips_per_s:g} model clips/s: {result['cores_per_gpu']:.1f}")
    if a.model_clips_per_s:
        print("delivered Turbo speed-up, keep 0.25 over keep 1.0 (min of the GPU's rate and cores x clips/s per core): "
              + ", ".join(f"{c} cores per GPU {x:.2f}x" for c, x in result["delivered_speedup"].items()))
    if a.randaug:
        print(f"RandAugment n={int(a.randaug[0])} m={a.randaug[1]:g} on the CPU path: "
              f"{result['randaug_cpu_ms_per_clip']:.1f} CPU ms per {a.frames}x{size} clip (on the GPU in training)")


def recipe_settings(a: argparse.Namespace) -> dict:
    """--config RECIPE: the recipe's model and data settings on ``a`` and the encoding its shards are built with."""
    if not a.config:
        return {}
    cfg = load_config(a.config)
    a.frames, a.size, a.sampling, a.stride = (cfg.model.num_frames, cfg.model.img_size, cfg.data.sampling,
                                              cfg.data.frame_stride)
    a.repeat_aug = a.repeat_aug or cfg.data.repeat_aug
    return {"settings": TranscodeSettings(**recipe_encoding(cfg))}


def delivered_speedup(keep_quarter_rate: float, per_core: float, frames: int, size: int,
                      cores: tuple[int, ...] = (12, 16, 24)) -> dict[str, float]:
    """Turbo's speed-up a user sees at each core count per GPU: clips/s delivered at keep 0.25 (the GPU consumes
    ``keep_quarter_rate``) over keep 1.0 (its rate scaled by the ViT-B/16 FLOP model, tubelet 2), each the min of
    the GPU's rate and cores x ``per_core``."""
    tokens = frames // 2 * (size // 16) ** 2
    weights = 12 * (12 * 768 ** 2) + 3 * 2 * 16 * 16 * 768  # ViT-B blocks (12 d^2 each) + the tubelet projection
    full_rate = keep_quarter_rate * transformer_flops(weights, 12, tokens // 4, 768) / transformer_flops(
        weights, 12, tokens, 768)
    return {str(c): min(keep_quarter_rate, c * per_core) / min(full_rate, c * per_core) for c in cores}


def randaug_cpu_ms(frames: int, size: int, n: int, m: float, clips: int = 8, repeats: int = 3) -> float:
    """CPU ms per clip of data.randaug's batched ops on ``clips`` random uint8 clips (median of ``repeats``)."""
    augment, rng = RandAugment(n, m), np.random.default_rng(0)
    video = torch.from_numpy(rng.integers(0, 256, (clips, 3, frames, size, size), dtype=np.uint8))
    times = []
    for _ in range(repeats):
        drawn = torch.tensor([augment.draw(rng) for _ in range(clips)])
        cpu = cpu_seconds()
        augment(video, drawn)
        times.append((cpu_seconds() - cpu) * 1e3 / clips)
    return statistics.median(times)

if __name__ == "__main__":
    main()
