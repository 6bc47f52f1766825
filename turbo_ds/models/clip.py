"""Load CLIP weights from a local transformers folder (``save_pretrained`` output of ``CLIPModel``,
``CLIPVisionModel`` or ``CLIPVisionModelWithProjection``) into the CLIP layout of ``VideoViT``
(``model.arch: clip``), and CLIP's projections and logit scale into ``VideoTextModel``.
Nothing is downloaded; the text tower itself loads through transformers (``models/text.py``).

How the image encoder becomes a video encoder:

* patch embedding: CLIP's (D, 3, p, p) kernel is inflated to the tubelet (D, 3, t, p, p) by
  **centre-frame inflation** (as ViViT): the kernel goes to time slice t // 2, the other slices
  are zero. Each tubelet then embeds as CLIP embeds its centre frame, so a clip of identical
  frames embeds every tubelet exactly as CLIP embeds the image's patch;
* positions: CLIP's spatial table (its class row for the class token, resampled bilinearly
  when model.img_size differs) plus a temporal table initialised to zero;
* class token, ln_pre, blocks (q/k/v fused into one projection), ln_post: as CLIP; the
  class token's attention bias (``VideoViT.class_key_bias``) makes T identical frames
  attend exactly as one image does.

Together: at keep ratio 1.0 a clip of identical frames gives CLIP's image embedding (tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from turbo_ds.models.vit import VideoClassifier, VideoViT, interpolate_pos_embed
from turbo_ds.models.weights import (CheckpointMismatch, LoadReport, folder_config, folder_tensors, load_matching,
                                     mark_pretrained)

CLIP_TYPES = ("clip", "clip_vision_model", "clip_text_model")
"transformers model_type values of CLIP folders (a CLIPModel, or one of its towers)"

_VISION_RULES = {  # CLIP vision names (without the vision_model. prefix) -> ours, per block: .i. kept
    "embeddings.class_embedding": "cls_token",
    "pre_layrnorm.": "norm_pre.",
    "post_layernorm.": "norm.",
    "self_attn.out_proj.": "attn.proj.",
    "layer_norm1.": "norm1.",
    "layer_norm2.": "norm2.",
    "mlp.fc1.": "mlp.0.",
    "mlp.fc2.": "mlp.2.",
}


def clip_config(path: str | Path) -> dict[str, Any] | None:
    """The config.json of a CLIP folder, or None when ``path`` is not one."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return None
    config = folder_config(path)
    return config if config.get("model_type") in CLIP_TYPES else None


def vision_config(config: dict[str, Any]) -> dict[str, Any]:
    """The vision tower's settings of a CLIPModel or CLIPVisionModel config.json (transformers' defaults filled)."""
    from transformers import CLIPVisionConfig  # fills what a saved config leaves at its defaults

    return CLIPVisionConfig(**config.get("vision_config", config)).to_dict()


def _vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's tensors, unprefixed (a CLIPModel stores them under vision_model.)."""
    if any(k.startswith("vision_model.") for k in state):
        return {k.removeprefix("vision_model."): v for k, v in state.items() if k.startswith("vision_model.")}
    return {k: v for k, v in state.items() if not k.startswith(("text_model.", "visual_projection", "text_projection",
                                                                 "logit_scale"))}


def _rename(key: str) -> str:
    key = key.replace("encoder.layers.", "blocks.")
    for old, new in _VISION_RULES.items():
        key = key.replace(old, new)
    return key


