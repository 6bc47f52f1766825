"""Zero-shot action recognition with a trained video-text model.

    python -m turbo_ds.zeroshot --model RUN_DIR_OR_EXPORT --data data/k400/val [--templates 'a video of {}.' ...]

Each class of VAL_SHARDS (its manifest's class_texts, else its class_names with _ as spaces)
fills every prompt template; the text tower embeds the prompts, each class's embeddings
are averaged (CLIP's prompt ensembling), and every clip is classified by its nearest class.
Templates: --templates (strings with {} or files with one template a line), else the run's
eval.zero_shot_templates, else CLIP's 28 Kinetics templates. Clips are read as the run
evaluates (its frames, size, normalisation, eval.num_clips x eval.num_crops views).

The last line reads: top1 X | top5 X | num_clips N | num_classes C | chance X.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from turbo_ds.config import ConfigError
from turbo_ds.engine.checkpoint import NoCheckpoint
from turbo_ds.engine.distributed import DistInfo
from turbo_ds.export import ExportError, load_model
from turbo_ds.tasks.video_language import VideoLanguage
from turbo_ds.tasks.zero_shot import ZeroShot, open_source
from turbo_ds.trainer import run_evaluation

ONE_PROCESS = DistInfo(rank=0, world=1, local_rank=0)


def load_video_language(path: str | Path, device: str) -> VideoLanguage:
    """A trained video-language task (its model in float32, eval mode, on ``device``) from a run dir or an export
    folder, through ``turbo_ds.export.load_model`` (the one reader of both)."""
    try:
        task = load_model(path, device=device)
    except (ExportError, NoCheckpoint) as e:
        raise ConfigError(str(e)) from e
    if not isinstance(task, VideoLanguage):
        raise ConfigError(f"--model {path}: a task={task.cfg.task} model has no text tower; zero-shot needs a "
                          "video_language run or export")
    return task


def read_templates(items: list[str]) -> list[str]:
    """Each item a template with {} or a file holding one template per line."""
    templates = []
    for item in items:
        path = Path(item)
        lines = path.read_text().splitlines() if "{}" not in item and path.is_file() else [item]
        templates += [line.strip() for line in lines if line.strip()]
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ConfigError(f"--templates: {bad or 'none given'}: every template needs exactly one {{}} for the class "
                          "text, e.g. 'a video of {}.' (or give a file with one template per line)")
    return templates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m turbo_ds.zeroshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run dir of a video_language training run (its latest checkpoint) or its export "
                        "(python -m turbo_ds.export)")
    p.add_argument("--data", required=True, help="action dataset folder: shards + manifest.json with class_names")
    p.add_argument("--templates", nargs="+", metavar="TEMPLATE_OR_FILE",
                   help="prompt templates with {} (or files of them); default: the run's eval.zero_shot_templates, "
                        "else CLIP's 28 Kinetics templates")
    p.add_argument("--batch-size", type=int, default=32, help="clips per forward pass (default 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        templates = read_templates(args.templates) if args.templates else None
        task = load_video_language(args.model, args.device)
        cfg = task.cfg
        templates = templates or cfg.eval.zero_shot_templates
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=args.batch_size))
        shots = ZeroShot(open_source(args.data, cfg.data, "--data"), templates, task.tokenizer, cfg.text.max_length, task.clip_frames,
                         cfg.model.img_size, prefix="")
    except (ConfigError, FileNotFoundError) as e:
        print(f"zeroshot: error: {e}", file=sys.stderr)
        return 2
    print(f"zeroshot: {args.model} on {args.data}: {len(shots.texts)} classes x {len(shots.templates)} templates, "
          f"e.g. {shots.prompts[0]!r}", flush=True)
    metrics = run_evaluation(shots, shots.source, task.model, cfg, ONE_PROCESS, torch.float32)
    if args.json:
        args.json.write_text(json.dumps({**metrics, "model": str(args.model), "data": args.data,
                                         "templates": shots.templates}, indent=2) + "\n")
    print(f"zeroshot: {time.perf_counter() - start:.1f} s"
          + (f"; {metrics['skipped_samples']} unreadable clips skipped" if metrics["skipped_samples"] else ""))
    print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                     if k in ("top1", "top5", "num_clips", "num_classes", "chance")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
