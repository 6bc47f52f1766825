"""Long-video classifiers over clips of F frames. Pure PyTorch: no distributed or logging code.

Two ways to encode a long clip (``long_video.mode``):

* ``segments``: cut the clip into S = F / T segments of T = ``model.num_frames`` frames;
  one shared ``VideoViT`` (with Turbo) encodes all B*S segments as one batch; a small
  temporal Transformer with learned segment positions mixes the S embeddings, then a
  linear head classifies. Encoder memory grows linearly with F.
* ``joint``: one ``VideoViT`` built for F frames attends over all kept space-time tokens
  of the clip at once (attention memory grows with F squared: where Turbo helps most).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from turbo_ds.config import LongVideoConfig, ModelConfig, TurboConfig
from turbo_ds.models.vit import Block, VideoClassifier, VideoViT, run_blocks, sinusoid_table


class TemporalTransformer(nn.Module):
    """Segment embeddings (B, S, D) + learned temporal positions -> blocks -> clip feature (B, out_dim).

    ``pooling``: ``"cls"`` prepends a learned token and returns it; ``"mean"`` averages the
    segments; ``"concat"`` returns all S outputs in order (out_dim = S * D), so the head reads
    every position directly. With ``depth=0`` no block runs: mean pooling is then order-blind.
    """

    def __init__(self, width: int, depth: int, heads: int, num_segments: int, pooling: str = "cls",
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, activation_checkpointing: bool = False):
        super().__init__()
        assert pooling in ("cls", "mean", "concat"), f"unknown temporal pooling {pooling!r}"
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if pooling == "cls" else None
        # Learned, but started from sinusoids of unit scale: segment embeddings come LayerNormed, and a
        # tiny (std 0.02) start leaves the model order-blind for hundreds of steps, while the label is the order.
        self.pos_embed = nn.Parameter(sinusoid_table(num_segments + (pooling == "cls"), width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, norm_eps=norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.num_segments, self.pooling, self.activation_checkpointing = num_segments, pooling, activation_checkpointing
        self.out_dim = width * num_segments if pooling == "concat" else width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape  # (B, S, D)
        assert s == self.num_segments, f"{s} segments, temporal model built for {self.num_segments}"
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)  # (B, 1+S, D)
        x = x + self.pos_embed.to(x.dtype)
        x = self.norm(run_blocks(self.blocks, x, self.activation_checkpointing))
        if self.pooling == "concat":
            return x.flatten(1)  # (B, S*D), segment after segment
        return x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, D)


class SegmentClassifier(nn.Module):
    """Shared segment encoder + temporal Transformer + linear head: (B, C, F, H, W) -> (B, classes).

    In eval mode with ``eval_chunk_segments`` = k in [1, S), the encoder runs on k segments
    of every clip at a time (B*k clips per call) instead of all B*S at once: the same
    output for a fraction of the activation memory, since segments are encoded independently.
    """

    def __init__(self, encoder: VideoViT, temporal: TemporalTransformer, num_classes: int,
                 eval_chunk_segments: int = 0):
        super().__init__()
        self.encoder, self.temporal = encoder, temporal
        self.head = nn.Linear(temporal.out_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.num_segments, self.segment_frames = temporal.num_segments, encoder.grid[0] * encoder.patch_embed.t
        self.eval_chunk_segments = eval_chunk_segments

    @property
    def chunked(self) -> bool:
        """Whether evaluation runs the encoder on fewer than all segments at a time."""
        return 0 < self.eval_chunk_segments < self.num_segments

    def encode_segments(self, video: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = video.shape  # (B, C, F, H, W)
        s, t = self.num_segments, self.segment_frames
        assert f == s * t, f"clip of {f} frames; model expects {s} segments x {t} frames"
        segments = video.reshape(b, c, s, t, h, w)  # (B, C, S, T, H, W): segment k = frames [k*T, (k+1)*T)
        step = self.eval_chunk_segments if self.chunked and not self.training else s
        embeddings = []
        for k in range(0, s, step):
            chunk = segments[:, :, k:k + step]  # (B, C, s', T, H, W)
            n = chunk.shape[2]
            chunk = chunk.transpose(1, 2).reshape(b * n, c, t, h, w)  # (B*s', C, T, H, W): one batch of clips
            embeddings.append(self.encoder(chunk).view(b, n, -1))  # (B*s', D) -> (B, s', D)
        return torch.cat(embeddings, dim=1)  # (B, S, D)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.temporal(self.encode_segments(video)))  # (B, classes)


def clip_model_config(model: ModelConfig, lv: LongVideoConfig) -> ModelConfig:
    """The encoder config: ``model`` as given for segments, rebuilt for all F frames for joint."""
    return dataclasses.replace(model, num_frames=lv.frames) if lv.mode == "joint" else model


def build_long_video_model(model: ModelConfig, lv: LongVideoConfig, turbo: TurboConfig | float,
                           num_classes: int) -> SegmentClassifier | VideoClassifier:
    """Segments: SegmentClassifier; joint: a VideoClassifier whose encoder spans the whole clip."""
    encoder = VideoViT(clip_model_config(model, lv), turbo)
    if lv.mode == "joint":
        return VideoClassifier(encoder, num_classes)
    temporal = TemporalTransformer(encoder.width, lv.temporal_depth, lv.temporal_heads, lv.frames // model.num_frames,
                                   lv.pooling, model.mlp_ratio, model.norm_eps, model.activation_checkpointing)
    return SegmentClassifier(encoder, temporal, num_classes, lv.eval_chunk_segments)
