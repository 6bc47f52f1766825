"""Action classification: a Turbo video ViT + linear head over short clips."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from turbo_ds.config import Config
from turbo_ds.models.pretrained import load_pretrained
from turbo_ds.models.vit import VideoClassifier, VideoViT
from turbo_ds.tasks.base import Task
from turbo_ds.tasks.classification import Classification


class ActionClassification(Task):
    targets = "label"
    transformers_export = True  # one clip of model.num_frames per video, as transformers' pipeline samples it

    def __init__(self, cfg: Config, manifest: dict[str, Any]):
        super().__init__(cfg, manifest)
        self.objective = Classification(cfg, manifest)
        self.encoder = VideoViT(cfg.model, cfg.turbo)
        self.model = VideoClassifier(self.encoder, self.objective.num_classes)
        self.tokens_total = self.encoder.num_tokens
        self.clip_frames = cfg.model.num_frames
        # The head loads too when the checkpoint's class count matches.
        self.pretrained_report = load_pretrained(self.model, cfg.model.pretrained) if cfg.model.pretrained else None

    @property
    def tokens_kept(self) -> int:
        return self.encoder.turbo.num_kept(training=True)

    def loss(self, model: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        return self.objective.loss(model, batch, dtype)

    def synthetic_batch(self, micro: int, device: torch.device | str) -> dict[str, Any]:
        return {**super().synthetic_batch(micro, device), "label": self.objective.synthetic_labels(micro, device)}

    def eval_step(self, model: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        return self.objective.eval_step(model, batch, dtype)

    def eval_metrics(self, outputs: list[torch.Tensor]) -> dict[str, Any]:
        return self.objective.eval_metrics(outputs)
