"""Long-video activity classification: F frames spread over the whole video, one label per video.

The model (``turbo_ds.models.long_video``) encodes the clip as S segments through a
shared Turbo ViT plus a temporal Transformer, or jointly with one ViT over all frames.
Loss (with mixup/cutmix/label smoothing) and multi-view top-1/top-5 evaluation are those of
action classification (``Classification``). In segments mode evaluation may encode the
segments in chunks (``long_video.eval_chunk_segments``; reported as ``eval/chunked``) so
that all tokens fit without dropping any.

Videos shorter than F frames repeat frames (``sample_indices`` spreads F picks over the
frames there are), so every clip has exactly F frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from turbo_ds.config import Config, ConfigError
from turbo_ds.models.long_video import SegmentClassifier, build_long_video_model
from turbo_ds.models.pretrained import load_pretrained
from turbo_ds.tasks.base import Log, Task
from turbo_ds.tasks.classification import Classification


class LongVideoClassification(Task):
    targets = "label"
    frames_key = "long_video.frames"

    def __init__(self, cfg: Config, manifest: dict[str, Any]):
        super().__init__(cfg, manifest)
        self.objective = Classification(cfg, manifest)
        self.model = build_long_video_model(cfg.model, cfg.long_video, cfg.turbo, self.objective.num_classes)
        self.encoder = self.model.encoder
        segmented = isinstance(self.model, SegmentClassifier)
        # Segments: the encoder only (temporal model and head start fresh); joint: the head too if classes match.
        target = self.encoder if segmented else self.model
        self.pretrained_report = load_pretrained(target, cfg.model.pretrained) if cfg.model.pretrained else None
        self.clip_frames = cfg.long_video.frames
        self.num_segments = self.model.num_segments if segmented else 1  # encoder clips per sample
        self.tokens_total = self.num_segments * self.encoder.num_tokens
        self.eval_chunked = segmented and self.model.chunked

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """How the F frames split into segments (or tubelets, in joint mode), and uniform sampling."""
        super().check_config(cfg)
        lv, m = cfg.long_video, cfg.model
        if lv.mode == "segments":
            if lv.frames % m.num_frames:
                raise ConfigError(f"long_video.frames={lv.frames}: must be a multiple of model.num_frames="
                                  f"{m.num_frames} (segments mode cuts the clip into segments of model.num_frames "
                                  f"frames), e.g. {max(1, lv.frames // m.num_frames) * m.num_frames}")
            if m.width % lv.temporal_heads:
                raise ConfigError(f"long_video.temporal_heads={lv.temporal_heads}: must divide model.width={m.width}")
        elif lv.frames % m.tubelet_size:
            raise ConfigError(f"long_video.frames={lv.frames}: must be a multiple of model.tubelet_size="
                              f"{m.tubelet_size} (joint mode encodes all frames as one clip)")
        if cfg.data.sampling != "uniform":
            raise ConfigError(f"data.sampling={cfg.data.sampling}: task=long_video samples frames uniformly over "
                              "the whole video; set data.sampling=uniform")

    @classmethod
    def generate_demo(cls, out: Path, log: Log) -> None:
        from turbo_ds.prep.demo import generate_long_demo

        generate_long_demo(out, log=log)

    @property
    def tokens_kept(self) -> int:
        return self.num_segments * self.encoder.turbo.num_kept(training=True)

    def loss(self, model: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        return self.objective.loss(model, batch, dtype)

    def synthetic_batch(self, micro: int, device: torch.device | str) -> dict[str, Any]:
        return {**super().synthetic_batch(micro, device), "label": self.objective.synthetic_labels(micro, device)}

    def eval_step(self, model: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        return self.objective.eval_step(model, batch, dtype)

    def eval_metrics(self, outputs: list[torch.Tensor]) -> dict[str, Any]:
        return {**self.objective.eval_metrics(outputs), "eval/chunked": self.eval_chunked,
                "eval/frames": self.clip_frames, "eval/segments": self.num_segments}
