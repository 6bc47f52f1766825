"""What the optimizer gets: parameter groups (no weight decay on biases, norms and position embeddings;
layer-wise LR decay over the video encoder's blocks) and the warmup-cosine LR schedule.

Used by the trainer to build the engine, and by ``turbo_ds.export`` to read ZeRO-0's fp32
masters, which DeepSpeed lays out group by group in this order.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from turbo_ds.models.vit import VideoViT
from turbo_ds.models.weights import is_pretrained


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup from 0, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def video_layer_ids(model: torch.nn.Module, depth: int) -> dict[int, int]:
    """Layer index of every video-encoder parameter: 0 for embeddings, i + 1 for block i, depth + 1
    after the blocks. Parameters outside a VideoViT (heads, text or temporal towers) are absent."""
    ids = {}
    for module in model.modules():
        if isinstance(module, VideoViT):
            for name, p in module.named_parameters():
                block = int(name.split(".")[1]) + 1 if name.startswith("blocks.") else None
                ids[id(p)] = block if block is not None else 0 if name.startswith(module.embedding_names) else depth + 1
    return ids


def param_groups(model: torch.nn.Module, base_lr: float, layer_decay: float = 1.0, depth: int = 0,
                 head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and position embeddings; optional layer-wise LR decay; optionally
    ``head_lr_scale`` x the lr for the parameters no pretrained weights initialised (new heads, projections, a new
    tower: ``models.weights.is_pretrained``).

    Each group carries its own lr (the JSON's lr times the layer's and the head's scale), which the
    warmup-cosine schedule then multiplies.
    """
    layers = video_layer_ids(model, depth) if layer_decay < 1 else {}
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layers.get(id(p), depth + 1)
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        new = head_lr_scale != 1 and not is_pretrained(p)  # at scale 1 the groups are as before (checkpoint layout)
        lr = base_lr * layer_decay ** (depth + 1 - layer) * (head_lr_scale if new else 1.0)
        group = groups.setdefault((layer, no_decay, new), {"params": [], "lr": lr})
        if no_decay:
            group["weight_decay"] = 0.0
        group["params"].append(p)
    return list(groups.values())


def group_names(groups: list[dict[str, Any]], model: torch.nn.Module) -> list[list[str]]:
    """Parameter names of each of ``groups`` (``param_groups``' answer), in order: the layout of ZeRO-0's fp32
    masters, which the trainer records in every checkpoint for the export."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in groups]
