"""The task interface: everything the trainer, the memory planner and the entry points know of a task.

A task owns its model, what the loader must deliver per sample (``targets``,
``clip_frames``), its loss, evaluation and metrics, and its rules: config checks, what
to prepare before training (demo data, a tokenizer) and a synthetic batch the planner can
measure. Nothing outside ``turbo_ds/tasks/`` looks at a task's name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from turbo_ds.config import Config, ConfigError, DataConfig
from turbo_ds.data.locations import is_remote
from turbo_ds.data.samples import Targets
from turbo_ds.data.shards import MANIFEST
from turbo_ds.data.source import ShardSource
from turbo_ds.models.flops import num_weights, vit_flops

Log = Callable[[str], None]


class Evaluation(ABC):
    """One pass over a validation set: the trainer reads it with an eval stream delivering ``clip_frames``
    frames and ``targets`` per sample, calls ``eval_begin`` once, then ``eval_step`` per batch
    (``eval_padding`` on ranks out of clips), then ``eval_metrics``; every key starts ``eval_prefix``.

    A task is the evaluation of its own ``data.val`` (opened once by the trainer); ``Task.extra_evaluations``
    adds others, each with its own ``source``.
    """

    targets: Targets
    "what the loader parses from each sample: class ids (``cls``) or captions (``txt``/json)"
    clip_frames: int
    "frames per sample the loader delivers"
    eval_prefix: str = "eval/"
    "prefix of this evaluation's metric keys (its skipped-sample counts included)"
    source: ShardSource | None = None
    "the dataset an extra evaluation reads (a task's own is data.val, which the trainer hands over)"

    def eval_begin(self, model: nn.Module, dtype: torch.dtype) -> None:
        """Before the first batch, on every rank (e.g. embed class prompts once per evaluation)."""

    @abstractmethod
    def eval_step(self, model: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> Any:
        """This rank's outputs for one validation batch (kept until ``eval_metrics``)."""

    @abstractmethod
    def eval_padding(self, model: nn.Module, dtype: torch.dtype) -> None:
        """A forward pass on a dummy sample, so a rank out of clips joins ZeRO-3's collectives."""

    @abstractmethod
    def eval_metrics(self, outputs: list[Any]) -> dict[str, Any]:
        """Metrics over every rank's ``eval_step`` outputs (a collective: every rank calls it)."""


