"""Clip transforms in plain torch (no torchvision): crops, flip, normalisation.

A clip is a uint8 tensor (T, H, W, C); every frame of a clip gets the same crop and
flip, so motion is preserved.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_resized_crop_box(h: int, w: int, scale: tuple[float, float], rng: np.random.Generator,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop covering ``scale`` of the area at a random aspect ratio."""
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        ch, cw = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if 0 < ch <= h and 0 < cw <= w:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)  # fall back to the largest centred square
    return (h - side) // 2, (w - side) // 2, side, side


def center_crop_box(h: int, w: int) -> tuple[int, int, int, int]:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def crop_resize(clip: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop (T, H, W, C) uint8 and resize to (C, T, size, size) float in [0, 1]."""
    top, left, ch, cw = box
    x = clip[:, top : top + ch, left : left + cw].permute(0, 3, 1, 2).float().div_(255)  # (T, C, ch, cw)
    if (ch, cw) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(1, 0, 2, 3)  # (C, T, size, size)


def normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalise (C, T, H, W) per channel."""
    return (x - torch.tensor(mean)[:, None, None, None]) / torch.tensor(std)[:, None, None, None]