def inflate(kernel: torch.Tensor, tubelet: int) -> torch.Tensor:
    """CLIP's (D, C, p, p) patch kernel -> (D, C, t, p, p) with the kernel at time slice t // 2 (centre frame)."""
    out = kernel.new_zeros(kernel.shape[0], kernel.shape[1], tubelet, *kernel.shape[2:])  # (D, C, t, p, p)
    out[:, :, tubelet // 2] = kernel
    return out


def _check(cfg: dict[str, Any], encoder: VideoViT, path: Path) -> None:
    """One clear error, naming the checkpoint's value and the model.* key, for what cannot load."""
    block = encoder.blocks[0]
    pairs = (("width", cfg["hidden_size"], "model.width", encoder.width),
             ("patch size", cfg["patch_size"], "model.patch_size", encoder.patch_embed.p),
             ("depth", cfg["num_hidden_layers"], "model.depth", len(encoder.blocks)),
             ("heads", cfg["num_attention_heads"], "model.heads", block.attn.heads),
             ("MLP width", cfg["intermediate_size"], "model.width x model.mlp_ratio", block.mlp[0].out_features),
             ("channels", cfg.get("num_channels", 3), "3 (RGB)", encoder.patch_embed.patch_shape[0]))
    for what, theirs, key, ours in pairs:
        if theirs != ours:
            raise CheckpointMismatch(f"model.pretrained={path}: CLIP {what} {theirs} != {key} {ours}; set it to "
                                     f"{theirs} or use a CLIP folder with {ours}")
    if cfg.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise CheckpointMismatch(f"model.pretrained={path}: CLIP hidden_act {cfg['hidden_act']!r}; model.arch=clip "
                                 "uses QuickGELU (OpenAI CLIP)")
    if block.attn.qkv.bias is None:
        raise CheckpointMismatch(f"model.pretrained={path}: CLIP has q/k/v biases but model.qkv_bias=false; "
                                 "set model.qkv_bias=true")


def load_clip_vision(model: VideoViT | VideoClassifier, path: str | Path) -> LoadReport:
    """Initialise the CLIP-layout ``model`` (an encoder, or a classifier: its head stays at init) from a CLIP folder."""
    path = Path(path)
    encoder = model.encoder if isinstance(model, VideoClassifier) else model
    config = clip_config(path)
    if encoder.arch != "clip":
        raise CheckpointMismatch(f"model.pretrained={path}: a CLIP folder; set model.arch=clip (is {encoder.arch})")
    if config is None or config["model_type"] == "clip_text_model":
        raise CheckpointMismatch(f"model.pretrained={path}: model.arch=clip needs a local CLIPModel or "
                                 "CLIPVisionModel folder (save_pretrained output)")
    cfg = vision_config(config)
    _check(cfg, encoder, path)
    report = LoadReport(str(path), "transformers CLIP")
    raw = folder_tensors(path)
    state = {_rename(k): v for k, v in _vision_state(raw).items()}

    kernel = state.pop("embeddings.patch_embedding.weight")  # (D, 3, p, p)
    state["patch_embed.proj.weight"] = inflate(kernel, encoder.patch_embed.t)
    report.notes.append(f"patch embedding: CLIP's {kernel.shape[-1]}x{kernel.shape[-1]} kernel inflated to the "
                        f"{encoder.patch_embed.t}-frame tubelet at its centre frame ({encoder.patch_embed.t // 2})")
    table = state.pop("embeddings.position_embedding.weight")  # (1 + H0 W0, D)
    side = cfg["image_size"] // cfg["patch_size"]
    spatial = interpolate_pos_embed(table[None, 1:], (1, side, side), (1, *encoder.grid[1:]))  # (1, H'W', D)
    state["pos_embed"] = torch.cat([table[None, :1], spatial], dim=1)  # (1, 1 + H'W', D)
    if (side, side) != encoder.grid[1:]:
        report.notes.append(f"pos_embed: CLIP's {side}x{side} spatial grid resampled (bilinear) to the model's "
                            f"{encoder.grid[1]}x{encoder.grid[2]}")
    report.notes.append(f"temporal_pos_embed: new, zero for all {encoder.grid[0]} time slices")
    for i in range(len(encoder.blocks)):  # CLIP keeps q, k, v apart; we fuse them as rows [q; k; v]
        for kind in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [state.pop(f"blocks.{i}.self_attn.{n}_proj.{kind}") for n in "qkv"])
    if cfg["layer_norm_eps"] != encoder.norm.eps:
        report.notes.append(f"LayerNorm eps: checkpoint {cfg['layer_norm_eps']:g}, model.norm_eps {encoder.norm.eps:g} "
                            f"(set model.norm_eps={cfg['layer_norm_eps']:g} to reproduce it exactly)")

    prefix = "encoder." if encoder is not model else ""
    return load_matching(model, {prefix + k: v for k, v in state.items()}, report)


def load_clip_heads(model: nn.Module, video: str | None, text: str | None) -> list[str]:
    """CLIP's visual/text projections and logit scale into a ``VideoTextModel`` from the CLIP folders
    ``video`` (model.pretrained) and ``text`` (text.pretrained) that have them; returns notes to log.

    The logit scale comes from the text folder when it has one, else the video folder's.
    """
    notes, scale_from = [], None
    for key, folder, proj in (("model.pretrained", video, model.video_proj), ("text.pretrained", text, model.text_proj)):
        if folder is None or clip_config(folder) is None:
            continue
        state = folder_tensors(Path(folder), key)
        name = "visual_projection.weight" if proj is model.video_proj else "text_projection.weight"
        if name in state:
            weight = state[name]  # (E, D)
            if weight.shape != proj.weight.shape:
                raise CheckpointMismatch(f"{key}={folder}: CLIP {name.split('.')[0]} maps {weight.shape[1]} -> "
                                         f"{weight.shape[0]}, model {proj.weight.shape[1]} -> {proj.weight.shape[0]}; "
                                         f"set text.embed_dim={weight.shape[0]}")
            with torch.no_grad():
                proj.weight.copy_(weight)
            mark_pretrained([proj.weight])
            notes.append(f"{name.split('.')[0]}: loaded from {folder}")
        else:
            notes.append(f"{name.split('.')[0]}: not in {folder} (a tower without projection): new, random")
        if "logit_scale" in state:
            scale_from = (folder, state["logit_scale"])
    if scale_from is not None:
        with torch.no_grad():
            model.log_scale.copy_(scale_from[1].reshape(1).to(model.log_scale.dtype))
        mark_pretrained([model.log_scale])
        notes.append(f"logit scale: {scale_from[1].exp().item():.2f} (temperature {(-scale_from[1]).exp().item():.4f}) "
                     f"from {scale_from[0]}; text.temperature not used")
    return notes
