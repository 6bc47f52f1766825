"""data_prep/build_shards.py end to end: real videos in several containers/codecs encoded
here with PyAV, real tar shards read back with plain webdataset, kill -9 and resume."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from conftest import REPO
from servers import NGINX_INSTALL, Nginx
from turbo_ds.data.shards import write_shard
from turbo_ds.prep.build_shards import grouped_by_label
from turbo_ds.prep.manifest_rows import assign_classes, items_from_records
from turbo_ds.prep.shard_builder import Part
from turbo_ds.prep.transcode import TranscodeSettings, transcode

BUILD = str(REPO / "data_prep" / "build_shards.py")
VFR_MS = [0, 50, 200, 250, 400, 450, 600, 650, 800, 850, 1000, 1050, 1400]  # last frame lasts 1/30 s
GREY_STEP = 18  # frame i is a flat grey of level GREY_STEP * i: decoded frames tell which source frame they show


def make_video(path: Path, fmt: str, codec: str, size: tuple[int, int] = (36, 28), frames: int = 15,
               fps: int = 10, times_ms: list[int] | None = None, audio: str | None = None,
               pix_fmt: str = "yuv420p", texture: int | None = None) -> None:
    """Write a test video; ``times_ms`` gives variable frame times (else ``frames`` at ``fps``).

    Frames are flat greys (see GREY_STEP) or, with a ``texture`` seed, a sliding random texture.
    """
    w, h = size
    tex = np.random.default_rng(texture).integers(0, 256, (h, w, 3), dtype=np.uint8) if texture is not None else None
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        v = c.add_stream(codec, rate=30 if times_ms else fps)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        if times_ms:  # millisecond timestamps: variable frame rate
            v.codec_context.time_base = v.time_base = Fraction(1, 1000)
        a = c.add_stream(audio, rate=48000) if audio else None
        n = len(times_ms) if times_ms else frames
        for i in range(n):
            image = np.full((h, w, 3), GREY_STEP * i % 256, np.uint8) if tex is None else np.roll(tex, i, axis=1)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = (times_ms[i], Fraction(1, 1000)) if times_ms else (i, Fraction(1, fps))
            c.mux(v.encode(frame))
        c.mux(v.encode())
        if a is not None:
            seconds = (times_ms[-1] / 1000 if times_ms else n / fps)
            chunk = a.codec_context.frame_size or 1024
            channels = a.codec_context.layout.nb_channels
            for k in range(int(seconds * 48000 / chunk) + 1):
                samples = np.sin(np.arange(k * chunk, (k + 1) * chunk) / 20.0).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.tile(samples, (channels, 1)) * 0.1, format="fltp",
                                                layout=a.codec_context.layout.name)
                af.sample_rate, af.pts, af.time_base = 48000, k * chunk, Fraction(1, 48000)
                c.mux(a.encode(af))
            c.mux(a.encode())
    path.write_bytes(buf.getvalue())


# name -> (make_video kwargs, label, expected output frames at --fps 10)
VIDEOS = {
    "h264.mp4": (dict(fmt="mp4", codec="libx264"), "walk", 15),
    "vp9_vfr_opus.webm": (dict(fmt="webm", codec="libvpx-vp9", size=(35, 27), times_ms=VFR_MS, audio="libopus"),
                          "jump", 15),
    "mjpeg.avi": (dict(fmt="avi", codec="mjpeg", size=(35, 27), pix_fmt="yuvj420p"), "walk", 15),
    "vp8_vfr_aac.mkv": (dict(fmt="matroska", codec="libvpx", times_ms=VFR_MS, audio="aac"), "swim", 15),
    "mpeg4.avi": (dict(fmt="avi", codec="mpeg4", size=(35, 27)), "jump", 15),
    "mpeg2.mpg": (dict(fmt="mpeg", codec="mpeg2video", frames=30, fps=25), "swim", 12),
    "h264_aac.mp4": (dict(fmt="mp4", codec="libx264", size=(72, 40), audio="aac"), "walk", 15),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name, (kwargs, _, _) in VIDEOS.items():
        make_video(root / name, **kwargs)
    return root


def run_build(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, BUILD, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def read_samples(folder: Path) -> list[dict]:
    """Plain webdataset, in shard order, over the shards listed in the manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    urls = [str(folder / s["name"]) for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False).decode())


