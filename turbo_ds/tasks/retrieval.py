"""Text<->video retrieval metrics on a similarity matrix: pure functions, no distributed code.

``sim`` is (num_captions, num_videos); ``caption_video[q]`` is the index of caption q's video,
so a video may have several captions. Ranks are 1-based. Ties count against the query
(pessimistic), so collapsed embeddings score chance, not a perfect recall.

Dual-softmax (DSL) re-scoring (CAMoE; InternVideo2 and UMT report it beside the plain
numbers) multiplies each score by a prior from the other direction: for text->video, how
strongly the video prefers this caption over every other caption (a softmax over the
captions), and vice versa. It uses the whole test set at once (transductive), so it is
reported next to the plain metrics, never instead of them.
"""

from __future__ import annotations

import torch

RECALL_AT = (1, 5, 10)


def t2v_ranks(sim: torch.Tensor, caption_video: torch.Tensor) -> torch.Tensor:
    """(Q,) rank of each caption's own video among all videos."""
    target = sim.gather(1, caption_video[:, None])  # (Q, 1)
    return (sim >= target).sum(dim=1)  # (Q,): the target itself plus every video scoring at least as high


def v2t_ranks(sim: torch.Tensor, caption_video: torch.Tensor) -> torch.Tensor:
    """(V',) for each video that has captions, the rank of its best-ranked caption among all captions."""
    own = caption_video[:, None] == torch.arange(sim.shape[1], device=sim.device)[None]  # (Q, V)
    best_own = sim.masked_fill(~own, float("-inf")).amax(dim=0)  # (V,)
    ranks = ((sim >= best_own[None]) & ~own).sum(dim=0) + 1  # (V,): other videos' captions at least as high
    return ranks[own.any(dim=0)]  # a video without captions is no query


def rank_summary(prefix: str, ranks: torch.Tensor) -> dict[str, float]:
    """R@1/5/10 as fractions, median (numpy convention: mean of the middle two) and mean rank."""
    ranks = ranks.double()
    out = {f"{prefix}_r{k}": (ranks <= k).double().mean().item() for k in RECALL_AT}
    return {**out, f"{prefix}_medr": ranks.quantile(0.5).item(), f"{prefix}_meanr": ranks.mean().item()}


def dual_softmax(sim: torch.Tensor, scale: float, dim: int) -> torch.Tensor:
    """``sim`` (Q, V) times its softmax at ``scale`` along ``dim``: dim 0 (over captions) re-scores text->video,
    dim 1 (over videos) video->text."""
    return sim * torch.softmax(sim.double() * scale, dim=dim).to(sim.dtype)


def retrieval_metrics(sim: torch.Tensor, caption_video: torch.Tensor, dsl_scale: float | None = None) -> dict[str, float]:
    """t2v_* (each caption a query, its video the target) and v2t_* (each video a query, a hit on any caption);
    with ``dsl_scale`` (the model's logit scale) also t2v_dsl_* and v2t_dsl_* after dual-softmax re-scoring."""
    assert sim.ndim == 2 and caption_video.shape == (sim.shape[0],), "sim (Q, V) needs caption_video (Q,)"
    assert sim.shape[0] > 0, "no captions to evaluate"
    assert 0 <= int(caption_video.min()) and int(caption_video.max()) < sim.shape[1], "caption_video out of range"
    out = {**rank_summary("t2v", t2v_ranks(sim, caption_video)), **rank_summary("v2t", v2t_ranks(sim, caption_video))}
    if dsl_scale is not None:
        out.update(rank_summary("t2v_dsl", t2v_ranks(dual_softmax(sim, dsl_scale, 0), caption_video)))
        out.update(rank_summary("v2t_dsl", v2t_ranks(dual_softmax(sim, dsl_scale, 1), caption_video)))
    return out