class Task(Evaluation):
    """One trainable task. Subclasses set the class attributes and build ``model`` in ``__init__``."""

    targets: ClassVar[Targets]
    frames_key: ClassVar[str] = "model.num_frames"
    "the config key that holds the frames the loader delivers per sample (the planner grows it)"
    plannable: ClassVar[bool] = True
    "whether the memory planner (and so ``turbo.keep_ratio: auto``) can measure this task"
    transformers_export: ClassVar[bool] = False
    "whether an export (``turbo_ds.export``) is also a transformers VideoMAEForVideoClassification folder"

    model: nn.Module
    "what DeepSpeed trains: video batch (and captions) -> outputs for ``loss``"
    encoder: nn.Module
    "the Turbo video tower inside ``model`` (a ``VideoViT``)"
    tokens_total: int
    "space-time tokens per sample with every token kept"
    pretrained_report: Any = None
    "what loading ``model.pretrained`` did (logged by the trainer), or None"

    def __init__(self, cfg: Config, manifest: dict[str, Any]):
        self.cfg = cfg

    # ------------------------------------------------ before the task exists

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """The task's own config rules, and the files it will read; raise ConfigError naming the key."""
        if cfg.turbo.keep_ratio == "auto" and not cls.plannable:
            raise ConfigError(f"turbo.keep_ratio=auto: task={cfg.task} cannot be measured by the memory planner; "
                              "give turbo.keep_ratio as a number")
        pretrained = cfg.model.pretrained
        if pretrained is not None and not Path(pretrained).exists() and not cfg.model.generate_demo_clip:
            raise ConfigError(f"model.pretrained={pretrained}: no such file or directory; give a local "
                              "transformers VideoMAE or CLIP directory or a VideoMAE .pth")
        data = cfg.data
        if data.generate_demo and _local(data) and Path(data.train).parent != Path(data.val).parent:
            raise ConfigError(f"data.generate_demo: data.train={data.train} and data.val={data.val} must share a "
                              "parent folder (the demo is written to PARENT/train and PARENT/val)")

    @classmethod
    def prepare(cls, cfg: Config, log: Log) -> None:
        """Rank 0, before any rank builds the task: create what the run reads but may not exist yet."""
        data = cfg.data
        if data.generate_demo and _local(data) and not all((Path(p) / MANIFEST).is_file()
                                                           for p in (data.train, data.val)):
            cls.generate_demo(Path(data.train).parent, log)
        if cfg.model.generate_demo_clip and cfg.model.pretrained and not Path(cfg.model.pretrained).exists():
            from turbo_ds.prep.demo_clip import make_demo_clip

            make_demo_clip(cfg.model.pretrained, data.train, **demo_clip_sizes(cfg), log=log)

    @classmethod
    def generate_demo(cls, out: Path, log: Log) -> None:
        """Write the demo dataset of this task into ``out/train`` and ``out/val``."""
        from turbo_ds.prep.demo import generate_demo

        generate_demo(out, log=log)

    @classmethod
    def frames(cls, cfg: Config) -> int:
        """Frames per sample the loader delivers under ``cfg``."""
        section, key = cls.frames_key.split(".")
        return getattr(getattr(cfg, section), key)

    @classmethod
    def with_frames(cls, cfg: Config, frames: int) -> Config:
        """``cfg`` with ``frames`` per sample (for the planner)."""
        section, key = cls.frames_key.split(".")
        return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: frames})})

    def export_assets(self, out: Path) -> dict[str, str]:
        """Write what rebuilding this task's model needs besides its weights and config (e.g. a tokenizer) into the
        export folder ``out``; return the config keys (dotted) to point at them, as paths relative to ``out``."""
        return {}

    # ------------------------------------------------------------ training

    def set_keep_ratio(self, ratio: float) -> None:
        """The training keep ratio from now on (the trainer's schedule sets it before every step)."""
        self.encoder.turbo.set_keep_ratio(ratio)

    @property
    @abstractmethod
    def tokens_kept(self) -> int:
        """Tokens kept per sample at the current training keep ratio."""

    def forward_flops(self) -> float:
        """Model FLOPs of one training sample's forward pass at the current keep ratio (``models/flops.py``):
        the video tower on its kept tokens (once per encoder clip, e.g. long-video segments), the other
        weights (heads, temporal model) once per sample."""
        kept = self.encoder.turbo.num_kept(training=True)
        rest = num_weights(self.model) - num_weights(self.encoder)
        return self.tokens_kept // kept * vit_flops(self.encoder, kept) + 2.0 * rest

    @property
    def counters(self) -> dict[str, int]:
        """Running totals of this rank's training batches to sum over ranks and log (e.g. truncated captions)."""
        return {}

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        """The scalar training loss of one micro-batch (``model`` is the DeepSpeed engine)."""

    def synthetic_batch(self, micro: int, device: torch.device | str) -> dict[str, Any]:
        """A random batch of the training shape, for the memory planner."""
        size = self.cfg.model.img_size
        return {"video": torch.randn(micro, 3, self.clip_frames, size, size, device=device)}  # (B, C, F, H, W)

    # ---------------------------------------------------------- evaluation

    @torch.no_grad()
    def eval_padding(self, model: nn.Module, dtype: torch.dtype) -> None:
        model(dummy_clip(model, self.clip_frames, self.cfg.model.img_size, dtype))

    def extra_evaluations(self) -> list[Evaluation]:
        """Further validation sets evaluated at every eval (e.g. zero-shot classification)."""
        return []


def _local(data: DataConfig) -> bool:
    """Both splits are local folders: the only place the demo is generated into."""
    return not (is_remote(data.train) or is_remote(data.val))


def demo_clip_sizes(cfg: Config) -> dict[str, int]:
    """``make_demo_clip``'s sizes, from the recipe, so that the demo CLIP folder fits it."""
    m, x = cfg.model, cfg.text
    return {"width": m.width, "depth": m.depth, "heads": m.heads, "mlp_ratio": m.mlp_ratio, "patch_size": m.patch_size,
            "image_size": m.img_size, "text_width": x.width, "text_depth": x.depth, "text_heads": x.heads,
            "text_positions": x.max_length, "embed_dim": x.embed_dim, "vocab_size": x.tokenizer_vocab_size}


def dummy_clip(model: nn.Module, frames: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """One all-zero clip (1, C, T, H, W) on the model's device, for padding forward passes."""
    return torch.zeros(1, 3, frames, size, size, dtype=dtype, device=next(model.parameters()).device)
