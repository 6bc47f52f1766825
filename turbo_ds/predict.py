"""Predict on video files with an exported model (or a run's checkpoint).

    python -m turbo_ds.predict --model /tmp/exp clip.mp4 more_videos/ [--top-k 5] [--json]
    python -m turbo_ds.predict --model /tmp/vl --text "a red square moves up" videos/   # video-language: rank videos
    python -m turbo_ds.predict --model /tmp/exp --dataset data/demo/val                # accuracy on a shard folder

Videos are decoded exactly as our evaluation does (the model's config: frames sampled over the
whole video or a dense window, num_clips x num_crops views averaged, mean/std). A classifier
prints the top-k class names with probabilities per video; a video-language model ranks the
given videos for each --text by cosine similarity. A video that cannot be read is named on
stderr and skipped; the others are still processed, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from turbo_ds.config import ConfigError
from turbo_ds.data.errors import DataError
from turbo_ds.data.position import StreamPosition
from turbo_ds.data.samples import ClipSpec, DecodedCache, choose_views, collate, decode, to_device
from turbo_ds.data.source import ShardSource
from turbo_ds.data.streams import EvalStream, make_loader
from turbo_ds.data.transport import ReadPolicy
from turbo_ds.engine.checkpoint import NoCheckpoint
from turbo_ds.export import ExportError, load_model
from turbo_ds.models.text import VideoTextModel
from turbo_ds.tasks.base import Task
from turbo_ds.tasks.classification import Classification

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".gif"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def video_files(inputs: list[str]) -> Iterator[tuple[str, Path | None, str | None]]:
    """(name, path, error): files as given, folders searched recursively for video files (sorted)."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                yield item, None, f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in this folder"
            yield from ((str(p), p, None) for p in found)
        elif path.is_file():
            yield item, path, None
        else:
            yield item, None, "no such file or folder"


class Clips:
    """Video files -> the model's input views (1, V, C, T, H, W) or (1, C, T, H, W), as the eval loader makes them."""

    def __init__(self, task: Task):
        cfg = task.cfg
        self.spec = ClipSpec.from_config(cfg.data, cfg.model, train=False, evaluation=cfg.eval,
                                         frames=task.clip_frames)
        self.decode = decode(self.spec, DecodedCache(0, cfg.data), StreamPosition())
        self.views = choose_views(self.spec)

    def __call__(self, name: str, path: Path) -> torch.Tensor:
        try:
            sample = self.decode({"__key__": name, "mp4": path.read_bytes(), "label": -1})  # raises DataError
        except OSError as e:
            raise DataError(f"cannot read: {e.strerror or e}") from e
        return self.spec.normalize(collate([self.views(sample)], self.spec, "predict", StreamPosition())["video"])


def classify(task: Task, clips: Clips, files: list, top_k: int, device: torch.device, dtype: torch.dtype,
             emit) -> int:
    names, failed = task.objective.class_names, 0
    for name, path, error in files:
        try:
            if error:
                raise DataError(error)
            probs = Classification.scores(task.model, clips(name, path).to(device), dtype)[0]  # (classes,)
        except DataError as e:
            emit({"video": name, "error": str(e)})
            failed += 1
            continue
        scores, ids = probs.topk(min(top_k, len(names)))
        emit({"video": name, "top_k": [{"label": names[i], "score": round(s, 6)}
                                       for s, i in zip(scores.tolist(), ids.tolist())]})
    return failed


@torch.no_grad()
def rank_videos(task: Task, clips: Clips, files: list, texts: list[str], top_k: int, device: torch.device,
                dtype: torch.dtype, emit) -> int:
    embeddings, names, failed = [], [], 0
    for name, path, error in files:
        try:
            if error:
                raise DataError(error)
            video = clips(name, path).to(device, dtype)
        except DataError as e:
            emit({"video": name, "error": str(e)})
            failed += 1
            continue
        v, _, _ = task.model(video=video.flatten(0, 1) if video.ndim == 6 else video)  # (V, E), normalised
        embeddings.append(F.normalize(v.mean(dim=0), dim=-1))  # views averaged, as in evaluation
        names.append(name)
    if not names:
        return failed
    ids, mask, _ = task.tokenizer.encode(texts, task.cfg.text.max_length)  # (Q, L) each
    _, t, _ = task.model(input_ids=ids.to(device), attention_mask=mask.to(device))  # (Q, E)
    similarity = t @ torch.stack(embeddings).T  # (Q, videos)
    for text, row in zip(texts, similarity):
        scores, order = row.topk(min(top_k, len(names)))
        emit({"text": text, "ranking": [{"video": names[i], "score": round(s, 6)}
                                        for s, i in zip(scores.tolist(), order.tolist())]})
    return failed


