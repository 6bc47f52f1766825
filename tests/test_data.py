"""Demo data generation and the WebDataset pipeline on real mp4 shards."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, resumed, eval_read
from turbo_ds.config import DataConfig, ModelConfig
from turbo_ds.data.position import eval_share, lost_per_epoch
from turbo_ds.data.samples import ClipSpec
from turbo_ds.data.shards import read_manifest
from turbo_ds.data.streams import EvalStream, TrainStream, make_loader
from turbo_ds.data.video import decode_frames
from turbo_ds.prep.demo import CLASS_NAMES, DemoSettings, make_sample

pytestmark = pytest.mark.unit

pytestmark = pytest.mark.unit

MODEL = ModelConfig()


def data_config(demo: Path, **kw) -> DataConfig:
    return DataConfig(train=str(demo / "train"), val=str(demo / "val"), shuffle_buffer=8, hflip_prob=0.0, **kw)


def test_training_modules_do_not_import_prep():
    """turbo_ds.prep is offline preparation: importing any other module of the package loads none of it."""
    code = """
import sys, turbo_ds
from pathlib import Path
root = Path(turbo_ds.__path__[0])
for path in sorted(root.rglob("*.py")):
    name = ".".join(("turbo_ds", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
    if not name.startswith("turbo_ds.prep"):
        __import__(name)
print(sorted(name for name in sys.modules if name.startswith(("turbo_ds.prep", "data_prep"))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    stream = TrainStream.from_config(data_config(tiny_demo), MODEL, rank=0, world=2, batch_size=4, seed=0)
    batches = iter(make_loader(stream, 0))
    first = next(batches)
    assert first["video"].shape == (4, 3, 16, 64, 64) and first["video"].dtype == torch.uint8  # normalised on the device
    assert first["label"].shape == (4,) and first["position"]["epoch"] == 0
    for _ in range(8):  # 32 clips per rank per epoch: two epochs' worth
        last = next(batches)
    assert last["position"]["epoch"] == 1


def test_resumed_stream_continues_where_it_stopped(tiny_demo):
    cfg = data_config(tiny_demo)
    batches = iter(make_loader(TrainStream.from_config(cfg, MODEL, 1, 2, 4, seed=3), 0))
    seen = [next(batches) for _ in range(11)]
    again = iter(make_loader(resumed(TrainStream.from_config(cfg, MODEL, 1, 2, 4, seed=3),
                                     {seen[5]["stream"]: seen[5]["position"]}), 0))
    for expected in seen[6:]:
        got = next(again)
        assert torch.equal(got["label"], expected["label"]) and torch.equal(got["video"], expected["video"])


@pytest.mark.parametrize("counts, readers", [([16, 16, 16, 16], 3), ([16] * 5 + [7], 4), ([5, 3], 6), ([8], 1),
                                             ([16] * 8, 4)])
def test_eval_share_reads_each_sample_once_and_each_shard_about_once(counts, readers):
    parts = [eval_share(counts, k, readers) for k in range(readers)]
    seen = sorted((i, j) for part in parts for i, r in part.items() for j in (range(counts[i]) if r is None else r))
    assert seen == [(i, j) for i, n in enumerate(counts) for j in range(n)]  # every sample once
    reads = sum(len(part) for part in parts)  # a reader reads a shard whole even for a part of it
    assert reads <= len(counts) + readers - 1
    whole = len(counts) - len(counts) % readers
    assert all(r is None for part in parts for i, r in part.items() if i < whole)  # whole shards: one reader each


def test_lost_shards_are_summed_per_epoch_whichever_epoch_a_stream_is_in():
    streams = [{"epoch": 3, "lost_in_epoch": 1, "lost_epoch_before": 2},  # its batch is already in epoch 3
               {"epoch": 2, "lost_in_epoch": 1}]  # still in epoch 2, from a checkpoint without the second key
    assert lost_per_epoch(streams) == [0, 0, 3, 1]  # slot e % 4: epoch 2 lost 3 shards, epoch 3 one so far


def test_repeated_augmentation_copies_a_video_and_resumes_exactly(tiny_demo):
    """data.repeat_aug 2: a batch of 4 is 2 videos x 2 copies, each copy its own crop and dense window; a resume
    after batch 5 goes on with the same copies, and an epoch (32 videos a rank) holds every video twice."""
    cfg = data_config(tiny_demo, repeat_aug=2, sampling="dense", frame_stride=2, crop_scale=[0.3, 1.0])
    model = ModelConfig(num_frames=4, img_size=32)
    batches = iter(make_loader(TrainStream.from_config(cfg, model, 1, 2, 4, seed=3), 0))
    seen = [next(batches) for _ in range(17)]
    for b in seen:
        assert b["key"][0::2] == b["key"][1::2] and len(set(b["key"])) == 2
        assert torch.equal(b["label"][0::2], b["label"][1::2])
        assert not torch.equal(b["video"][0], b["video"][1])  # another crop (and window) per copy
    assert [b["position"]["epoch"] for b in seen] == [0] * 16 + [1]  # 32 videos x 2 copies = 16 batches
    epoch = Counter(k for b in seen[:16] for k in b["key"])
    assert len(epoch) == 32 and set(epoch.values()) == {2}
    again = iter(make_loader(resumed(TrainStream.from_config(cfg, model, 1, 2, 4, seed=3),
                                     {seen[5]["stream"]: seen[5]["position"]}), 0))
    for expected in seen[6:]:
        got = next(again)
        assert got["key"] == expected["key"] and torch.equal(got["video"], expected["video"])
    with pytest.raises(ValueError, match="data.repeat_aug=2: must divide the batch size 3"):
        TrainStream.from_config(cfg, model, 1, 2, 3, seed=3)


def test_eval_stream_covers_every_clip_once(tiny_demo):
    keys = []
    for rank in range(3):
        stream = EvalStream.from_config(data_config(tiny_demo), MODEL, rank, 3, batch_size=5)
        batches, (end,) = eval_read(stream)
        assert len(batches) <= stream.num_batches and end["lost"] == [] and end["position"]["skipped"] == 0
        keys += [k for b in batches for k in b["key"]]
    assert sorted(keys) == [f"val{i:07d}" for i in range(32)]


def rewrite_shards(src: Path, dst: Path, edit) -> Path:
    """A copy of the dataset folder ``src`` whose tar members pass through ``edit(name, bytes) -> bytes | None``
    (None drops the member)."""
    dst.mkdir()
    for shard in read_manifest(src)["shards"]:
        with tarfile.open(src / shard["name"]) as tin, tarfile.open(dst / shard["name"], "w") as tout:
            for member in tin.getmembers():
                data = edit(member.name, tin.extractfile(member).read())
                if data is not None:
                    member.size = len(data)
                    tout.addfile(member, io.BytesIO(data))
    (dst / "manifest.json").write_text((src / "manifest.json").read_text())
    return dst


def test_corrupt_video_is_skipped_and_counted(tiny_demo, tmp_path):
    def corrupt(name: str, data: bytes) -> bytes:
        return b"\x00\x00\x00 ftypisom garbage" + data[200:260] if name.endswith("0000003.mp4") else data

    folder = rewrite_shards(tiny_demo / "train", tmp_path / "train", corrupt)
    stream = TrainStream.from_config(DataConfig(train=str(folder), shuffle_buffer=8), MODEL, 0, 1, 7, seed=0)
    batches = iter(make_loader(stream, 0))
    positions = [next(batches)["position"] for _ in range(9)]  # 63 clips good per epoch -> 9 batches of 7
    assert positions[-1]["skipped"] == 1 and positions[-1]["epoch"] == 0


BAD = {"0000003.mp4": b"\x00\x00\x00 ftypisom garbage", "0000005.cls": None, "0000007.cls": b"seven",
       "0000009.mp4": None, "0000011.txt": None, "0000013.json": b"{not json"}


@pytest.fixture(scope="module")
def bad_samples(tiny_demo, tmp_path_factory) -> Path:
    """The tiny demo's training shards with a corrupt mp4, a missing and an unparsable cls, no mp4, no caption
    (txt dropped: the demo's json has no captions) and unparsable json, one sample each."""
    def edit(name: str, data: bytes) -> bytes | None:
        return BAD.get(name.removeprefix("train"), data)

    return rewrite_shards(tiny_demo / "train", tmp_path_factory.mktemp("bad") / "train", edit)


@pytest.mark.parametrize("targets, bad", [("label", {3, 5, 7, 9}), ("captions", {3, 9, 11, 13})])
def test_bad_samples_are_skipped_and_counted(bad_samples, targets, bad):
    """Every DataError (corrupt video, missing or unparsable member, no caption) skips one sample and counts it."""
    stream = TrainStream.from_config(DataConfig(train=str(bad_samples), shuffle_buffer=8), ModelConfig(num_frames=4), 0, 1, 4,
                         seed=0, targets=targets)
    batches = iter(make_loader(stream, 0))
    epoch = [next(batches) for _ in range(15)]  # 60 good clips: 15 batches of 4
    done = {f"train-{i:06d}.tar": "0:16" for i in range(4)}  # a skipped sample was read: it counts as done
    assert epoch[-1]["position"] == {"epoch": 0, "consumed": 64, "skipped": 4, "short": 0, "skipped_shards": 0,
                                     "read_retries": 0, "lost_in_epoch": 0, "lost_epoch_before": 0,
                                     "done": done}
    keys = {k for b in epoch for k in b["key"]}
    assert keys == {f"train{i:07d}" for i in range(64)} - {f"train{i:07d}" for i in bad}


@pytest.mark.parametrize("error", [TypeError, KeyError, ValueError])
def test_a_bug_in_our_code_propagates_instead_of_being_counted(bad_samples, monkeypatch, error):
    """Only DataError means bad data: any other exception raised while a sample is processed is a bug and stops
    the stream (it would otherwise show up as skipped samples)."""
    def broken(self, num_frames, rng):
        raise error("a bug")

    monkeypatch.setattr(ClipSpec, "frame_indices", broken)  # runs inside the decoder's error handling
    for stream in (EvalStream.from_config(DataConfig(val=str(bad_samples)), MODEL, 0, 1, 4),
                   TrainStream.from_config(DataConfig(train=str(bad_samples), shuffle_buffer=8), MODEL, 0, 1, 4, seed=0)):
        with pytest.raises(error, match="a bug"):
            next(iter(make_loader(stream, 0)))
