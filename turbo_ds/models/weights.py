"""Weight files as users hold them, read for every model loader (``pretrained``: VideoMAE, ``clip``: CLIP):
transformers folders (config.json + (sharded) safetensors or pytorch_model.bin), single files, and
the report of what loading did. Nothing is downloaded."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from turbo_ds.config import ConfigError


class CheckpointMismatch(ConfigError):
    """The checkpoint cannot initialise this model; the message names the cause and the config key."""


@dataclass
class LoadReport:
    path: str
    source: str
    "'transformers' or 'videomae' (original layout)"
    loaded: list[str] = field(default_factory=list)
    "model tensors initialised from the checkpoint"
    missing: list[str] = field(default_factory=list)
    "model tensors the checkpoint did not provide (kept at their init)"
    unexpected: list[str] = field(default_factory=list)
    "checkpoint tensors (VideoMAE names) with no place in the model"
    notes: list[str] = field(default_factory=list)
    "everything else worth knowing: interpolation, head, biases, eps"

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.missing)
        lines = [f"pretrained {self.path} ({self.source} layout): loaded {len(self.loaded)}/{total} model tensors"]
        if self.missing:
            lines.append(f"  missing (kept at init): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {', '.join(_collapse(self.unexpected))}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def mark_pretrained(params: Iterable[nn.Parameter]) -> None:
    """Flag parameters initialised from a weights file; the others are new (``train.head_lr_scale`` reads this)."""
    for p in params:
        p.from_pretrained = True


def is_pretrained(p: nn.Parameter) -> bool:
    return getattr(p, "from_pretrained", False)


def _collapse(keys: list[str]) -> list[str]:
    """Summarise repeated per-block keys: decoder.blocks.0.x, decoder.blocks.1.x -> decoder.blocks.*.x (2)."""
    groups: dict[str, int] = {}
    for key in keys:
        pattern = re.sub(r"\.\d+\.", ".*.", key)
        groups[pattern] = groups.get(pattern, 0) + 1
    return [f"{k} ({n})" if n > 1 else k for k, n in groups.items()]


def load_tensors(path: Path) -> Any:
    """The tensors (or the pickled dict holding them) of one weights file: safetensors, or torch.load's
    weights_only (no code runs from a pickle)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    # weights_only: no arbitrary code from a pickle; original VideoMAE files also hold an argparse Namespace.
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
        return torch.load(path, map_location="cpu", weights_only=True)


def folder_config(path: Path, key: str = "model.pretrained") -> dict[str, Any]:
    """A transformers folder's config.json."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointMismatch(f"{key}={path}: a directory needs config.json (transformers save_pretrained output)")
    return json.loads(config_file.read_text())


def folder_tensors(path: Path, key: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """Every tensor of a transformers folder: (sharded) safetensors or pytorch_model.bin."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_tensors(path / shard).items()}
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return dict(load_tensors(path / name))
    raise CheckpointMismatch(f"{key}={path}: no model.safetensors or pytorch_model.bin in it")


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], report: LoadReport) -> LoadReport:
    """Load the tensors of ``state`` (our names) that ``model`` has, after checking their shapes; fill ``report``."""
    target = model.state_dict()
    for key, value in state.items():
        if key in target and value.shape != target[key].shape:
            raise CheckpointMismatch(f"checkpoint {key} has shape {tuple(value.shape)}, model "
                                     f"{tuple(target[key].shape)}")
    usable = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(usable, strict=False)
    params = dict(model.named_parameters())
    mark_pretrained(params[k] for k in usable if k in params)
    report.loaded = sorted(usable)
    report.missing = [k for k in target if k not in usable]
    report.unexpected = [k.removeprefix("encoder.") for k in state if k not in target]
    return report
