"""Gathering tensors and objects from every rank; no-ops in a single process (dist not initialised).

``all_gather_with_grad`` is what makes contrastive negatives global: every rank sees the
features of the whole global batch, and gradients flow back to the rank that made them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's (b, ...) tensor into (R*b, ...) in rank order.

    Backward: the gradient of rank r's slice is the SUM over ranks of the gradients each
    rank's loss sends to that slice (all-reduce, then slice). All-reduce rather than
    reduce-scatter because gloo has no reduce-scatter; the tensors are small embeddings.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (R*b, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # (R*b, ...): sum of every rank's loss gradient
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]  # (b, ...)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each of R ranks -> (R*b, ...) on every rank, differentiable; ``x`` itself with one rank.

    Every rank must pass the same shape. Gradient scaling: if every rank computes the same
    loss L on the gathered tensor, rank r's parameters receive R * dL/d(its own slice),
    so DeepSpeed's average over ranks yields exactly dL/dθ of a single process on the
    concatenated batch. Parameters used outside the gather (e.g. a temperature applied on
    every rank) receive dL/dθ on each rank, which the average leaves unchanged.
    """
    if _world() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` without torch.distributed)."""
    if _world() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
