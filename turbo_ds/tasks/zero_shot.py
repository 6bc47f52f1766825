"""Zero-shot action recognition with a video-text model: classify each clip by the class whose
prompts its embedding is closest to, as CLIP does for ImageNet and Kinetics.

Each class text (the manifest's ``class_texts``, else its class name with ``_`` read as a
space) fills every prompt template; the normalised prompt embeddings of a class are
averaged and renormalised into that class's weight (prompt ensembling); clips score against
all classes by cosine similarity and count top-1/top-5 hits. The same ``ZeroShot`` runs
inside training (``eval.zero_shot_data``, every rank a share of the clips) and in
``python -m turbo_ds.zeroshot`` (one process).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from turbo_ds.config import ConfigError, DataConfig
from turbo_ds.data.samples import Targets
from turbo_ds.data.locations import redact
from turbo_ds.data.source import ShardSource
from turbo_ds.data.tokenizer import TextTokenizer
from turbo_ds.data.transport import ReadPolicy
from turbo_ds.tasks.base import Evaluation, dummy_clip
from turbo_ds.tasks.classification import accuracy, topk_hits

# CLIP's 28 prompt templates for Kinetics-700 (Radford et al. 2021, the CLIP repository's prompts.md).
KINETICS_TEMPLATES = [f"{prefix}{middle}{{}}." for prefix in ("a photo of ", "a video of ", "a example of ",
                                                              "a demonstration of ")
                      for middle in ("", "a person ", "a person using ", "a person doing ", "a person during ",
                                     "a person performing ", "a person practicing ")]
PROMPT_BATCH = 256  # prompts per text-tower call


def open_source(location: str, data: DataConfig, key: str = "eval.zero_shot_data") -> ShardSource:
    """The zero-shot dataset at ``location`` (a folder or URL, read with ``data``'s retries), opened once."""
    try:
        return ShardSource(location, None, ReadPolicy.from_config(data), key)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e) if str(e).startswith(key) else f"{key}={location}: {e}") from e


def class_texts(source: ShardSource) -> list[str]:
    """How each class of the dataset ``source`` reads in a sentence, in label order."""
    manifest, key, folder = source.manifest, source.key, redact(source.location)
    names = manifest.get("class_names")
    if not names:
        raise ConfigError(f"{key}={folder}: its manifest has no class_names, which zero-shot classification puts "
                          "into the prompts; rebuild the shards with python data_prep/build_shards.py --task "
                          "action_cls (rows path,label) or give an action dataset")
    texts = manifest.get("class_texts") or [name.replace("_", " ") for name in names]
    if len(texts) != len(names):
        raise ConfigError(f"{key}={folder}: manifest has {len(texts)} class_texts for {len(names)} class_names")
    return texts


class ZeroShot(Evaluation):
    """Top-1/top-5 of zero-shot classification on an action dataset (metrics ``eval/zero_shot_*``)."""

    targets: Targets = "label"
    eval_prefix = "eval/zero_shot_"

    def __init__(self, source: ShardSource, templates: list[str] | None, tokenizer: TextTokenizer, max_length: int,
                 clip_frames: int, img_size: int, prefix: str = "eval/zero_shot_"):
        self.eval_prefix, self.source, self.texts = prefix, source, class_texts(source)
        self.templates = templates or KINETICS_TEMPLATES
        self.prompts = [t.format(text) for text in self.texts for t in self.templates]  # class-major
        self.tokenizer, self.max_length = tokenizer, max_length
        self.clip_frames, self.img_size = clip_frames, img_size
        self.classes: torch.Tensor | None = None

    @torch.no_grad()
    def eval_begin(self, model: nn.Module, dtype: torch.dtype) -> None:
        """The class weights (classes, E) from the current text tower; the same calls on every rank."""
        device = next(model.parameters()).device
        chunks = []
        for start in range(0, len(self.prompts), PROMPT_BATCH):
            ids, mask, _ = self.tokenizer.encode(self.prompts[start:start + PROMPT_BATCH], self.max_length)
            _, t, _ = model(input_ids=ids.to(device), attention_mask=mask.to(device))  # (P, E), normalised
            chunks.append(t.float())
        prompts = torch.cat(chunks).view(len(self.texts), len(self.templates), -1)  # (classes, templates, E)
        self.classes = F.normalize(prompts.mean(dim=1), dim=-1)  # (classes, E)

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> list[float]:
        video = batch["video"]
        b = len(batch["label"])
        v, _, _ = model(video=(video.flatten(0, 1) if video.ndim == 6 else video).to(dtype))  # (b*V, E)
        v = F.normalize(v.view(b, -1, v.shape[-1]).mean(dim=1), dim=-1)  # (b, V, E) -> (b, E): views averaged
        return topk_hits(v @ self.classes.to(v.device).T, batch["label"])  # scores (b, classes)

    @torch.no_grad()
    def eval_padding(self, model: nn.Module, dtype: torch.dtype) -> None:
        model(video=dummy_clip(model, self.clip_frames, self.img_size, dtype))

    def eval_metrics(self, outputs: list[list[float]]) -> dict[str, Any]:
        top1, top5, count = accuracy(outputs)
        p, n = self.eval_prefix, len(self.texts)
        return {f"{p}top1": top1, f"{p}top5": top5, f"{p}num_clips": count, f"{p}num_classes": n, f"{p}chance": 1 / n}
