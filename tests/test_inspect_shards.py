"""data_prep/inspect_shards.py on real shards: counts, histograms, undecodable samples, PNG."""

from __future__ import annotations

import pytest

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from conftest import REPO
from turbo_ds.data.shards import write_manifest, write_shard
from turbo_ds.prep.transcode import encode_mp4

pytestmark = pytest.mark.e2e

INSPECT = str(REPO / "data_prep" / "inspect_shards.py")
BUILD = str(REPO / "data_prep" / "build_shards.py")
CLASSES = ["jump", "run", "swim"]


def clip(level: int, frames: int = 12, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """(T, H, W, 3) frames getting brighter from ``level``."""
    h, w = size
    return np.stack([np.full((h, w, 3), min(255, level + 8 * t), np.uint8) for t in range(frames)])


def sample(i: int, label: int | None = None, caption: str | None = None, mp4: bytes | None = None) -> dict:
    s = {"__key__": f"{i:09d}", "mp4": encode_mp4(clip(10 * i), fps=8) if mp4 is None else mp4,
         "json": {"fps": 8.0, "frames": 12, "width": 32, "height": 24, "duration": 1.5, "source": f"{i}.mp4"}}
    if label is not None:
        s["cls"] = label
    if caption is not None:
        s["txt"] = caption
        s["json"]["captions"] = [caption, caption + " again"]
    return s


def inspect(*args: object) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, INSPECT, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc


def read_png(path: Path) -> np.ndarray:
    """Parse our PNG back (8-bit RGB, filter 0) to check size and content."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        (n,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body)
        chunks[tag], pos = body, pos + 12 + n
    w, h = struct.unpack(">II", chunks[b"IHDR"][:8])
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_action_cls_counts_histogram_bad_sample_and_png(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    labels = [0, 1, 1, 2, 1]
    write_shard(folder / "shard-000000.tar", [sample(i, labels[i]) for i in range(3)])
    write_shard(folder / "shard-000001.tar", [sample(3, labels[3]), sample(4, labels[4], mp4=b"garbage" * 20)])
    shards = [{"name": "shard-000000.tar", "num_samples": 3}, {"name": "shard-000001.tar", "num_samples": 2}]
    write_manifest(folder, task="action_cls", class_names=CLASSES, shards=shards)
    png, stats_file = tmp_path / "sheet.png", tmp_path / "stats.json"
    out = inspect(folder, "--png", png, "--samples", 3, "--json", stats_file).stdout
    assert "total: 5 samples in 2 shards" in out and "undecodable: 1" in out
    assert "shard-000001.tar 000000004: " in out
    for k, name in enumerate(CLASSES):
        assert f"{k:>4} {name}" in out
    stats = json.loads(stats_file.read_text())
    assert {n: s["samples"] for n, s in stats["shards"].items()} == {"shard-000000.tar": 3, "shard-000001.tar": 2}
    assert stats["classes"] == {"0": 1, "1": 3, "2": 1}
    assert stats["sheet_keys"] == ["000000000", "000000001", "000000002"]

    image = read_png(png)
    cell_w = round(32 * 64 / 24)
    assert image.shape == (3 * (64 + 2), 8 * (cell_w + 2), 3)
    # Row r shows clip r: frames brighten left to right, starting near level 10*r.
    firsts = image[32, [k * (cell_w + 2) + cell_w // 2 for k in range(8)], 0].astype(int)
    assert (np.diff(firsts) > 0).all()
    assert abs(int(image[2 * 66 + 32, cell_w // 2, 0]) - 20) <= 3


def test_built_video_language_folder(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        (videos / f"{i}.mp4").write_bytes(encode_mp4(clip(40 * i, frames=16), fps=8))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,caption\n0.mp4,a dark clip\n1.mp4,a brighter clip that is described with many more words "
                        "than the others\n0.mp4,still dark\n2.mp4,bright\n")
    out = tmp_path / "built"
    args = ["--task", "video_language", "--manifest", manifest, "--video-root", videos, "--out", out,
            "--short-side", 16, "--shard-size", 2]
    subprocess.run([sys.executable, BUILD, *map(str, args)], check=True, capture_output=True, cwd=REPO)
    report = inspect(out, "--png", tmp_path / "s.png", "--samples", 5).stdout
    assert "task: video_language" in report and "total: 3 samples in 2 shards" in report
    assert "captions: 4 (min 1  mean 1.33  max 2 per video)" in report
    assert "0-4                                    3" in report and "10-14                                  1" in report
    assert "fps: min 8  mean 8  max 8" in report and "resolution: 22x16 x3" in report and "undecodable: 0" in report
    assert read_png(tmp_path / "s.png").shape[0] == 3 * 66  # only 3 samples exist
