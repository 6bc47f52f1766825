"""Turbo token selection: which space-time tokens the encoder keeps.

Selection works on patch *indices*, before the patch projection, so the embedding's
cost scales with the keep ratio too. Every sample in a batch keeps the same number of
tokens, so batches need no padding. Token index n enumerates the grid (T', H', W') in
time-major order: n = t * H'W' + h * W' + w.

Each strategy is a pure function returning sorted keep indices (B, K) int64, entered in
``STRATEGIES`` with its keep-count rule: the config type, ``keep_count``, the selector,
the benchmarks and the tests all read that one table, so a new strategy is one function
and one entry here. ``TokenSelector`` is the thin module that picks the ratio
(train/eval/schedule) and calls the configured strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from turbo_ds.config import TurboConfig

Grid = tuple[int, int, int]  # (T', H', W') tokens along time, height, width
PatchShape = tuple[int, int, int, int]  # (C, t, p, p): one raw tubelet, in Conv3d weight order


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


def _per_slice(spatial: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Spatial indices (B, T', k) within each slice -> sorted flat token indices (B, T' * k)."""
    t, h, w = grid
    offsets = torch.arange(t, device=spatial.device)[:, None] * (h * w)  # (T', 1): first token of each slice
    return (spatial + offsets).flatten(1)  # (B, T' * k), ascending: slices in order, sorted inside each


