"""Mixup and CutMix for video clips, with soft targets.

CutMix pastes the same spatial box into every frame, so the mixed clip stays temporally
consistent (a box that moved between frames would create fake motion).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) class ids -> (B, classes) label-smoothed one-hot targets."""
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1 - smoothing) + off


def mix_batch(video: torch.Tensor, targets: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
              switch_prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each clip with the batch reversed; returns mixed (B, C, T, H, W) clips and (B, classes) targets.

    Uses CutMix with probability ``switch_prob`` when both are enabled, else whichever is on.
    """
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(()).item() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = video.flip(0)
    if use_cutmix:
        h, w = video.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        video = video.clone()
        video[..., top:bottom, left:right] = partner[..., top:bottom, left:right]  # same box in every frame
        lam = 1 - (bottom - top) * (right - left) / (h * w)  # the area actually pasted
    else:
        video = video * lam + partner * (1 - lam)
    return video, targets * lam + targets.flip(0) * (1 - lam)
