"""Clip transforms in plain torch (no torchvision): crops, flip, resize, normalisation, RandAugment.

A clip is a uint8 tensor (T, H, W, C); every frame of a clip gets the same crop and
flip, so motion is preserved. The work is ordered to touch as few bytes as possible:
crop, flip and resize on uint8 (a channels-last uint8 resize is ~20x faster than a float
one) straight into the uint8 batch; normalisation to float happens once per batch on the
training device (``Normalizer``), so the loader moves a quarter of the bytes of float pixels.
"""

from __future__ import annotations

import math
from typing import Callable

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


# ------------------------------------------------------------------ RandAugment, batched on the device
#
# timm's "increasing" RandAugment set (VideoMAE's rand-m7-n4-inc1) on a whole clip: every frame of a clip gets
# the same ops at the same magnitude (statistics such as autocontrast's range are the clip's), as a video
# augmentation must. The loader draws each clip's ops (``RandAugment.draw``: cheap, seeded per sample, so a
# resume is exact); the batch applies them on the device after the uint8 copy, op by op over the clips that
# drew it. Magnitude m is on timm's scale of 10. Equalize is left out (a per-clip histogram has no cheap batched
# form here). Geometric ops turn about the centre and fill with grey 128, as timm's video recipes.

def _blend(x: torch.Tensor, base: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``base + factor * (x - base)``, factor per clip: PIL's ImageEnhance."""
    return base + factor.view(-1, 1, 1, 1, 1) * (x - base)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, T, H, W) -> (N, 1, T, H, W): ITU-R 601-2 luma, as PIL's "L"."""
    return (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1)).sum(dim=1, keepdim=True)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5 of 13), the one-pixel border kept, as ImageEnhance.Sharpness."""
    n, c, t, h, w = x.shape
    kernel = x.new_tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]).div(13).expand(c * t, 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x.reshape(n, c * t, h, w), kernel, groups=c * t).view(n, c, t, h - 2, w - 2)
    return out


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each clip (N, C, T, H, W) warped by its (N, 2, 3) normalised-coordinate map, grey 128 outside."""
    n, c, t, h, w = x.shape
    grid = F.affine_grid(theta, [n, c * t, h, w], align_corners=False)
    out = F.grid_sample(x.reshape(n, c * t, h, w) - 128, grid, align_corners=False)  # (N, C*T, H, W): every frame
    return out.view(n, c, t, h, w) + 128


def _theta(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
           tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) rows [[a, b, tx], [c, d, ty]] from per-clip (N,) entries."""
    return torch.stack([torch.stack([a, b, tx], dim=1), torch.stack([c, d, ty], dim=1)], dim=1)


def _rotate(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    angle = sign * math.radians(30 * level)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return _affine(x, _theta(cos, -sin * h / w, sin * w / h, cos, zero, zero))


def _shear(axis: int) -> "Op":
    def op(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s, one, zero = sign * 0.3 * level, torch.ones_like(sign), torch.zeros_like(sign)
        if axis == 0:
            return _affine(x, _theta(one, s * h / w, zero, one, zero, zero))
        return _affine(x, _theta(one, zero, s * w / h, one, zero, zero))
    return op


def _translate(axis: int) -> "Op":
    def op(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
        shift, one, zero = sign * 0.45 * level * 2, torch.ones_like(sign), torch.zeros_like(sign)  # of [-1, 1]
        return _affine(x, _theta(one, zero, zero, one, *((shift, zero) if axis == 0 else (zero, shift))))
    return op


def _autocontrast(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    low, high = x.amin(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True)  # per clip and channel
    scale = torch.where(high > low, 255 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return torch.where(high > low, (x - low) * scale, x)


def _posterize(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    step = 2 ** (8 - (4 - int(level * 4)))  # keep 4 - int(4 m / 10) bits
    return torch.floor(x / step) * step


def _solarize(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 256 - int(level * 256), 255 - x, x)


def _solarize_add(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 128, (x + int(level * 110)).clamp_max(255), x)


def _enhance(base: Callable[[torch.Tensor], torch.Tensor]) -> "Op":
    def op(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
        return _blend(x, base(x), 1 + sign * 0.9 * level).clamp(0, 255)
    return op


Op = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]  # (clips, level m/10, sign per clip) -> clips
RANDAUG_OPS: dict[str, Op] = {
    "autocontrast": _autocontrast,
    "invert": lambda x, level, sign: 255 - x,
    "rotate": _rotate,
    "posterize": _posterize,
    "solarize": _solarize,
    "solarize_add": _solarize_add,
    "color": _enhance(_gray),
    "contrast": _enhance(lambda x: _gray(x).mean(dim=(2, 3, 4), keepdim=True)),
    "brightness": _enhance(torch.zeros_like),
    "sharpness": _enhance(_smooth),
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}


class RandAugment:
    """``n`` ops drawn per clip from RANDAUG_OPS at magnitude ``m`` (of 10), each with a random sign."""

    def __init__(self, n: int, m: float):
        self.n, self.level = n, m / 10
        self.ops = list(RANDAUG_OPS.values())

    def draw(self, rng: np.random.Generator) -> list[list[int]]:
        """One clip's ops: ``n`` rows (op index, sign +-1), drawn in the loader from the sample's rng."""
        return [[int(rng.integers(len(self.ops))), 1 - 2 * int(rng.integers(2))] for _ in range(self.n)]

    def __call__(self, video: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """uint8 or float (B, C, T, H, W) and each clip's draw (B, n, 2) -> float32 (B, C, T, H, W) in [0, 255]."""
        x = video.to(torch.float32, copy=True)  # ops write into it
        drawn = drawn.to(x.device)
        for slot in range(self.n):
            for k, op in enumerate(self.ops):
                clips = (drawn[:, slot, 0] == k).nonzero().flatten()  # the clips that drew op k in this slot
                if len(clips):
                    x[clips] = op(x[clips], self.level, drawn[clips, slot, 1].to(x.dtype))
        return x

    def clip(self, clip: torch.Tensor, drawn: list[list[int]]) -> torch.Tensor:
        """The CPU path for one clip as the loader holds it, (T, H, W, C) uint8 -> float32 (T, H, W, C):
        its ops one after another (what the batched path must equal)."""
        x = clip.permute(3, 0, 1, 2).unsqueeze(0).to(torch.float32)  # (1, C, T, H, W)
        for k, sign in drawn:
            x = self.ops[k](x, self.level, torch.tensor([float(sign)]))
        return x[0].permute(1, 2, 3, 0)