def tube_keep_indices(batch: int, grid: Grid, keep: int, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The same random spatial positions at every time step: (batch, keep) int64, keep = T' x spatial count."""
    t, h, w = grid
    assert keep % t == 0, f"tube keeps the same positions in each of {t} slices: keep {keep} must be a multiple of {t}"
    spatial = random_keep_indices(batch, h * w, keep // t, device, generator)  # (B, k)
    return _per_slice(spatial[:, None].expand(-1, t, -1), grid)


def frame_balanced_keep_indices(batch: int, grid: Grid, keep: int, device: torch.device | str = "cpu",
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """An independent random subset of equal size in every time slice: (batch, keep) int64."""
    t, h, w = grid
    assert keep % t == 0, f"frame_balanced keeps an equal share of {t} slices: keep {keep} must be a multiple of {t}"
    spatial = random_keep_indices(batch * t, h * w, keep // t, device, generator)  # (B*T', k)
    return _per_slice(spatial.reshape(batch, t, -1), grid)  # (B*T', k) -> (B, T', k)


def motion_scores(patches: torch.Tensor, grid: Grid, patch_shape: PatchShape) -> torch.Tensor:
    """Temporal change of each tubelet from its raw pixels: (B, N) float32, normalised to mean 1 per clip.

    ``patches`` (B, N, C*t*p*p) in Conv3d weight order ``patch_shape`` = (C, t, p, p). With t >= 2
    the score is the mean |difference| between consecutive frames inside the tubelet; with
    tubelet 1 it is the difference to the previous slice (the first slice uses the next one).
    Normalising makes ``motion_temperature`` independent of pixel scale and clip content.
    """
    b, n, p = patches.shape
    c, tubelet, ph, pw = patch_shape
    assert p == c * tubelet * ph * pw, f"patch size {p} does not match tubelet shape {patch_shape}"
    x = patches.float()
    if tubelet >= 2:
        x = x.reshape(b, n, c, tubelet, ph * pw)  # (B, N, C, t, p*p)
        score = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(2, 3, 4))  # (B, N)
    else:
        t, h, w = grid
        x = x.reshape(b, t, h * w, p)  # (B, T', H'W', P)
        diff = (x[:, 1:] - x[:, :-1]).abs().mean(dim=-1)  # (B, T'-1, H'W'): slice s vs s-1
        diff = torch.cat([diff[:, :1], diff], dim=1) if t > 1 else torch.zeros_like(x[..., 0])  # (B, T', H'W')
        score = diff.reshape(b, n)  # (B, N)
    return score / score.mean(dim=1, keepdim=True).clamp_min(1e-6)


def motion_keep_indices(scores: torch.Tensor, keep: int, temperature: float, mix: float = 0.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Favour high-motion tokens: (B, keep) int64, sorted.

    ``keep - round(keep * mix)`` tokens are sampled without replacement with probability
    proportional to exp(score / temperature) (Gumbel top-k; plain top-k at temperature 0);
    the other ``round(keep * mix)`` are drawn uniformly from the tokens not yet chosen.
    """
    b, n = scores.shape
    assert 1 <= keep <= n, f"cannot keep {keep} of {n} tokens"
    assert temperature >= 0 and 0 <= mix <= 1, f"temperature {temperature} < 0 or mix {mix} outside [0, 1]"
    n_random = round(keep * mix)
    logits = scores.float()
    if temperature > 0:
        u = torch.rand(b, n, device=scores.device, generator=generator).clamp_(1e-10, 1 - 1e-7)
        logits = logits / temperature - torch.log(-torch.log(u))  # + Gumbel(0, 1) noise
    order = logits.argsort(dim=1, descending=True)  # (B, N)
    chosen, rest = order[:, :keep - n_random], order[:, keep - n_random:]
    if n_random:
        pick = torch.rand(rest.shape, device=scores.device, generator=generator).argsort(dim=1)[:, :n_random]
        chosen = torch.cat([chosen, rest.gather(1, pick)], dim=1)  # (B, keep)
    return chosen.sort(dim=1).values


@dataclass(frozen=True)
class Strategy:
    """One way to choose the kept tokens."""

    select: Callable[[torch.Tensor, Grid, PatchShape, int, float, float], torch.Tensor]
    "(raw patches (B, N, P), grid, tubelet shape, K, motion temperature, motion mix) -> sorted keep indices (B, K)"
    per_slice: bool = False
    "keeps the same count in every time slice, so K is a multiple of T'"
    doc: str = ""


STRATEGIES: dict[str, Strategy] = {  # the config schema spells these names too (STRATEGY_NAMES)
    "random": Strategy(lambda p, grid, shape, keep, *_: random_keep_indices(len(p), p.shape[1], keep, p.device),
                       doc="a uniform random subset"),
    "tube": Strategy(lambda p, grid, shape, keep, *_: tube_keep_indices(len(p), grid, keep, p.device),
                     per_slice=True, doc="the same spatial positions at every time step"),
    "frame_balanced": Strategy(lambda p, grid, shape, keep, *_: frame_balanced_keep_indices(len(p), grid, keep,
                                                                                            p.device),
                               per_slice=True, doc="an equal share of every time slice"),
    "motion": Strategy(lambda p, grid, shape, keep, temperature, mix: motion_keep_indices(
        motion_scores(p, grid, shape), keep, temperature, mix),
        doc="favours tubelets whose pixels change most between frames"),
}


def keep_count(strategy: str, grid: Grid, keep_ratio: float) -> int:
    """Tokens kept per sample by ``strategy``: round(N * ratio), at least 1; a per-slice strategy keeps
    the same count in every time slice, K = T' * max(1, round(H'W' * ratio)), a multiple of T'."""
    t, h, w = grid
    if STRATEGIES[strategy].per_slice:
        return t * num_kept(h * w, keep_ratio)
    return num_kept(t * h * w, keep_ratio)


def keep_ratio_at(cfg: TurboConfig, step: int, total_steps: int) -> float:
    """Training keep ratio for 0-based optimizer step ``step`` of ``total_steps``.

    constant: ``keep_ratio``. linear/cosine: from ``keep_ratio`` at step 0 to ``keep_ratio_end``
    at step ``ramp_steps`` (0 = the first full-token step), then flat. The last
    ``full_token_steps`` steps keep every token.
    """
    assert 0 <= step < total_steps, f"step {step} outside [0, {total_steps})"
    plain_steps = total_steps - cfg.full_token_steps
    if step >= plain_steps:
        return 1.0
    if cfg.schedule == "constant":
        return cfg.keep_ratio
    assert cfg.keep_ratio_end is not None, f"turbo.schedule={cfg.schedule} needs turbo.keep_ratio_end"
    frac = min(step / (cfg.ramp_steps or plain_steps), 1.0)
    if cfg.schedule == "cosine":
        frac = (1 - math.cos(math.pi * frac)) / 2
    return cfg.keep_ratio + (cfg.keep_ratio_end - cfg.keep_ratio) * frac


class TokenSelector(nn.Module):
    """Chooses kept token indices: the current training ratio, or ``eval_keep_ratio`` in eval mode.

    Returns None when every token is kept, so the encoder skips the gather entirely. The
    training ratio starts at ``keep_ratio``; a schedule moves it with ``set_keep_ratio``
    (the trainer asks the task, ``Task.set_keep_ratio``, before each step).
    """

    def __init__(self, strategy: str, grid: Grid, patch_shape: PatchShape, keep_ratio: float,
                 eval_keep_ratio: float = 1.0, motion_temperature: float = 1.0, motion_mix: float = 0.0):
        super().__init__()
        assert strategy in STRATEGIES, f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}"
        assert 0 < eval_keep_ratio <= 1, f"eval_keep_ratio {eval_keep_ratio} outside (0, 1]"
        self.strategy, self.grid, self.patch_shape = strategy, grid, patch_shape
        self.motion_temperature, self.motion_mix = motion_temperature, motion_mix
        self.eval_keep_ratio = eval_keep_ratio
        self.set_keep_ratio(keep_ratio)

    def set_keep_ratio(self, keep_ratio: float) -> None:
        assert 0 < keep_ratio <= 1, f"keep_ratio {keep_ratio} outside (0, 1]"
        self.keep_ratio = keep_ratio

    def num_kept(self, training: bool | None = None) -> int:
        """Tokens kept per sample now (in training mode, or as ``training`` says)."""
        training = self.training if training is None else training
        return keep_count(self.strategy, self.grid, self.keep_ratio if training else self.eval_keep_ratio)

    def forward(self, patches: torch.Tensor) -> torch.Tensor | None:
        _, num_tokens, _ = patches.shape  # raw tubelet patches (B, N, P)
        assert num_tokens == math.prod(self.grid), f"{num_tokens} patches do not fill the grid {self.grid}"
        keep = self.num_kept()
        if keep == num_tokens:
            return None
        return STRATEGIES[self.strategy].select(patches, self.grid, self.patch_shape, keep, self.motion_temperature,
                                                self.motion_mix)

    def extra_repr(self) -> str:
        return (f"strategy={self.strategy}, keep_ratio={self.keep_ratio}, eval_keep_ratio={self.eval_keep_ratio}, "
                f"grid={self.grid}")
