"""Turbo token selection: which space-time tokens the encoder keeps.

Selection works on patch *indices*, before the patch projection, so the embedding's
cost scales with the keep ratio too. Every sample in a batch keeps the same number of
tokens, so batches need no padding.
"""

from __future__ import annotations

import torch
from torch import nn


def num_kept(num_tokens: int, keep_ratio: float) -> int:
    """K = round(N * keep_ratio), at least one token."""
    assert 0 < keep_ratio <= 1, f"keep_ratio {keep_ratio} outside (0, 1]"
    return max(1, round(num_tokens * keep_ratio))


def random_keep_indices(batch: int, num_tokens: int, keep: int, device: torch.device | str = "cpu",
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random subset of ``keep`` token indices per sample, sorted: (batch, keep) int64."""
    assert 1 <= keep <= num_tokens, f"cannot keep {keep} of {num_tokens} tokens"
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    # Sorting keeps tokens in space-time order; it does not change the set.
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


class TokenSelector(nn.Module):
    """Chooses kept token indices: ``keep_ratio`` in training, ``eval_keep_ratio`` in eval mode.

    Returns None when every token is kept, so the encoder skips the gather entirely.
    """

    def __init__(self, keep_ratio: float, eval_keep_ratio: float = 1.0):
        super().__init__()
        self.keep_ratio, self.eval_keep_ratio = keep_ratio, eval_keep_ratio

    def forward(self, patches: torch.Tensor) -> torch.Tensor | None:
        batch, num_tokens, _ = patches.shape  # raw tubelet patches (B, N, P)
        ratio = self.keep_ratio if self.training else self.eval_keep_ratio
        keep = num_kept(num_tokens, ratio)
        if keep == num_tokens:
            return None
        return random_keep_indices(batch, num_tokens, keep, patches.device)

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, eval_keep_ratio={self.eval_keep_ratio}"
