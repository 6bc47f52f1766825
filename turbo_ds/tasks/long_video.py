"""Long-video activity classification: F frames spread over the whole video, one label per video.

The model (``turbo_ds.models.long_video``) encodes the clip as S segments through a
shared Turbo ViT plus a temporal Transformer, or jointly with one ViT over all frames.
Loss (with mixup/cutmix/label smoothing) and multi-view top-1/top-5 evaluation are those of
action classification. In segments mode evaluation may encode the segments in chunks
(``long_video.eval_chunk_segments``; reported as ``eval/chunked``) so that all tokens fit
without dropping any.

Videos shorter than F frames repeat frames (``sample_indices`` spreads F picks over the
frames there are), so every clip has exactly F frames.
"""

from __future__ import annotations

from typing import Any

from turbo_ds.config import Config
from turbo_ds.models.long_video import SegmentClassifier, build_long_video_model
from turbo_ds.models.pretrained import load_pretrained
from turbo_ds.tasks.action_cls import ActionClassification, class_names


class LongVideoClassification(ActionClassification):
    """The trainer's task interface (see ``ActionClassification``, whose loss, multi-view ``eval_step``
    and metrics it shares) for clips of ``long_video.frames`` frames."""

    def __init__(self, cfg: Config, manifest: dict[str, Any]):
        # Not ActionClassification.__init__: that builds a short-clip model.
        self.cfg, lv = cfg, cfg.long_video
        self.class_names = class_names(cfg, manifest)
        self.model = build_long_video_model(cfg.model, lv, cfg.turbo, len(self.class_names))
        self.encoder = self.model.encoder
        # Segments: the encoder only (temporal model and head start fresh); joint: the head too if classes match.
        target = self.encoder if isinstance(self.model, SegmentClassifier) else self.model
        self.pretrained_report = load_pretrained(target, cfg.model.pretrained) if cfg.model.pretrained else None
        self.clip_frames = lv.frames  # frames per video the data pipeline must deliver
        self.num_segments = self.model.num_segments if isinstance(self.model, SegmentClassifier) else 1
        self.tokens_total = self.num_segments * self.encoder.num_tokens  # per clip

    @property
    def eval_chunked(self) -> bool:
        return isinstance(self.model, SegmentClassifier) and self.model.chunked

    def eval_metrics(self, outputs: list[list[float]]) -> dict[str, Any]:
        return {**super().eval_metrics(outputs), "eval/chunked": self.eval_chunked,
                "eval/frames": self.clip_frames, "eval/segments": self.num_segments}
