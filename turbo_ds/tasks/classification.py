"""Single-label classification of clips, shared by the action and long-video tasks (which hold one).

Targets are label-smoothed one-hot vectors, optionally mixed by Mixup/CutMix; evaluation
softmax-averages several views per video and counts top-1/top-5 hits over every rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from turbo_ds.config import Config, ConfigError
from turbo_ds.engine.distributed import all_reduce_sum
from turbo_ds.tasks.mixup import mix_batch, soft_targets


def class_names(cfg: Config, manifest: dict[str, Any]) -> list[str]:
    if not manifest.get("class_names"):
        raise ConfigError(f"data.train={cfg.data.train}: its manifest has no class_names; rebuild the shards with "
                          f"python data_prep/build_shards.py --task {cfg.task} (rows path,label)")
    return manifest["class_names"]


class Classification:
    """Loss, evaluation step and metrics of classifying each clip into ``class_names``."""

    def __init__(self, cfg: Config, manifest: dict[str, Any]):
        self.train = cfg.train
        self.class_names = class_names(cfg, manifest)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        tr = self.train
        video, targets = batch["video"], soft_targets(batch["label"], self.num_classes, tr.label_smoothing)
        if tr.mixup_alpha > 0 or tr.cutmix_alpha > 0:
            video, targets = mix_batch(video, targets, tr.mixup_alpha, tr.cutmix_alpha)
        logits = model(video.to(dtype))  # (B, classes)
        return F.cross_entropy(logits.float(), targets)

    @staticmethod
    @torch.no_grad()
    def scores(model: nn.Module, video: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Class probabilities (B, classes) of clips (B, C, T, H, W) or views (B, V, C, T, H, W), softmax-averaged."""
        views = video.shape[1] if video.ndim == 6 else 1
        probs = model(video.flatten(0, 1).to(dtype) if video.ndim == 6 else video.to(dtype)).float().softmax(-1)
        return probs.unflatten(0, (-1, views)).mean(1)  # (B*V, classes) -> (B, classes)

    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """(top-1 hits, top-5 hits, videos) of one batch, (3,) on the model's device (no host sync per batch)."""
        scores = self.scores(model, batch["video"], dtype)  # (B, classes)
        top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (B, 5)
        hits = top5 == batch["label"][:, None]  # (B, 5)
        return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), hits.new_tensor(len(scores), dtype=torch.long)])

    def eval_metrics(self, outputs: list[torch.Tensor]) -> dict[str, Any]:
        local = torch.stack(outputs).sum(0).tolist() if outputs else [0.0] * 3
        correct1, correct5, count = all_reduce_sum(local)
        return {"eval/top1": correct1 / max(count, 1), "eval/top5": correct5 / max(count, 1),
                "eval/num_clips": int(count), "num_classes": self.num_classes, "eval/chance": 1 / self.num_classes}

    def synthetic_labels(self, micro: int, device: torch.device | str) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (micro,), device=device)  # (B,)
