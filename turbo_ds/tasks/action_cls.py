"""Action classification: video ViT + linear head, cross-entropy, top-1/top-5."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from turbo_ds.config import Config
from turbo_ds.engine.distributed import all_reduce_sum
from turbo_ds.models.pretrained import load_pretrained
from turbo_ds.models.vit import VideoClassifier, VideoViT
from turbo_ds.tasks.mixup import mix_batch, soft_targets


def class_names(cfg: Config, manifest: dict[str, Any]) -> list[str]:
    if not manifest["class_names"]:
        raise ValueError(f"data.train={cfg.data.train}: manifest has no class_names; rebuild the shards "
                         f"with --task {cfg.task}")
    return manifest["class_names"]


def dummy_clip(model: torch.nn.Module, frames: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """One all-zero clip (1, C, T, H, W) on the model's device, for padding forward passes."""
    return torch.zeros(1, 3, frames, size, size, dtype=dtype, device=next(model.parameters()).device)


class ActionClassification:
    """The task interface the trainer uses: ``model``, ``tokens_kept/total``, what the loader must
    provide (``clip_frames`` per sample, ``targets``), ``loss``, and ``eval_step`` per batch /
    ``eval_padding`` for ranks out of clips / ``eval_metrics`` over ranks."""

    targets = "label"
    num_segments = 1  # encoder clips per sample

    def __init__(self, cfg: Config, manifest: dict[str, Any]):
        self.cfg = cfg
        self.class_names = class_names(cfg, manifest)
        self.encoder = VideoViT(cfg.model, cfg.turbo)
        self.model = VideoClassifier(self.encoder, len(self.class_names))
        self.tokens_total = self.encoder.num_tokens
        self.clip_frames = cfg.model.num_frames
        # The head loads too when the checkpoint's class count matches.
        self.pretrained_report = load_pretrained(self.model, cfg.model.pretrained) if cfg.model.pretrained else None

    @property
    def tokens_kept(self) -> int:
        return self.num_segments * self.encoder.turbo.num_kept(training=True)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        tr = self.cfg.train
        video, targets = batch["video"], soft_targets(batch["label"], len(self.class_names), tr.label_smoothing)
        if tr.mixup_alpha > 0 or tr.cutmix_alpha > 0:
            video, targets = mix_batch(video, targets, tr.mixup_alpha, tr.cutmix_alpha)
        logits = model(video.to(dtype))  # (B, classes)
        return F.cross_entropy(logits.float(), targets)

    @torch.no_grad()
    def eval_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> list[float]:
        """Per-batch (top-1 hits, top-5 hits, videos); several views per video are softmax-averaged."""
        video = batch["video"]
        views = video.shape[1] if video.ndim == 6 else 1  # (B, V, C, T, H, W) for multi-view testing
        probs = model(video.flatten(0, 1).to(dtype) if views > 1 else video.to(dtype)).float().softmax(-1)
        scores = probs.unflatten(0, (-1, views)).mean(1)  # (B, classes)
        top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (B, 5)
        hits = top5 == batch["label"][:, None]  # (B, 5)
        return [hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), len(scores)]

    @torch.no_grad()
    def eval_padding(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        """A forward pass on a dummy clip, so ranks with fewer clips join ZeRO-3's collectives."""
        model(dummy_clip(model, self.clip_frames, self.cfg.model.img_size, dtype))

    def eval_metrics(self, outputs: list[list[float]]) -> dict[str, Any]:
        correct1, correct5, count = all_reduce_sum([sum(col) for col in zip(*outputs)] if outputs else [0.0] * 3)
        return {"eval/top1": correct1 / max(count, 1), "eval/top5": correct5 / max(count, 1),
                "eval/num_clips": int(count), "num_classes": len(self.class_names), "eval/chance": 1 / len(self.class_names)}
