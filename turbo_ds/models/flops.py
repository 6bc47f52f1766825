"""Model FLOPs of Transformer towers, counted from their parameters and the tokens they see. Pure PyTorch.

The usual model-FLOPs count (as in PaLM's MFU): a forward pass costs 2 FLOPs per weight per
token it multiplies, plus 4 * tokens^2 * width per attention layer (scores and the weighted
sum); a training step is 3x the forward (backward = 2x); recomputation by activation
checkpointing is not counted. With Turbo the video tower sees only its kept tokens, so this
is the work token dropout leaves, and TFLOP/s at keep 0.25 compare fairly with keep 1.0.
"""

from __future__ import annotations

from torch import nn

TRAIN_FACTOR = 3  # forward + backward (2x forward)


def num_weights(*modules: nn.Module) -> int:
    """Parameters of ``modules``; ZeRO-3 partitioned parameters report their full size in ``ds_numel``."""
    return sum(getattr(p, "ds_numel", p.numel()) for m in modules for p in m.parameters())


def transformer_flops(weights: int, layers: int, tokens: int, width: int) -> float:
    """Forward FLOPs of one sequence of ``tokens`` through ``layers`` blocks holding ``weights`` parameters."""
    return 2.0 * weights * tokens + 4.0 * layers * tokens**2 * width


def vit_flops(vit: nn.Module, tokens: int) -> float:
    """Forward FLOPs of one clip through a ``VideoViT`` keeping ``tokens`` tokens (patch projection + blocks)."""
    return transformer_flops(num_weights(vit.patch_embed, vit.blocks), len(vit.blocks), tokens, vit.width)
