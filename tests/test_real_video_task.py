"""The real-video fidelity task (bench/real_video_fidelity.py): its labels are the motion they name, and
train/val never share a source frame."""

import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import real_video_fidelity as rvf  # noqa: E402

pytestmark = pytest.mark.unit


def source(frames: int = 200, h: int = 96, w: int = 170) -> np.ndarray:
    """A (T, H, W, 3) video whose pixels encode where they are: R = frame index, G = row, B = column."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([t, y, x], -1).astype(np.uint8)


@pytest.mark.parametrize("label, dy, dx", [("pan_left", 0, -1), ("pan_right", 0, 1), ("pan_up", -1, 0),
                                           ("pan_down", 1, 0), ("forward_1x", 0, 0)])
def test_a_pan_moves_the_window_by_its_step_each_frame(label, dy, dx):
    clip = rvf.cut(source(), label, "train", np.random.default_rng(1))
    assert clip.shape == (rvf.FRAMES, rvf.SIZE, rvf.SIZE, 3)
    corners = clip[:, 0, 0, 1:].astype(int)  # (FRAMES, [row, column]) of each frame's top-left pixel
    assert (np.diff(corners, axis=0) == [dy * rvf.PAN_PX, dx * rvf.PAN_PX]).all()


@pytest.mark.parametrize("label, step", [("forward_1x", 1), ("forward_2x", 2), ("reverse_1x", -1),
                                         ("reverse_2x", -2), ("pan_up", 1)])
def test_playback_labels_set_the_direction_and_speed_of_time(label, step):
    clip = rvf.cut(source(), label, "train", np.random.default_rng(2))
    assert (np.diff(clip[:, 0, 0, 0].astype(int)) == step).all()


@pytest.mark.parametrize("label", rvf.CLASSES)
def test_train_and_val_clips_come_from_either_side_of_the_time_split(label):
    video = source()
    boundary = int(len(video) * rvf.TRAIN_FRACTION)
    rng = np.random.default_rng(3)
    for _ in range(20):
        assert rvf.cut(video, label, "train", rng)[:, 0, 0, 0].max() < boundary
        assert rvf.cut(video, label, "val", rng)[:, 0, 0, 0].min() >= boundary


def test_a_source_too_short_for_a_clip_gives_none():
    assert rvf.cut(source(frames=40), "forward_2x", "val", np.random.default_rng(0)) is None