@torch.no_grad()
def evaluate(task: Task, dataset: str, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The task's evaluation (its eval_step and eval_metrics) over every clip of a shard folder, in this process."""
    cfg = task.cfg
    source = ShardSource(dataset, None, ReadPolicy.from_config(cfg.data), "--dataset")
    stream = EvalStream(source, cfg.data, cfg.model, 0, 1, batch_size, cfg.eval, frames=task.clip_frames,
                        targets=task.targets)
    outputs, position = [], {}
    for batch in make_loader(stream, 0):
        if batch.get("end"):  # the reader's closing record: where it stands, no clips
            position = batch["position"]
            continue
        outputs.append(task.eval_step(task.model, to_device(batch, device, stream.spec.normalize), dtype))
    return {**task.eval_metrics(outputs), "eval/skipped_samples": position.get("skipped", 0)}


def show(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
    elif "error" in record:
        print(f"predict: {record['video']}: {record['error']} (skipped)", file=sys.stderr, flush=True)
    elif "top_k" in record:
        print(f"{record['video']}: " + " | ".join(f"{c['label']} {c['score']:.3f}" for c in record["top_k"]),
              flush=True)
    else:
        print(f"{record['text']!r}: " + " | ".join(f"{r['video']} {r['score']:.3f}" for r in record["ranking"]),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="video files and folders (searched recursively for video files)")
    p.add_argument("--model", required=True, help="an export folder (python -m turbo_ds.export) or a run dir")
    p.add_argument("--step", type=int, help="with a run dir: the checkpoint of this step (default: the latest)")
    p.add_argument("--top-k", type=int, default=5, help="classes (or videos, with --text) shown per line")
    p.add_argument("--text", action="append", default=[], help="video-language: rank the videos for this caption "
                                                                "(repeatable)")
    p.add_argument("--dataset", help="a shard folder (manifest.json + tars): print the task's evaluation metrics")
    p.add_argument("--json", action="store_true", help="one JSON object per line (errors too, with an 'error' key)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="compute precision")
    p.add_argument("--batch-size", type=int, default=32, help="videos per batch with --dataset")
    args = p.parse_args(argv)
    if not args.inputs and not args.dataset:
        p.error("give video files or folders, or --dataset")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    try:
        task = load_model(args.model, args.step, device)
    except (ExportError, NoCheckpoint, ConfigError) as e:
        print(f"predict error: {e}", file=sys.stderr)
        return 2
    task.model.to(dtype)
    text_model = isinstance(task.model, VideoTextModel)
    if args.dataset:
        metrics = evaluate(task, args.dataset, args.batch_size, device, dtype)
        print(json.dumps(metrics) if args.json else " | ".join(
            f"{k.removeprefix('eval/')} {v:.4f}" if isinstance(v, float) else f"{k.removeprefix('eval/')} {v}"
            for k, v in metrics.items()), flush=True)
    if not args.inputs:
        return 0
    if text_model and not args.text:
        print("predict error: a video-language model ranks videos for captions: give --text \"...\"", file=sys.stderr)
        return 2
    if not text_model and not isinstance(getattr(task, "objective", None), Classification):
        print(f"predict error: task {task.cfg.task} has no per-video prediction", file=sys.stderr)
        return 2
    files, clips = list(video_files(args.inputs)), Clips(task)
    emit = functools.partial(show, as_json=args.json)
    if text_model:
        failed = rank_videos(task, clips, files, args.text, args.top_k, device, dtype, emit)
    else:
        failed = classify(task, clips, files, args.top_k, device, dtype, emit)
    if failed:
        print(f"predict: {failed} of {len(files)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
