"""The trainer's precision setup without DeepSpeed: the reference bare step of the benchmarks.

turbo_ds trains as DeepSpeed's bf16 optimizer does (the shipped JSONs): the model's weights are bf16,
forward and backward run in bf16 with no autocast, and the optimizer step works on fp32 master copies
of the weights: the bf16 gradients are copied to fp32, their global norm is clipped
(``gradient_clipping``), fused AdamW updates the masters, and the bf16 weights are refreshed from them.
``MasterWeightAdamW`` does exactly that work and nothing else (no ZeRO partitioning, no overflow check,
no engine), so trainer / bare compares the same arithmetic. With fp32 weights there are no copies.
"""

from __future__ import annotations

from typing import Iterable

import torch


def adamw(params: list[torch.Tensor], lr: float, betas: tuple[float, float],
          weight_decay: float) -> torch.optim.Optimizer:
    """Fused AdamW (CPU since torch 2.4, and CUDA), as the shipped JSONs ask for; the loop where fused is missing."""
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


class MasterWeightAdamW:
    """AdamW on fp32 master copies of (bf16) parameters, with gradient-norm clipping (``clip`` 0: off)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.05, clip: float = 1.0):
        self.params = [p for p in params if p.requires_grad]
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        self.masters = [p.detach().float() for p in self.params] if self.mixed else self.params  # .float() copies
        for p, m in zip(self.params, self.masters):  # gradients stay allocated, as DeepSpeed's buffers do
            p.grad = torch.zeros_like(p)
            m.grad = m.grad if m is p else torch.zeros_like(m)
        self.opt = adamw(self.masters, lr, betas, weight_decay)
        self.clip = clip

    def zero_grad(self) -> None:
        torch._foreach_zero_([p.grad for p in self.params])

    @torch.no_grad()
    def step(self) -> None:
        if self.mixed:
            torch._foreach_copy_([m.grad for m in self.masters], [p.grad for p in self.params])  # bf16 -> fp32
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.masters, self.clip, foreach=True)
        self.opt.step()
        if self.mixed:
            torch._foreach_copy_(self.params, self.masters)  # fp32 -> bf16 weights for the next forward
