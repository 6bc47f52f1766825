"""Our ``VideoClassifier`` as a transformers ``VideoMAEForVideoClassification``, and back. Pure PyTorch.

Same function, other names: transformers' VideoMAE (use_mean_pooling) is pre-norm blocks, exact
GELU, a fixed sinusoid position table (rebuilt, never stored), mean pooling, ``fc_norm`` and a
linear classifier, which is our layout. transformers keeps q, k, v apart with biases on q and
v only; our fused qkv bias also has a k part, which adds the same amount to every score of a
query, so softmax cancels it: dropping it on the way out (zero on the way back) changes no output.
A learned position table has no place in transformers' VideoMAE: such a model exports as ours only.
"""

from __future__ import annotations

import re

import torch

from turbo_ds.config import DataConfig, ModelConfig

_BLOCK = {  # our block parameter -> transformers' (under videomae.encoder.layer.<i>.)
    "norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
    "mlp.0": "intermediate.dense", "mlp.2": "output.dense",
}
_TOP = {"encoder.patch_embed.proj": "videomae.embeddings.patch_embeddings.projection", "encoder.norm": "fc_norm",
        "head": "classifier"}
_QKV = ("query", "key", "value")


class NotConvertible(ValueError):
    """The model has no exact transformers VideoMAE equivalent; the message says why."""


def to_videomae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our classifier's state dict -> ``VideoMAEForVideoClassification``'s (the same tensors, split or renamed)."""
    out = {}
    for key, value in state.items():
        name, kind = key.rsplit(".", 1)  # kind: weight | bias
        block = re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)", name)
        prefix = f"videomae.encoder.layer.{block.group(1)}." if block else ""
        if block and block.group(2) == "attn.qkv":
            q, k, v = value.chunk(3)  # rows [q; k; v]
            parts = dict(zip(_QKV, (q, k, v))) if kind == "weight" else {"query": q, "value": v}  # k bias: no effect
            out.update({f"{prefix}attention.attention.{n}.{kind}": t.contiguous() for n, t in parts.items()})
        elif block and block.group(2) in _BLOCK:
            out[f"{prefix}{_BLOCK[block.group(2)]}.{kind}"] = value
        elif name in _TOP:
            out[f"{_TOP[name]}.{kind}"] = value
        else:
            raise NotConvertible(f"{key} has no place in transformers' VideoMAEForVideoClassification"
                                 + (" (a learned position table; transformers' VideoMAE uses fixed sinusoids)"
                                    if key == "encoder.pos_embed" else ""))
    return out


def from_videomae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``to_videomae``: q, k, v fused again, with a zero k bias."""
    block_names = {v: k for k, v in _BLOCK.items()}
    top_names = {v: k for k, v in _TOP.items()}
    out, qkv = {}, {}
    for key, value in state.items():
        name, kind = key.rsplit(".", 1)
        block = re.fullmatch(r"videomae\.encoder\.layer\.(\d+)\.(.+)", name)
        attn = block and re.fullmatch(r"attention\.attention\.(query|key|value)", block.group(2))
        if attn:
            qkv.setdefault((block.group(1), kind), {})[attn.group(1)] = value
        elif block:
            out[f"encoder.blocks.{block.group(1)}.{block_names[block.group(2)]}.{kind}"] = value
        else:
            out[f"{top_names[name]}.{kind}"] = value
    for (i, kind), parts in qkv.items():
        if kind == "bias":
            parts.setdefault("key", torch.zeros_like(parts["query"]))
        out[f"encoder.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in _QKV])  # rows [q; k; v]
    return out


def videomae_config(m: ModelConfig, class_names: list[str]) -> dict:
    """transformers' config.json of the classifier ``m`` describes, labels from ``class_names``."""
    if m.pos_embed != "sincos":
        raise NotConvertible(f"model.pos_embed={m.pos_embed}: transformers' VideoMAE has only the fixed sinusoid "
                             "table (model.pos_embed=sincos)")
    return {
        "architectures": ["VideoMAEForVideoClassification"], "model_type": "videomae",
        "image_size": m.img_size, "patch_size": m.patch_size, "num_channels": 3, "num_frames": m.num_frames,
        "tubelet_size": m.tubelet_size, "hidden_size": m.width, "num_hidden_layers": m.depth,
        "num_attention_heads": m.heads, "intermediate_size": int(m.width * m.mlp_ratio), "hidden_act": "gelu",
        "layer_norm_eps": m.norm_eps, "qv_bias": m.qkv_bias, "qkv_bias": m.qkv_bias,  # 5.x name, 4.x name
        "use_mean_pooling": True, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "id2label": dict(enumerate(class_names)), "label2id": {name: i for i, name in enumerate(class_names)},
    }


def image_processor_config(m: ModelConfig, data: DataConfig) -> dict:
    """preprocessor_config.json: shortest side to img_size, centre crop, our mean/std (as our evaluation)."""
    return {
        "image_processor_type": "VideoMAEImageProcessor", "do_resize": True, "size": {"shortest_edge": m.img_size},
        "resample": 2, "do_center_crop": True, "crop_size": {"height": m.img_size, "width": m.img_size},  # bilinear
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(data.mean), "image_std": list(data.std),
    }