def video_info(data: bytes) -> tuple[int, int, int, float, int]:
    """(frames, height, width, stream rate, audio streams) of mp4 bytes, decoded with PyAV."""
    with av.open(io.BytesIO(data)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rate = float(c.streams.video[0].average_rate)
        audio = len(c.streams.audio)
    return len(frames), frames[0].shape[0], frames[0].shape[1], rate, audio


def build_files(folder: Path) -> dict[str, bytes]:
    """Every file a build leaves for readers: shards, manifest, errors."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------- transcoding


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["vp9_vfr_opus.webm", "vp8_vfr_aac.mkv"])
def test_variable_frame_rate_is_resampled_by_timestamps(videos, name):
    data, info = transcode(videos / name, TranscodeSettings(fps=20, short_side=0))
    # Output frame k shows the latest source frame with time <= k / 20 s, until the last one ends.
    end_ms = VFR_MS[-1] + 1000 / 30
    expected = [max(i for i, t in enumerate(VFR_MS) if t <= k * 50) for k in range(int(np.ceil(end_ms / 50)))]
    with av.open(io.BytesIO(data)) as c:
        shown = [round(f.to_ndarray(format="rgb24").mean() / GREY_STEP) for f in c.decode(video=0)]
    assert shown == expected
    assert info["frames"] == len(expected) and info["fps"] == 20.0


@pytest.mark.e2e
def test_odd_sizes_become_even_and_full_range_mjpeg_keeps_its_levels(videos):
    data, info = transcode(videos / "mjpeg.avi", TranscodeSettings(short_side=0))
    assert (info["width"], info["height"], info["fps"]) == (36, 28, 10.0)
    with av.open(io.BytesIO(data)) as c:
        levels = [f.to_ndarray(format="rgb24").mean() for f in c.decode(video=0)]
    assert np.allclose(levels, GREY_STEP * np.arange(15), atol=4)  # no limited/full range mix-up


# ---------------------------------------------------------------- the three tasks


@pytest.mark.e2e
def test_action_cls_from_many_containers(videos, tmp_path):
    manifest = write_csv(tmp_path / "train.csv", "path,label", [f"{n},{label}" for n, (_, label, _) in VIDEOS.items()])
    out = tmp_path / "out"
    proc = run_build("--task", "action_cls", "--manifest", manifest, "--video-root", videos, "--out", out,
                     "--fps", 10, "--short-side", 16, "--shard-size", 3, "--workers", 2)
    assert "7 written, 0 skipped" in proc.stdout
    manifest_json = json.loads((out / "manifest.json").read_text())
    assert manifest_json["class_names"] == ["jump", "swim", "walk"]
    assert [s["num_samples"] for s in manifest_json["shards"]] == [3, 3, 1]
    assert manifest_json["build"]["settings"]["task"] == "action_cls"
    samples = read_samples(out)
    assert [s["json"]["source"] for s in samples] == list(VIDEOS)
    for s in samples:
        _, label, frames = VIDEOS[s["json"]["source"]]
        assert s["cls"] == manifest_json["class_names"].index(label) and s["json"]["label"] == label
        n, h, w, rate, audio = video_info(s["mp4"])
        assert (n, s["json"]["frames"]) == (frames, frames)
        assert min(h, w) == 16 and h % 2 == 0 and w % 2 == 0 and (w, h) == (s["json"]["width"], s["json"]["height"])
        assert rate == pytest.approx(10) and s["json"]["fps"] == 10 and audio == 0  # audio dropped by default
        assert s["json"]["duration"] == pytest.approx(frames / 10)


@pytest.mark.e2e
def test_video_language_groups_captions(videos, tmp_path):
    rows = ['h264.mp4,a grey square fades in', 'mjpeg.avi,"a clip, with a comma"', "h264.mp4,it gets brighter"]
    out = tmp_path / "csv"
    run_build("--task", "video_language", "--manifest", write_csv(tmp_path / "c.csv", "path,caption", rows),
              "--video-root", videos, "--out", out, "--fps", 5)
    samples = read_samples(out)
    assert [s["txt"] for s in samples] == ["a grey square fades in", "a clip, with a comma"]
    assert samples[0]["json"]["captions"] == ["a grey square fades in", "it gets brighter"]
    assert "cls" not in samples[0] and json.loads((out / "manifest.json").read_text())["class_names"] is None

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"path": "mpeg2.mpg", "caption": ["one", "two", "three"]}) + "\n")
    run_build("--task", "video_language", "--manifest", jsonl, "--video-root", videos, "--out", tmp_path / "jsonl")
    [sample] = read_samples(tmp_path / "jsonl")
    assert sample["txt"] == "one" and sample["json"]["captions"] == ["one", "two", "three"]
    assert sample["json"]["fps"] == 25  # default: the source rate (at most 30)


@pytest.mark.e2e
def test_long_video_range_and_segments(videos, tmp_path):
    rows = [{"path": "h264_aac.mp4", "label": "cook", "start": 0.5, "end": 1.3,
             "segments": [{"start": 0.0, "end": 0.7, "label": "pour"}, {"start": 0.7, "end": 1.5, "label": "stir"}]},
            {"path": "h264.mp4", "label": "wash"}]
    manifest = tmp_path / "long.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run_build("--task", "long_video", "--manifest", manifest, "--video-root", videos, "--out", out,
              "--fps", 10, "--keep-audio", "--max-seconds", 1)
    cut, full = read_samples(out)
    assert cut["json"]["frames"] == 8 and cut["json"]["source_start"] == 0.5  # [0.5, 1.3) at 10 fps
    assert cut["json"]["segments"] == [{"start": 0.0, "end": 0.2, "label": "pour"},
                                       {"start": 0.2, "end": 0.8, "label": "stir"}]
    with av.open(io.BytesIO(cut["mp4"])) as c:
        shown = [round(f.to_ndarray(format="rgb24").mean() / GREY_STEP) for f in c.decode(video=0)]
        assert c.streams.audio[0].codec_context.name == "aac"
    assert shown == list(range(5, 13))
    assert full["json"]["frames"] == 10 and full["cls"] == 1  # --max-seconds 1; classes: cook, wash


@pytest.mark.e2e
def test_no_transcode_stores_bytes_as_is(videos, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["vp9_vfr_opus.webm,a", "h264.mp4,b"])
    run_build("--task", "action_cls", "--manifest", manifest, "--out", tmp_path / "out", "--video-root", videos,
              "--no-transcode")
    webm, mp4 = read_samples(tmp_path / "out")
    assert webm["mp4"] == (videos / "vp9_vfr_opus.webm").read_bytes()
    assert mp4["mp4"] == (videos / "h264.mp4").read_bytes()
    assert webm["json"]["frames"] == len(VFR_MS) and webm["json"]["has_audio"] is True
    proc = run_build("--task", "action_cls", "--manifest", manifest, "--out", tmp_path / "x", "--no-transcode",
                     "--fps", 5, check=False)
    assert proc.returncode == 2 and "--fps" in proc.stderr


@pytest.mark.e2e
def test_video2dataset_style_input_shards(videos, tmp_path):
    src = tmp_path / "v2d"
    src.mkdir()
    samples = [{"__key__": f"{i:09d}", ext: (videos / name).read_bytes(), "txt": f"caption {i}",
                "json": {"url": f"http://example.com/{name}", "caption": f"caption {i}", "status": "success"}}
               for i, (name, ext) in enumerate([("h264.mp4", "mp4"), ("vp9_vfr_opus.webm", "webm"),
                                                ("mpeg4.avi", "avi")])]
    write_shard(src / "00000.tar", samples[:2])
    write_shard(src / "00001.tar", samples[2:] + [{"__key__": "000000009", "txt": "no video here"}])
    out = tmp_path / "out"
    proc = run_build("--task", "video_language", "--input-shards", src / "*.tar", "--out", out, "--fps", 10,
                     "--short-side", 16, "--shard-size", 2)
    assert "3 written, 1 skipped" in proc.stdout
    built = read_samples(out)
    assert [s["txt"] for s in built] == ["caption 0", "caption 1", "caption 2"]
    assert built[1]["json"]["url"] == "http://example.com/vp9_vfr_opus.webm"
    assert built[1]["json"]["source"] == "00000.tar/000000001.webm"
    assert all(video_info(s["mp4"])[:3] == (15, 16, 20) for s in built)
    [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["row"] == 4 and "no video member" in error["reason"]


@pytest.mark.unit
def test_class_ids_sorted_names_integer_labels_and_a_given_list():
    def labels(rows: list[str], given: list[str] | None = None) -> tuple[list, list[str]]:
        items, names = assign_classes(items_from_records([{"path": "v.mp4", "label": r} for r in rows], "action_cls"),
                                      given)
        return [it.error or names.index(it.label) for it in items], names

    assert labels(["walk", "jump", "walk"]) == ([1, 0, 1], ["jump", "walk"])
    assert labels(["10", "2", "2"]) == ([10, 2, 2], [str(i) for i in range(11)])  # integer labels are the ids
    ids, names = labels(["jump", "fly"], given=["walk", "jump"])
    assert names == ["walk", "jump"] and ids == [1, "label 'fly' is not in the class list"]


@pytest.mark.unit
def test_a_manifest_grouped_by_label_is_recognised():
    def items(labels: list[str]):
        return items_from_records([{"path": "v.mp4", "label": x} for x in labels], "action_cls")

    grouped = [c for c in "abcd" for _ in range(40)]
    assert grouped_by_label(items(grouped), shard_size=32)
    assert not grouped_by_label(items(list(np.random.default_rng(0).permutation(grouped))), shard_size=32)
    assert not grouped_by_label(items(grouped), shard_size=256)  # one shard: the loader's buffer mixes it
    assert not grouped_by_label(items(["a"] * 100), shard_size=8)  # one class: nothing to mix


@pytest.mark.e2e
def test_shuffle_mixes_a_grouped_manifest_and_resumes_to_the_same_bytes(videos, tmp_path):
    rows = [f"{n},{label}" for n, (_, label, _) in sorted(VIDEOS.items(), key=lambda kv: kv[1][1]) for _ in range(5)]
    manifest = write_csv(tmp_path / "sorted.csv", "path,label", rows)  # 35 rows in runs of one label
    common = ("--task", "action_cls", "--manifest", manifest, "--video-root", videos, "--fps", 5, "--short-side", 16,
              "--shard-size", 8, "--workers", 2)
    grouped = run_build(*common, "--out", tmp_path / "grouped")
    assert "grouped by label" in grouped.stderr and "--shuffle" in grouped.stderr
    shuffled = run_build(*common, "--out", tmp_path / "shuffled", "--shuffle")
    assert "grouped by label" not in shuffled.stderr and "35 written" in shuffled.stdout
    samples = read_samples(tmp_path / "shuffled")
    labels = [s["json"]["label"] for s in samples]
    assert sorted(labels) == sorted(r.split(",")[1] for r in rows)  # every row once, in another order
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(35)]
    assert len(set(labels[:8])) >= 2 and labels != [r.split(",")[1] for r in rows]
    first = build_files(tmp_path / "shuffled")
    (tmp_path / "shuffled" / "manifest.json").unlink()  # as if killed before the end: the rerun resumes
    run_build(*common, "--out", tmp_path / "shuffled", "--shuffle")
    assert build_files(tmp_path / "shuffled") == first
    other = run_build(*common, "--out", tmp_path / "shuffled", check=False)  # unshuffled into it: refused
    assert other.returncode == 2 and "--shuffle was True" in other.stderr and build_files(tmp_path / "shuffled") == first


# ---------------------------------------------------------------- bad input


@pytest.mark.e2e
def test_bad_rows_are_skipped_and_listed(videos, tmp_path):
    (videos / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    (videos / "empty.mp4").write_bytes(b"")
    rows = ["h264.mp4,walk", "missing.mp4,walk", "garbage.mp4,jump", "empty.mp4,walk", "mjpeg.avi,", ",walk",
            "mpeg4.avi,jump"]
    manifest = write_csv(tmp_path / "m.csv", "path,label", rows)
    out = tmp_path / "out"
    proc = run_build("--task", "action_cls", "--manifest", manifest, "--video-root", videos, "--out", out,
                     "--short-side", 16, "--shard-size", 4)
    assert "2 written, 5 skipped" in proc.stdout
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["path"]) for e in errors] == [(2, "missing.mp4"), (3, "garbage.mp4"), (4, "empty.mp4"),
                                                       (5, "mjpeg.avi"), (6, "")]
    reasons = [e["reason"] for e in errors]
    assert "not found" in reasons[0] and "Invalid data" in reasons[1] and "empty" in reasons[2]
    assert reasons[3] == "missing field 'label'" and reasons[4] == "missing field 'path'"
    manifest_json = json.loads((out / "manifest.json").read_text())
    assert manifest_json["num_samples"] == 2 and manifest_json["num_skipped"] == 5
    assert [s["json"]["row"] for s in read_samples(out)] == [1, 7]

    nothing = write_csv(tmp_path / "bad.csv", "path,label", ["missing.mp4,walk", "garbage.mp4,jump"])
    proc = run_build("--task", "action_cls", "--manifest", nothing, "--video-root", videos, "--out", tmp_path / "none",
                     check=False)
    assert proc.returncode == 1 and "0 written, 2 skipped" in proc.stdout
    assert not (tmp_path / "none" / "manifest.json").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("header, rows, message", [
    ("path,label", [], "no rows"),
    ("path,label", [",x", "a.mp4,"], "no usable rows"),
    ("path,caption", ["a.mp4,hello"], "no 'label' column"),
])
def test_unusable_manifest_is_a_clear_error(tmp_path, header, rows, message):
    manifest = write_csv(tmp_path / "m.csv", header, rows)
    proc = run_build("--task", "action_cls", "--manifest", manifest, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.e2e
def test_different_settings_in_the_same_out_dir(videos, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["h264.mp4,walk"])
    args = ["--task", "action_cls", "--manifest", manifest, "--video-root", videos, "--out", tmp_path / "out"]
    run_build(*args, "--crf", 30)
    proc = run_build(*args, "--crf", 20, check=False)
    assert proc.returncode == 2
    assert "--crf was 30, now 20" in proc.stderr and "new --out" in proc.stderr and "delete" in proc.stderr
    again = run_build(*args, "--crf", 30, "--workers", 2)  # same settings: nothing to do, same result
    assert "1 written, 0 skipped" in again.stdout

    foreign = tmp_path / "foreign"  # e.g. a make_demo_data folder
    foreign.mkdir()
    write_shard(foreign / "train-000000.tar", [])
    proc = run_build(*args[:-2], "--out", foreign, check=False)
    assert proc.returncode == 2 and "not built by build_shards" in proc.stderr
    assert not (foreign / ".build").exists()


# ---------------------------------------------------------------- kill -9 and resume


@pytest.mark.e2e
def test_kill_and_resume_gives_identical_shards(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for i in range(24):  # enough work that the run is still going when the first shard lands
        make_video(root / f"v{i:02d}.mp4", "mp4", "libx264", size=(64, 48), frames=45, fps=30, texture=i)
    rows = [f"v{i:02d}.mp4,c{i % 3}" for i in range(24)] + ["nope.mp4,c0"]
    manifest = write_csv(tmp_path / "m.csv", "path,label", rows)
    args = ["--task", "action_cls", "--manifest", manifest, "--video-root", root, "--short-side", 32,
            "--fps", 30, "--shard-size", 2]

    reference = tmp_path / "reference"
    run_build(*args, "--out", reference, "--workers", 1)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, BUILD, *map(str, args), "--out", str(resumed), "--workers", "2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (resumed / "shard-000000.tar").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "manifest.json").exists(), "the run finished before it could be killed"
    partial = {p.name for p in resumed.glob("shard-*.tar")}
    assert 0 < len(partial) < 12

    run_build(*args, "--out", resumed, "--workers", 2)
    assert build_files(resumed) == build_files(reference)
    assert not list(resumed.glob(".*.tmp*"))
    other = tmp_path / "three_workers"
    run_build(*args, "--out", other, "--workers", 3)
    assert build_files(other) == build_files(reference)
    errors = (reference / "errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and json.loads(errors[0])["row"] == 25
    # The last shard held only the missing video: no tar, and the manifest lists 12 shards.
    assert not (reference / "shard-000012.tar").exists()
    assert len(json.loads((reference / "manifest.json").read_text())["shards"]) == 12
    with tarfile.open(reference / "shard-000011.tar") as tar:
        assert sorted(tar.getnames()) == [f"0000000{i}.{ext}" for i in (22, 23) for ext in ("cls", "json", "mp4")]


@pytest.mark.e2e
def test_fewer_videos_than_one_shard_still_use_every_worker_with_identical_bytes(tmp_path):
    """The items of one shard are transcoded by all workers (then written in manifest order): same bytes as one
    worker, including a skipped row between them."""
    root = tmp_path / "videos"
    root.mkdir()
    for i in range(4):
        make_video(root / f"v{i}.mp4", "mp4", "libx264", size=(64, 48), frames=30, fps=30, texture=i)
    rows = ["v0.mp4,a", "v1.mp4,b", "gone.mp4,a", "v2.mp4,a", "v3.mp4,b"]
    args = ["--task", "action_cls", "--manifest", write_csv(tmp_path / "m.csv", "path,label", rows),
            "--video-root", root, "--short-side", 32, "--fps", 30]  # default --shard-size: one shard
    run_build(*args, "--out", tmp_path / "one", "--workers", 1)
    run_build(*args, "--out", tmp_path / "three", "--workers", 3)
    assert build_files(tmp_path / "three") == build_files(tmp_path / "one")
    assert [s["__key__"] for s in read_samples(tmp_path / "three")] == [f"{i:09d}" for i in (0, 1, 3, 4)]


# ---------------------------------------------------------------- parts (one build on many machines) and the merge


@pytest.mark.unit
@pytest.mark.parametrize("parts, shards", [(1, 5), (4, 13), (4, 3), (7, 100)])
def test_parts_cover_every_shard_once_in_order(parts, shards):
    spans = [Part(i, parts).shards(shards) for i in range(parts)]
    assert [k for span in spans for k in span] == list(range(shards))  # contiguous, no gap, no overlap
    assert max(map(len, spans)) - min(map(len, spans)) <= 1


def _part_clips(tmp_path: Path) -> tuple[Path, list[str]]:
    """10 tiny clips in 3 classes, then a missing and a corrupt one (skipped rows, in the last shard)."""
    root = tmp_path / "videos"
    root.mkdir()
    for i in range(10):
        make_video(root / f"v{i}.mp4", "mp4", "libx264", size=(48, 32), frames=10, fps=10, texture=i)
    (root / "bad.mp4").write_bytes(b"not a video" * 20)
    return root, [f"v{i}.mp4,c{i % 3}" for i in range(10)] + ["gone.mp4,c0", "bad.mp4,c1"]


@pytest.mark.e2e
def test_parts_in_any_order_merge_to_the_bytes_of_one_build_and_a_missing_part_is_named(tmp_path):
    root, rows = _part_clips(tmp_path)
    args = ["--task", "action_cls", "--manifest", write_csv(tmp_path / "m.csv", "path,label", rows), "--video-root",
            root, "--short-side", 16, "--shard-size", 2, "--shuffle", "--workers", 1]
    run_build(*args, "--out", tmp_path / "one")
    out = tmp_path / "parts"
    for part in (3, 0):
        proc = run_build(*args, "--out", out, "--part", part, "--parts", 4)
        assert "other parts are still to finish" in proc.stdout and not (out / "manifest.json").exists()
    refused = run_build("--merge", out, check=False)
    assert refused.returncode == 2 and "cannot merge" in refused.stderr and "parts 1, 2 of 4 missing" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "sbatch --array=1,2" in refused.stderr
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}  # a Slurm array task's defaults
    proc = subprocess.run([sys.executable, BUILD, *map(str, args), "--out", str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "part 2 of 4 (shards 3-3 of 6)" in proc.stdout, proc.stderr
    last = run_build(*args, "--out", out, "--part", 1, "--parts", 4)  # the last part to finish merges
    assert "all 4 parts done, merged: 10 written, 2 skipped" in last.stdout
    assert build_files(out) == build_files(tmp_path / "one")
    again = run_build("--merge", out)
    assert "merged: 10 written, 2 skipped" in again.stdout and build_files(out) == build_files(tmp_path / "one")
    wrong = run_build(*args, "--out", out, "--part", 4, "--parts", 4, check=False)
    assert wrong.returncode == 2 and "part 4 (--part) of 4 (--parts) does not exist" in wrong.stderr
    other = run_build(*args, "--out", out, "--part", 1, "--parts", 4, "--crf", 30, check=False)
    assert other.returncode == 2 and "--crf was 23, now 30" in other.stderr  # a shared folder refuses it at start


@pytest.mark.e2e
def test_parts_uploaded_with_other_settings_are_refused_at_the_merge(tmp_path):
    """Parts that build on their own machines (each in its own staging folder) and upload to one URL: the merge
    names the part built with another --crf; rebuilt with the others' options, the URL holds the one-build bytes."""
    if shutil.which("nginx") is None:
        pytest.skip(f"nginx is not installed: {NGINX_INSTALL}")
    root, rows = _part_clips(tmp_path)
    args = ["--task", "action_cls", "--manifest", write_csv(tmp_path / "m.csv", "path,label", rows), "--video-root",
            root, "--short-side", 16, "--shard-size", 3, "--workers", 1]
    run_build(*args, "--out", tmp_path / "one")
    www = tmp_path / "www"
    (www / "up").mkdir(parents=True)
    put = "location /up/ { dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 0; }"
    with Nginx(www, tmp_path / "nginx", put) as web:
        url = f"{web.url}/up/ds"
        for part in (0, 2):
            run_build(*args, "--out", url, "--staging", tmp_path / "a", "--part", part, "--parts", 3)
        last = run_build(*args, "--out", url, "--staging", tmp_path / "b", "--part", 1, "--parts", 3, "--crf", 30,
                         check=False)  # built and uploaded, but as the last part it cannot merge
        refused = run_build("--merge", url, check=False)
        for proc in (last, refused):
            assert proc.returncode == 2 and proc.stderr.count("error") == 1, proc.stderr
            assert (f"build_shards: error: cannot merge {url}: part 1 was built with other settings than parts 0, 2 "
                    "(--crf 30, not 23)" in proc.stderr)
        assert not (www / "up" / "ds" / "manifest.json").exists()
        last = run_build(*args, "--out", url, "--staging", tmp_path / "c", "--part", 1, "--parts", 3)
        assert "all 3 parts done, merged: 10 written, 2 skipped" in last.stdout
    assert build_files(www / "up" / "ds") == build_files(tmp_path / "one")


# ------------------------------------------------------------------ shards stored as a recipe samples them


@pytest.mark.unit
def test_recipe_encoding_follows_the_recipes_sampling():
    from turbo_ds.config import load_config
    from turbo_ds.prep.transcode import recipe_encoding

    assert recipe_encoding(load_config(REPO / "configs/k400_vitb.yaml")) == {"short_side": 224, "gop": 8, "fps": 7.5}
    assert recipe_encoding(load_config(REPO / "configs/ssv2_vitb.yaml")) == {"short_side": 224, "gop": 8}  # uniform


@pytest.mark.e2e
def test_shards_for_a_config_are_sampled_in_source_frames(tmp_path):
    """--for-config configs/k400_vitb.yaml stores a 30 fps video at 7.5 fps with a keyframe every 8 frames; the
    loader's 16x4 dense clip of it is then 16 consecutive stored frames, 4 source frames apart (frame i of the
    source is a flat grey 2 * i), in training and evaluation alike; --fps given explicitly wins."""
    from turbo_ds.config import DataConfig, ModelConfig
    from turbo_ds.data.streams import EvalStream, TrainStream, make_loader
    from turbo_ds.prep.transcode import encode_mp4

    (tmp_path / "v").mkdir()
    grey = np.stack([np.full((36, 48, 3), 2 * i, np.uint8) for i in range(120)])  # 4 s at 30 fps
    for k in range(2):
        (tmp_path / "v" / f"{k}.mp4").write_bytes(encode_mp4(grey, fps=30))
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["0.mp4,a", "1.mp4,b"])
    run_build("--task", "action_cls", "--manifest", manifest, "--video-root", tmp_path / "v", "--out",
              tmp_path / "out", "--workers", "1", "--for-config", REPO / "configs/k400_vitb.yaml")
    sample = next(iter(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False)))
    meta = json.loads(sample["json"])
    assert (meta["fps"], meta["source_fps"], meta["frames"]) == (7.5, 30.0, 30)
    with av.open(io.BytesIO(sample["mp4"])) as c:
        keyframes = [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]
    assert keyframes[0] == 0 and np.diff(keyframes + [30]).max() <= 8
    data = DataConfig(train=str(tmp_path / "out"), val=str(tmp_path / "out"), sampling="dense", frame_stride=4,
                      shuffle_buffer=1, hflip_prob=0.0)
    model = ModelConfig(num_frames=16, img_size=32)
    for stream in (TrainStream.from_config(data, model, 0, 1, 2, seed=0), EvalStream.from_config(data, model, 0, 1, 2)):
        video = next(iter(make_loader(stream, 0)))["video"]  # (B, C, T, H, W) uint8
        levels = video.float().mean(dim=(1, 3, 4))  # (B, T): 2 x the source frame each shows
        assert (levels.diff(dim=1) - 8).abs().max() < 2, levels  # 4 source frames apart, not 16
    run_build("--task", "action_cls", "--manifest", manifest, "--video-root", tmp_path / "v", "--out",
              tmp_path / "out15", "--workers", "1", "--for-config", REPO / "configs/k400_vitb.yaml", "--fps", "15")
    sample = next(iter(wds.WebDataset(str(tmp_path / "out15" / "shard-000000.tar"), shardshuffle=False)))
    assert json.loads(sample["json"])["fps"] == 15.0
    proc = run_build("--task", "action_cls", "--manifest", manifest, "--out", tmp_path / "x", "--no-transcode",
                     "--for-config", REPO / "configs/k400_vitb.yaml", check=False)
    assert proc.returncode == 2 and "drop --for-config" in proc.stderr
