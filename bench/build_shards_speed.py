#!/usr/bin/env python
"""Wall time of data_prep/build_shards.py on a manifest of a few long videos (fewer than one shard).

    python bench/build_shards_speed.py --videos 3 --seconds 60 --workers 2
    python bench/build_shards_speed.py --repo /tmp/before ...     # another checkout's build_shards, same videos

Writes --videos camera-like 480x360 30 fps H.264 sources (bench/loader_speed.py's scene;
kept in --data for later runs), one of them --long-factor times longer than the others as
in a real manifest, then times ``build_shards --workers W`` into a fresh folder --repeats
times (default settings: 256 short side, one shard) and prints each wall time and the
median. Compare checkouts with --repo: a tree whose builder runs one shard per worker
uses one core here, whatever --workers says.
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=3, help="videos in the manifest")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each video but the long one")
    p.add_argument("--long-factor", type=float, default=3.0, help="the first video is this many times longer")
    p.add_argument("--workers", type=int, default=2, help="build_shards --workers")
    p.add_argument("--repeats", type=int, default=1, help="builds timed; the median is reported")
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose data_prep/build_shards.py runs")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "build_shards_speed",
                   help="where the source videos are kept")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args(argv)

    lengths = [a.seconds * (a.long_factor if i == 0 else 1) for i in range(a.videos)]
    rows = []
    for i, seconds in enumerate(lengths):
        path = a.data / f"v{i}_{seconds:g}s.mp4"
        if not path.is_file():
            print(f"writing {path} ({seconds:g} s)", flush=True)
            a.data.mkdir(parents=True, exist_ok=True)
            write_source(path, seconds, i)
        rows.append(f"{path.name},c{i % 2}")
    manifest = a.data / f"manifest_{a.videos}_{a.seconds:g}_{a.long_factor:g}.csv"
    manifest.write_text("\n".join(["path,label", *rows]) + "\n")

    times, cpus = [], []
    for _ in range(a.repeats):
        out = Path(tempfile.mkdtemp(prefix="build_shards_speed_"))
        try:
            start, cpu = time.perf_counter(), children_cpu_s()
            subprocess.run([sys.executable, str(a.repo / "data_prep" / "build_shards.py"), "--task", "action_cls",
                            "--manifest", str(manifest), "--video-root", str(a.data), "--out", str(out / "shards"),
                            "--workers", str(a.workers)], check=True, cwd=a.repo, stdout=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONPATH": str(a.repo.resolve())})  # that checkout's turbo_ds
            times.append(time.perf_counter() - start)
            cpus.append(children_cpu_s() - cpu)
        finally:
            shutil.rmtree(out)
        print(f"build_shards --workers {a.workers} ({a.repo}): {times[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU", flush=True)
    result = {"videos": a.videos, "seconds": lengths, "workers": a.workers, "repo": str(a.repo),
              "wall_s": times, "median_wall_s": statistics.median(times), "cpu_s": cpus}
    print(f"{a.videos} videos ({' + '.join(f'{s:g}' for s in lengths)} s), --workers {a.workers}: "
          f"median {result['median_wall_s']:.1f} s wall over {a.repeats} build(s)")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
