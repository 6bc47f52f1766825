"""Demo data generation and the WebDataset pipeline on real mp4 shards."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from turbo_ds.config import DataConfig, ModelConfig
from turbo_ds.data.pipeline import EvalStream, TrainStream, make_loader
from turbo_ds.data.shards import read_manifest
from turbo_ds.data.video import decode_frames
from turbo_ds.prep.demo import CLASS_NAMES, DemoSettings, make_sample

MODEL = ModelConfig()


def data_config(demo: Path, **kw) -> DataConfig:
    return DataConfig(train=str(demo / "train"), val=str(demo / "val"), shuffle_buffer=8, hflip_prob=0.0, **kw)


def test_demo_is_deterministic_and_motion_labelled():
    a, b = make_sample("train", 5, DemoSettings()), make_sample("train", 5, DemoSettings())
    assert a["mp4"] == b["mp4"] and a["txt"] == b["txt"] and a["cls"] == 5
    frames = decode_frames(a["mp4"])
    assert frames.shape == (16, 64, 64, 3)
    direction, speed = CLASS_NAMES[a["cls"]].split("_")
    assert direction in a["txt"] and {"slow": "slowly", "fast": "quickly"}[speed] in a["txt"]
    assert np.abs(frames[1:].astype(int) - frames[:-1]).mean() > 1  # it moves


def test_manifest_counts(tiny_demo):
    m = read_manifest(tiny_demo / "train")
    assert m["num_samples"] == 64 and len(m["shards"]) == 4 and m["class_names"] == CLASS_NAMES


def test_train_stream_batches(tiny_demo):
    stream = TrainStream(data_config(tiny_demo), MODEL, rank=0, world=2, batch_size=4, seed=0)
    batches = iter(make_loader(stream, 0))
    first = next(batches)
    assert first["video"].shape == (4, 3, 16, 64, 64) and first["video"].dtype == torch.float32
    assert first["label"].shape == (4,) and first["position"]["epoch"] == 0
    for _ in range(8):  # 32 clips per rank per epoch: two epochs' worth
        last = next(batches)
    assert last["position"]["epoch"] == 1


def test_resumed_stream_continues_where_it_stopped(tiny_demo):
    cfg = data_config(tiny_demo)
    batches = iter(make_loader(TrainStream(cfg, MODEL, 1, 2, 4, seed=3), 0))
    seen = [next(batches) for _ in range(11)]
    resumed = iter(make_loader(TrainStream(cfg, MODEL, 1, 2, 4, seed=3, resume={seen[5]["stream"]: seen[5]["position"]}), 0))
    for expected in seen[6:]:
        got = next(resumed)
        assert torch.equal(got["label"], expected["label"]) and torch.equal(got["video"], expected["video"])


def test_eval_stream_covers_every_clip_once(tiny_demo):
    keys = []
    for rank in range(3):
        stream = EvalStream(data_config(tiny_demo), MODEL, rank, 3, batch_size=5)
        batches = list(make_loader(stream, 0))
        assert len(batches) <= stream.num_batches
        keys += [b["position"]["consumed"] for b in batches[-1:]]
    assert sum(keys) == 32


def test_corrupt_video_is_skipped_and_counted(tiny_demo, tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    for shard in read_manifest(tiny_demo / "train")["shards"]:
        src, dst = tiny_demo / "train" / shard["name"], folder / shard["name"]
        with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
            for member in tin.getmembers():
                data = tin.extractfile(member).read()
                if member.name.endswith("0000003.mp4"):
                    data = b"\x00\x00\x00 ftypisom garbage" + data[200:260]  # corrupt mp4 bytes
                member.size = len(data)
                tout.addfile(member, io.BytesIO(data))
    (folder / "manifest.json").write_text((tiny_demo / "train" / "manifest.json").read_text())
    stream = TrainStream(DataConfig(train=str(folder), shuffle_buffer=8), MODEL, 0, 1, 7, seed=0)
    batches = iter(make_loader(stream, 0))
    positions = [next(batches)["position"] for _ in range(9)]  # 63 clips good per epoch -> 9 batches of 7
    assert positions[-1]["skipped"] == 1 and positions[-1]["epoch"] == 0
