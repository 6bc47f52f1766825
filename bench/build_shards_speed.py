#!/usr/bin/env python
"""Cost of data_prep/build_shards.py per second of source video, and what a corpus costs on a cluster.

    python bench/build_shards_speed.py --videos 3 --seconds 60 --workers 2
    python bench/build_shards_speed.py --sources /data/real_videos --workers 2     # your own videos instead
    python bench/build_shards_speed.py --cpu-per-video-s 0.17 --corpus K400=667     # only the projection
    python bench/build_shards_speed.py --repo /tmp/before ...     # another checkout's build_shards, same videos

Writes --videos camera-like 480x360 30 fps H.264 sources (bench/loader_speed.py's scene;
kept in --data for later runs), one of them --long-factor times longer than the others as
in a real manifest (or takes every video under --sources), then times ``build_shards --workers W``
into a fresh folder --repeats times (default settings: 256 short side, one shard) and prints each
wall time, the CPU time (the builder and its workers), and the median CPU-s per second of source
video. Then the projection: for each --corpus NAME=HOURS of video, the CPU-hours and the wall time of
an array build (slurm/build_shards.sh) on each of --nodes N x --cores C, all cores transcoding
(parts are independent; storage and network assumed not to be the bottleneck). Compare checkouts
with --repo: a tree whose builder runs one shard per worker uses one core here, whatever --workers says.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_speed import real_looking_frames  # noqa: E402

from turbo_ds.prep.manifest_rows import VIDEO_EXTS  # noqa: E402
from turbo_ds.prep.transcode import probe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_source(path: Path, seconds: float, seed: int, fps: int = 30) -> None:
    """A camera-original H.264 mp4, encoded frame by frame (a long video never sits in memory)."""
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for t, image in enumerate(real_looking_frames(np.random.default_rng([11, seed]), round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    tmp.rename(path)


def children_cpu_s() -> float:
    """User + system time of the finished child processes and their own finished children (the workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Corpus sizes in hours of source video: Kinetics-400 train, ~240k clips x 10 s; WebVid-10M, 10.7M clips,
# 52k hours in its paper (~18 s each).
CORPORA = ("K400=667", "WebVid-10M=52000")


def source_seconds(path: Path) -> float:
    """The video's length from its container, else by decoding it."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        if c.duration is not None:
            return c.duration / av.time_base
    return probe(path)["duration"]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def projection(cpu_per_video_s: float, corpora: list[str], nodes: list[int], cores: int) -> tuple[str, list[dict]]:
    """The table of CPU-hours and wall times, and its rows."""
    rows = []
    for spec in corpora:
        name, hours = spec.split("=")
        cpu_s = float(hours) * 3600 * cpu_per_video_s
        rows.append({"corpus": name, "video_hours": float(hours), "cpu_hours": cpu_s / 3600,
                     "wall_s": {n: cpu_s / (n * cores) for n in nodes}})
    head = f"{'corpus':<12} {'video h':>9} {'CPU-h':>9}" + "".join(f" {f'{n} x {cores} cores':>15}" for n in nodes)
    lines = [head] + [f"{r['corpus']:<12} {r['video_hours']:>9,.0f} {r['cpu_hours']:>9,.0f}"
                      + "".join(f" {_hours(r['wall_s'][n]):>15}" for n in nodes) for r in rows]
    return "\n".join(lines), rows


def _sources(a: argparse.Namespace) -> tuple[Path, list[Path]]:
    """(video root, videos): --sources as given, else generated into --data."""
    if a.sources is not None:
        found = sorted(p for p in a.sources.rglob("*") if p.suffix[1:].lower() in VIDEO_EXTS)
        if not found:
            raise SystemExit(f"--sources {a.sources}: no videos found")
        return a.sources, found
    lengths = [a.seconds * (a.long_factor if i == 0 else 1) for i in range(a.videos)]
    paths = []
    for i, seconds in enumerate(lengths):
        path = a.data / f"v{i}_{seconds:g}s.mp4"
        if not path.is_file():
            print(f"writing {path} ({seconds:g} s)", flush=True)
            a.data.mkdir(parents=True, exist_ok=True)
            write_source(path, seconds, i)
        paths.append(path)
    return a.data, paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=3, help="videos in the manifest")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each video but the long one")
    p.add_argument("--long-factor", type=float, default=3.0, help="the first video is this many times longer")
    p.add_argument("--sources", type=Path, help="time these videos (every video file under the folder) instead")
    p.add_argument("--workers", type=int, default=2, help="build_shards --workers")
    p.add_argument("--repeats", type=int, default=1, help="builds timed; the median is reported")
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose data_prep/build_shards.py runs")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "build_shards_speed",
                   help="where the generated source videos are kept")
    p.add_argument("--cpu-per-video-s", type=float, help="skip the measurement: project from this figure")
    p.add_argument("--corpus", action="append", metavar="NAME=HOURS",
                   help=f"a corpus to project, by its hours of video (repeatable; default: {' '.join(CORPORA)})")
    p.add_argument("--nodes", type=lambda s: [int(n) for n in s.split(",")], default=[1, 8, 64],
                   help="node counts to project, comma-separated (default 1,8,64)")
    p.add_argument("--cores", type=int, default=32, help="cores per node of the projection (default 32)")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args(argv)

    result: dict = {}
    if a.cpu_per_video_s is None:
        root, paths = _sources(a)
        lengths = [source_seconds(path) for path in paths]
        rows = [f"{path.relative_to(root)},c{i % 2}" for i, path in enumerate(paths)]
        manifest = Path(tempfile.mkdtemp(prefix="build_shards_speed_")) / "manifest.csv"
        manifest.write_text("\n".join(["path,label", *rows]) + "\n")
        times, cpus = [], []
        for _ in range(a.repeats):
            out = Path(tempfile.mkdtemp(prefix="build_shards_speed_"))
            try:
                start, cpu = time.perf_counter(), children_cpu_s()
                subprocess.run([sys.executable, str(a.repo / "data_prep" / "build_shards.py"), "--task", "action_cls",
                                "--manifest", str(manifest), "--video-root", str(root), "--out", str(out / "shards"),
                                "--workers", str(a.workers)], check=True, cwd=a.repo, stdout=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(a.repo.resolve())})  # that checkout's turbo_ds
                times.append(time.perf_counter() - start)
                cpus.append(children_cpu_s() - cpu)
            finally:
                shutil.rmtree(out)
            print(f"build_shards --workers {a.workers} ({a.repo}): {times[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU",
                  flush=True)
        shutil.rmtree(manifest.parent)
        a.cpu_per_video_s = statistics.median(cpus) / sum(lengths)
        result = {"videos": len(paths), "seconds": lengths, "workers": a.workers, "repo": str(a.repo),
                  "wall_s": times, "median_wall_s": statistics.median(times), "cpu_s": cpus}
        print(f"{len(paths)} videos ({sum(lengths):.0f} s of video), --workers {a.workers}: median "
              f"{result['median_wall_s']:.1f} s wall, {statistics.median(cpus):.1f} CPU-s over {a.repeats} build(s): "
              f"{a.cpu_per_video_s:.3f} CPU-s per video-second")
    table, corpora = projection(a.cpu_per_video_s, a.corpus or list(CORPORA), a.nodes, a.cores)
    print(f"\nprojected build (at {a.cpu_per_video_s:.3f} CPU-s per video-second, every core transcoding):\n{table}")
    result.update(cpu_per_video_s=a.cpu_per_video_s, projection=corpora, cores=a.cores)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
