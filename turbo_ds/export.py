"""Export a run's checkpoint to a folder that loads without DeepSpeed: safetensors weights + config.

    python -m turbo_ds.export --run_dir runs/demo [--step N] --out /tmp/exp

Any checkpoint (ZeRO 0-3, any world size) is consolidated into float32 weights, taken from the
optimizer's fp32 master copy when training ran in bf16/fp16 (``CheckpointManager.fp32_weights``).
The folder holds:

    model.safetensors          every weight of the model, float32
    config.json                {"turbo_ds": {"format", "task", "config" (the run's resolved config),
                               "class_names", "assets", "layout", "source" (run, step, world size, weights)}}
    action_cls (VideoMAE layout, fixed sinusoid positions): also a transformers
    VideoMAEForVideoClassification folder: model.safetensors in transformers' names, config.json
    with its keys (id2label ...) beside "turbo_ds", and preprocessor_config.json (size, mean, std),
    so ``VideoMAEForVideoClassification.from_pretrained(DIR)`` and ``pipeline("video-classification",
    model=DIR)`` load it (the pipeline needs Pillow; frames are sampled as transformers does).
    video_language: tokenizer.model (or tokenizer/) and text_encoder/ (the text tower, a transformers
    folder: AutoModel.from_pretrained(DIR/text_encoder)).
    long_video: turbo_ds's format only (no transformers class holds segment encoder + temporal model).

``load_export(DIR)`` is the one reader of such a folder: it returns the task with its model
loaded, in eval mode (``turbo_ds.predict`` and other tools use it; ``load_model`` also takes a run dir).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from turbo_ds.config import ConfigError, config_from_dict, to_dict
from turbo_ds.engine.checkpoint import CheckpointManager, NoCheckpoint
from turbo_ds.engine.optim import group_names, param_groups
from turbo_ds.fileio import atomic_write_json
from turbo_ds.tasks import build_task, checked
from turbo_ds.tasks.base import Task

FORMAT = "turbo_ds.export/1"
WEIGHTS, CONFIG, PROCESSOR = "model.safetensors", "config.json", "preprocessor_config.json"


class ExportError(Exception):
    """Something the user can fix: no checkpoint, a missing dataset or tokenizer, a folder in the way."""


@dataclass
class Consolidated:
    """A run's model rebuilt from one checkpoint, without DeepSpeed."""

    task: Task
    class_names: list[str] | None
    source: dict[str, Any]
    "run_dir, step, checkpoint, world_size, and where the weights came from"


