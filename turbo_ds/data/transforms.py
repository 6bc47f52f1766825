"""Clip transforms in plain torch (no torchvision): crops, flip, resize, normalisation.

A clip is a uint8 tensor (T, H, W, C); every frame of a clip gets the same crop and
flip, so motion is preserved. The work is ordered to touch as few bytes as possible:
crop, flip and resize on uint8 (a channels-last uint8 resize is ~20x faster than a float
one) straight into the uint8 batch; normalisation to float happens once per batch on the
training device (``Normalizer``), so the loader moves a quarter of the bytes of float pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # (top, left, height, width)


def random_resized_crop_box(h: int, w: int, scale: tuple[float, float], rng: np.random.Generator,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """A crop covering ``scale`` of the area at a random aspect ratio."""
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        ch, cw = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if 0 < ch <= h and 0 < cw <= w:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return center_crop_box(h, w)  # fall back to the largest centred square


def center_crop_box(h: int, w: int) -> Box:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def spatial_crop_boxes(h: int, w: int, num_crops: int) -> list[Box]:
    """Evaluation crops: the centred square (1), or squares at the start, centre and end of the long side (3)."""
    if num_crops == 1:
        return [center_crop_box(h, w)]
    if num_crops != 3:
        raise ValueError(f"num_crops={num_crops}: must be 1 or 3")
    side = min(h, w)
    offsets = [0, (max(h, w) - side) // 2, max(h, w) - side]
    return [(o, 0, side, side) if h > w else (0, o, side, side) for o in offsets]


class Normalizer:
    """uint8 video (..., C, T, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, on the video's device."""

    def __init__(self, mean: list[float], std: list[float]):
        # host constants, copied to each device once (the loader's workers normalise nothing: uint8 travels)
        self.scale = torch.tensor([1 / (255 * s) for s in std], device="cpu").view(3, 1, 1, 1)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std)], device="cpu").view(3, 1, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # copied to a device once, not per batch

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if video.device not in self._on:
            self._on[video.device] = self.scale.to(video.device), self.shift.to(video.device)
        scale, shift = self._on[video.device]
        return video.to(torch.float32).mul_(scale).sub_(shift)  # one converting copy, then in place


def crop_flip_resize(clip: torch.Tensor, box: Box, flip: bool, size: int) -> torch.Tensor:
    """Crop (T, H, W, C) uint8 to ``box``, maybe mirror it, resize to (T, size, size, C) uint8."""
    top, left, ch, cw = box
    x = clip[:, top : top + ch, left : left + cw]  # a view: no copy yet
    if flip:
        x = x.flip(2)
    if (ch, cw) != (size, size):
        # A (T, C, h, w) view of channels-last uint8 takes torch's fast uint8 path; antialias only when shrinking.
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=ch > size or cw > size).permute(0, 2, 3, 1)
    return x
