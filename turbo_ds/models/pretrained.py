"""Load VideoMAE weights from local files into ``VideoViT`` / ``VideoClassifier``. Nothing is downloaded.
(``load_pretrained`` hands CLIP folders and ``model.arch: clip`` to ``turbo_ds.models.clip``; both read
files through ``turbo_ds.models.weights``.)

Two layouts are read:

* a transformers directory (``save_pretrained`` output: config.json + model.safetensors,
  sharded safetensors or pytorch_model.bin) of ``VideoMAEModel``,
  ``VideoMAEForVideoClassification`` or ``VideoMAEForPreTraining``;
* an original VideoMAE checkpoint file (.pth/.pt/.bin/.safetensors): keys like
  ``blocks.0.attn.qkv.weight``, ``blocks.0.attn.q_bias``, ``fc_norm.weight``, optionally
  wrapped in {"model": ...} / {"module": ...} / {"state_dict": ...}, optionally prefixed
  ``encoder.`` (pretraining) or ``module.`` (DDP).

Both are first renamed to the original VideoMAE names, then mapped onto ours. The
result is a ``LoadReport`` the trainer logs; a checkpoint whose architecture does not
match the config raises ``CheckpointMismatch`` naming the cause.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from turbo_ds.models.clip import clip_config, load_clip_vision
from turbo_ds.models.vit import VideoClassifier, VideoViT, interpolate_pos_embed, sinusoid_table
from turbo_ds.models.weights import (CheckpointMismatch, LoadReport, folder_config, folder_tensors, load_matching,
                                     load_tensors)
from turbo_ds.turbo import Grid

# ------------------------------------------------------------------ reading files


@dataclass
class _Checkpoint:
    state: dict[str, torch.Tensor]
    source: str
    grid: Grid | None = None
    "the token grid it was trained on, from transformers' config.json"
    config: dict[str, Any] = field(default_factory=dict)
    "transformers config.json, when there is one"
    args: dict[str, Any] = field(default_factory=dict)
    "the original VideoMAE script's arguments, when the file holds them"


def _read(path: Path) -> _Checkpoint:
    if path.is_dir():
        config = folder_config(path)
        state = folder_tensors(path)
        if config.get("model_type", "videomae") != "videomae":
            raise CheckpointMismatch(f"model.pretrained={path}: model_type {config['model_type']!r}, expected videomae")
        image = config.get("image_size", 224)
        image = image if isinstance(image, int) else image[0]
        grid = (config.get("num_frames", 16) // config.get("tubelet_size", 2), image // config.get("patch_size", 16),
                image // config.get("patch_size", 16))
        return _Checkpoint(dict(state), "transformers", grid, config)
    raw = load_tensors(path)
    args = raw.get("args") if isinstance(raw, dict) else None
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointMismatch(f"model.pretrained={path}: not a state dict (nor one wrapped in model/module/state_dict)")
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    return _Checkpoint(dict(raw), "videomae", args=args if isinstance(args, dict) else {})


# --------------------------------------------------------------------- renaming

_HF_RULES = [  # transformers names -> original VideoMAE names
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.weight$", r"blocks.\1.attn.\2.weight"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(?:query\.bias|q_bias)$", r"blocks.\1.attn.q_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(?:value\.bias|v_bias)$", r"blocks.\1.attn.v_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_VIDEOMAE_RULES = [  # original VideoMAE names -> ours (qkv biases are fused separately)
    (r"^norm\.", "token_norm."),  # a final norm on tokens (pretraining encoder); we norm after pooling instead
    (r"^fc_norm\.", "norm."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.2."),
]


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            if re.search(pattern, key):
                key = re.sub(pattern, repl, key, count=1)
                break
        out[key] = value
    return out


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` where present; keys without it (decoders, heads) keep their names."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _to_videomae_names(ckpt: _Checkpoint, path: Path) -> dict[str, torch.Tensor]:
    state = _strip(ckpt.state, "module.")
    if "videomae.embeddings.patch_embeddings.projection.weight" in state or \
            "embeddings.patch_embeddings.projection.weight" in state:
        ckpt.source = "transformers"
        state = _rename(_strip(state, "videomae."), _HF_RULES)
        for i in sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.attn\.query\.weight$", k))}):
            # transformers keeps q, k, v apart; the original (and we) fuse them as rows [q; k; v].
            state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
                [state.pop(f"blocks.{i}.attn.{name}.weight") for name in ("query", "key", "value")])
    elif "encoder.patch_embed.proj.weight" in state:  # pretraining checkpoint: encoder.* plus decoder.*
        state = _strip(state, "encoder.")
    if "patch_embed.proj.weight" not in state:
        raise CheckpointMismatch(f"model.pretrained={path}: no patch embedding (patch_embed.proj.weight or "
                                 "embeddings.patch_embeddings.projection.weight): not a VideoMAE checkpoint")
    return state


# ---------------------------------------------------------------------- loading


def _check_architecture(state: dict[str, torch.Tensor], ckpt: _Checkpoint, encoder: VideoViT) -> None:
    """One clear error for a checkpoint that is another architecture than the config describes."""
    proj = state["patch_embed.proj.weight"]  # (D, C, t, p, p)
    if proj.shape[0] != encoder.width:
        raise CheckpointMismatch(f"checkpoint width {proj.shape[0]} != model.width {encoder.width}")
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth != len(encoder.blocks):
        raise CheckpointMismatch(f"checkpoint depth {depth} != model.depth {len(encoder.blocks)}")
    ours = tuple(encoder.patch_embed.patch_shape)
    if tuple(proj.shape[1:]) != ours:
        raise CheckpointMismatch(f"checkpoint tubelet (channels, tubelet_size, patch, patch) {tuple(proj.shape[1:])} "
                                 f"!= model {ours}; set model.tubelet_size / model.patch_size to match")
    if "blocks.0.mlp.fc1.weight" not in state:
        raise CheckpointMismatch("checkpoint has no blocks.0.mlp.fc1.weight: not a VideoMAE block layout")
    hidden, our_hidden = state["blocks.0.mlp.fc1.weight"].shape[0], encoder.blocks[0].mlp[0].out_features
    if hidden != our_hidden:
        raise CheckpointMismatch(f"checkpoint MLP width {hidden} != model.width x model.mlp_ratio = {our_hidden}")
    heads = ckpt.config.get("num_attention_heads")
    if heads is not None and heads != encoder.blocks[0].attn.heads:
        raise CheckpointMismatch(f"checkpoint heads {heads} != model.heads {encoder.blocks[0].attn.heads}")
    if "blocks.0.attn.q_bias" in state and encoder.blocks[0].attn.qkv.bias is None:
        raise CheckpointMismatch("checkpoint has q/v biases but model.qkv_bias=false; set model.qkv_bias=true")
    if "pos_embed" in state and not isinstance(encoder.pos_embed, nn.Parameter):
        raise CheckpointMismatch("checkpoint has a learned pos_embed table but model.pos_embed=sincos; "
                                 "set model.pos_embed=learned")


def _fuse_qkv_bias(state: dict[str, torch.Tensor], encoder: VideoViT, notes: list[str]) -> None:
    """VideoMAE's q_bias / v_bias -> our fused qkv bias [q; 0; v]. A k bias shifts every score of a
    query equally, so softmax ignores it: zero is exact, and its gradient stays zero."""
    if encoder.blocks[0].attn.qkv.bias is None:
        return
    has_bias = "blocks.0.attn.q_bias" in state
    for i in range(len(encoder.blocks)):
        q, v = state.pop(f"blocks.{i}.attn.q_bias", None), state.pop(f"blocks.{i}.attn.v_bias", None)
        zero = torch.zeros(encoder.width, dtype=state[f"blocks.{i}.attn.qkv.weight"].dtype)
        state[f"blocks.{i}.attn.qkv.bias"] = torch.cat([zero if q is None else q, zero, zero if v is None else v])
    notes.append("qkv bias: VideoMAE q/v biases loaded, k bias set to 0 (no effect on attention)" if has_bias else
                 "qkv bias: checkpoint has none; set to 0 (exactly the checkpoint's function)")


def _position_table(state: dict[str, torch.Tensor], ckpt: _Checkpoint, encoder: VideoViT, grid: Grid | None,
                    notes: list[str]) -> None:
    """Learned tables are resampled to the model's grid; fixed sinusoids are rebuilt, never stored."""
    if not isinstance(encoder.pos_embed, nn.Parameter):
        notes.append(f"position embeddings: fixed 1-D sinusoid table, not stored in checkpoints; rebuilt for the "
                     f"model's {encoder.num_tokens} tokens (grid {encoder.grid}), so no interpolation is needed")
        return
    if "pos_embed" not in state:
        # The checkpoint was trained with fixed sinusoids: start the learned table from them.
        state["pos_embed"] = sinusoid_table(encoder.num_tokens, encoder.width)
        notes.append("pos_embed: checkpoint uses fixed sinusoids; learned table initialised from the sinusoid table")
        return
    table, n0 = state["pos_embed"], state["pos_embed"].shape[1]
    src, how, args = grid or ckpt.grid, "given" if grid else "from the checkpoint's config", ckpt.args
    if src is None and {"num_frames", "input_size", "tubelet_size"} <= args.keys():
        # The original training script's arguments say which grid the table was trained on.
        side = args["input_size"] // encoder.patch_embed.p  # patch size already checked equal to ours
        src, how = (args["num_frames"] // args["tubelet_size"], side, side), "from the checkpoint's args"
    if src is None and n0 == encoder.num_tokens:
        src, how = encoder.grid, "same token count as the model"
    if src is None:  # guessing a factorisation of n0 could silently scramble positions
        raise CheckpointMismatch(f"checkpoint pos_embed has {n0} positions, model grid {encoder.grid} has "
                                 f"{encoder.num_tokens}, and the file does not record its grid (no args with "
                                 "num_frames/input_size/tubelet_size); pass grid=(T', H', W') to load_pretrained")
    if src[0] * src[1] * src[2] != n0:
        raise CheckpointMismatch(f"checkpoint pos_embed has {n0} positions, not grid {src} ({how})")
    if src != encoder.grid:
        state["pos_embed"] = interpolate_pos_embed(table, src, encoder.grid)
        notes.append(f"pos_embed: interpolated (trilinear) from checkpoint grid {src} ({how}) to model grid "
                     f"{encoder.grid} (T', H', W')")


def load_pretrained(model: VideoViT | VideoClassifier, path: str | Path, grid: Grid | None = None) -> LoadReport:
    """Initialise ``model`` (an encoder, or a classifier: then its head too) from local VideoMAE weights.

    ``grid`` (T', H', W') overrides the checkpoint grid of a learned position table when
    the file does not record it. Returns the report to log; raises ``CheckpointMismatch``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointMismatch(f"model.pretrained={path}: no such file or directory")
    encoder = model.encoder if isinstance(model, VideoClassifier) else model
    if encoder.arch == "clip" or clip_config(path) is not None:
        return load_clip_vision(model, path)
    ckpt = _read(path)
    state = _to_videomae_names(ckpt, path)
    report = LoadReport(str(path), ckpt.source)
    _check_architecture(state, ckpt, encoder)
    _fuse_qkv_bias(state, encoder, report.notes)
    _position_table(state, ckpt, encoder, grid, report.notes)
    state = _rename(state, _VIDEOMAE_RULES)

    eps = ckpt.config.get("layer_norm_eps")
    if eps is not None and eps != encoder.norm.eps:
        report.notes.append(f"LayerNorm eps: checkpoint {eps:g}, model.norm_eps {encoder.norm.eps:g} "
                            f"(set model.norm_eps={eps:g} to reproduce it exactly)")
    if "token_norm.weight" in state:
        report.notes.append("checkpoint's final token norm not used: this encoder norms the mean-pooled features "
                            "(VideoMAE fine-tuning's fc_norm), which start at init")

    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    state = {f"encoder.{k}" if encoder is not model else k: v for k, v in state.items() if not k.startswith("head.")}
    if head and encoder is model:
        report.notes.append(f"head ({head['weight'].shape[0]} classes) not loaded: loading an encoder only")
    elif head:
        ours = model.head.weight.shape[0]
        if head["weight"].shape == model.head.weight.shape:
            state.update({f"head.{k}": v for k, v in head.items()})
            report.notes.append(f"head loaded ({ours} classes)")
        else:
            report.notes.append(f"head skipped: checkpoint has {head['weight'].shape[0]} classes, model {ours} "
                                "(kept at init)")
    return load_matching(model, state, report)