def from_run(run_dir: str | Path, step: int | None = None) -> Consolidated:
    """Rebuild the run's model from its latest checkpoint (or the one at ``step``) with float32 weights."""
    from turbo_ds.data.source import ShardSource

    checkpoints = CheckpointManager.reader(run_dir)
    checkpoint = checkpoints.find(step)
    state = checkpoints.trainer_state(checkpoint)
    tree = copy.deepcopy(state["config"])
    tree["model"]["pretrained"] = None  # the checkpoint holds every weight
    tree["eval"]["zero_shot_data"] = None  # an evaluation during training: rebuilding the model needs none of it
    try:
        cfg = checked(config_from_dict(tree))
        # class names (and what building the task reads), from a folder or URL as in training
        manifest = ShardSource.from_config(cfg.data, "train").manifest
        task = build_task(cfg, manifest)
    except (ConfigError, OSError, ValueError) as e:
        raise ExportError(f"cannot rebuild the model of {run_dir}: {e}; run from the directory the run was "
                          "started in (its config's paths are relative to it)") from e
    # ZeRO-0's fp32 masters are laid out by optimizer group: as the trainer recorded them, or (older checkpoints)
    # as param_groups makes them without pretrained weights (head_lr_scale did not exist, so it made no groups)
    groups = state.get("param_groups") or group_names(param_groups(task.model, 1.0, cfg.train.layer_decay,
                                                                   cfg.model.depth), task.model)
    weights, note = checkpoints.fp32_weights(checkpoint, groups)
    missing, unexpected = task.model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ExportError(f"{checkpoint} does not fit the model its config describes: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    task.model.eval()
    source = {"run_dir": str(run_dir), "step": state["step"], "checkpoint": str(checkpoint),
              "world_size": state.get("world_size"), "weights": note}
    return Consolidated(task, manifest.get("class_names"), source)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = value


def write_export(run: Consolidated, out: Path) -> list[str]:
    """Write the export folder ``out`` (replacing an earlier export there); returns notes for the user.

    Written into a temporary sibling and renamed, so ``out`` never holds a partial export.
    """
    from safetensors.torch import save_file

    from turbo_ds.models.to_transformers import NotConvertible, image_processor_config, to_videomae, videomae_config

    if out.exists() and any(out.iterdir()) and not is_export(out):
        raise ExportError(f"--out {out}: exists and is not an export folder; give a new or empty folder")
    task, cfg = run.task, run.task.cfg
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tree = to_dict(cfg)
    assets = task.export_assets(tmp)
    for key, name in assets.items():
        _set(tree, key, name)
    meta = {"format": FORMAT, "task": cfg.task, "config": tree, "class_names": run.class_names, "assets": assets,
            "layout": "turbo_ds", "source": run.source}
    config: dict[str, Any] = {}
    state = {k: v.detach().float().contiguous() for k, v in task.model.state_dict().items()}
    notes = []
    if task.transformers_export:
        try:
            config, state = videomae_config(cfg.model, run.class_names), to_videomae(state)
            meta["layout"] = "transformers"
            atomic_write_json(tmp / PROCESSOR, image_processor_config(cfg.model, cfg.data))
        except NotConvertible as e:
            notes.append(f"no transformers folder: {e}")
    else:
        notes.append(f"task {cfg.task}: the model in turbo_ds's format (no transformers class holds it)")
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    atomic_write_json(tmp / CONFIG, {**config, "turbo_ds": meta})
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return notes


def is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG).read_text())["turbo_ds"]["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_export(folder: str | Path, device: str | torch.device = "cpu") -> Task:
    """An export folder -> its task, with the model's float32 weights loaded, in eval mode, on ``device``."""
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    from turbo_ds.models.to_transformers import from_videomae

    folder = Path(folder)
    if not is_export(folder):
        raise ExportError(f"{folder}: not a turbo_ds export (no {CONFIG} with a turbo_ds section of format "
                          f"{FORMAT}); make one with python -m turbo_ds.export --run_dir RUN --out {folder}")
    meta = json.loads((folder / CONFIG).read_text())["turbo_ds"]
    tree = copy.deepcopy(meta["config"])
    for key, name in meta["assets"].items():
        _set(tree, key, str(folder / name))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its report on text_encoder/ (no pooler, unused) is noise: weights come next
    try:
        task = build_task(checked(config_from_dict(tree)), {"class_names": meta["class_names"]})
    finally:
        hf_logging.set_verbosity(verbosity)
    weights = load_file(str(folder / WEIGHTS))
    task.model.load_state_dict(from_videomae(weights) if meta["layout"] == "transformers" else weights)
    task.model.eval().to(device)
    return task


def load_model(path: str | Path, step: int | None = None, device: str | torch.device = "cpu") -> Task:
    """An export folder (``load_export``) or a run dir (its latest checkpoint, or the one at ``step``)."""
    path = Path(path)
    if is_export(path):
        return load_export(path, device)
    if (path / "checkpoints").is_dir():
        task = from_run(path, step).task
        task.model.to(device)
        return task
    raise ExportError(f"--model {path}: neither an export folder (python -m turbo_ds.export) nor a run dir "
                      "(with checkpoints/)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", required=True, help="the run directory (with checkpoints/)")
    p.add_argument("--step", type=int, help="export the checkpoint of this step (default: the latest)")
    p.add_argument("--out", required=True, type=Path, help="the export folder to write (replaces an earlier export)")
    args = p.parse_args(argv)
    try:
        run = from_run(args.run_dir, args.step)
        notes = write_export(run, args.out)
    except (ExportError, NoCheckpoint) as e:
        print(f"export error: {e}", file=sys.stderr)
        return 2
    s = run.source
    print(f"exported step {s['step']} of {args.run_dir} ({s['world_size']} rank(s); {s['weights']}) to {args.out}: "
          + ", ".join(sorted(f.name + ("/" if f.is_dir() else "") for f in args.out.iterdir())))
    for note in notes:
        print(f"  note: {note}")
    print(f"  load it with turbo_ds.export.load_export('{args.out}') or python -m turbo_ds.predict --model {args.out} "
          "VIDEO ..." + ("; or transformers' VideoMAEForVideoClassification.from_pretrained / "
                         "pipeline('video-classification')" if not notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
