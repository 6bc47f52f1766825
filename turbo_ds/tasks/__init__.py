"""Tasks: model assembly, loss and metrics for each thing turbo_ds trains."""

from __future__ import annotations

from typing import Any

from turbo_ds.config import Config


def build_task(cfg: Config, manifest: dict[str, Any]):
    if cfg.task == "action_cls":
        from turbo_ds.tasks.action_cls import ActionClassification

        return ActionClassification(cfg, manifest)
    if cfg.task == "video_language":
        from turbo_ds.tasks.video_language import VideoLanguage

        return VideoLanguage(cfg, manifest)
    if cfg.task == "long_video":
        from turbo_ds.tasks.long_video import LongVideoClassification

        return LongVideoClassification(cfg, manifest)
    raise AssertionError(f"unhandled task {cfg.task}")  # config validation only admits known tasks
