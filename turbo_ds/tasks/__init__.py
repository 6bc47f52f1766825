"""Tasks: one file per thing turbo_ds trains, behind the interface in ``base.py``.

``TASKS`` is the one place a task's name (the config's ``task``) maps to its code; adding a
task is its file, its entry here, its recipe and its test.
"""

from __future__ import annotations

from typing import Any

from turbo_ds.config import Config, validate
from turbo_ds.tasks.action_cls import ActionClassification
from turbo_ds.tasks.base import Task
from turbo_ds.tasks.long_video import LongVideoClassification
from turbo_ds.tasks.video_language import VideoLanguage

TASKS: dict[str, type[Task]] = {
    "action_cls": ActionClassification,
    "video_language": VideoLanguage,
    "long_video": LongVideoClassification,
}


def task_type(name: str) -> type[Task]:
    return TASKS[name]  # the config schema admits only these names (a test keeps both lists equal)


def checked(cfg: Config) -> Config:
    """``cfg`` once every section's rules and its task's own hold (what only the task knows, e.g. the files it
    will read): what every entry point runs on a config before using it."""
    validate(cfg)
    task_type(cfg.task).check_config(cfg)
    return cfg


def build_task(cfg: Config, manifest: dict[str, Any]) -> Task:
    return task_type(cfg.task)(cfg, manifest)
