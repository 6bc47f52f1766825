"""Video-language contrastive learning: video ViT (Turbo) + text Transformer, symmetric InfoNCE
over the global batch, text<->video retrieval at evaluation (plus, with ``eval.dsl``, after
dual-softmax re-scoring) and, with ``eval.zero_shot_data``, zero-shot action recognition.

Both towers may start from one CLIP folder (``model.arch: clip``, ``model.pretrained`` and
``text.pretrained`` the same folder, whose tokenizer is then the text tokenizer): CLIP's
projections and logit scale load too (``turbo_ds.models.clip``).

Negatives are global: each rank gathers every rank's embeddings (with gradients) and
computes the loss of the whole global batch, so R ranks x b clips train exactly like one
process on R*b clips (see ``all_gather_with_grad`` for why no extra loss scaling is needed).
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from turbo_ds.config import Config, ConfigError, TextConfig
from turbo_ds.data.tokenizer import HFTokenizer, TextTokenizer, load_tokenizer
from turbo_ds.engine.distributed import all_reduce_sum
from turbo_ds.engine.gather import all_gather_objects, all_gather_with_grad
from turbo_ds.models.clip import load_clip_heads
from turbo_ds.models.flops import num_weights, transformer_flops, vit_flops
from turbo_ds.models.pretrained import load_pretrained
from turbo_ds.models.text import TextEncoder, VideoTextModel
from turbo_ds.models.vit import VideoViT
from turbo_ds.tasks.base import Evaluation, Log, Task, dummy_clip
from turbo_ds.tasks.retrieval import retrieval_metrics
from turbo_ds.tasks.zero_shot import ZeroShot, open_source

COUNTERS = ("captions", "truncated_captions", "empty_captions")


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on (N, E) normalised embeddings where row i of each is a matching pair."""
    logits = logit_scale * video @ text.T  # (N, N): video i vs caption j
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# ------------------------------------------------------------------ tokenizer


def tokenizer_path(text: TextConfig) -> str | None:
    """text.tokenizer, or else the text model's own folder (a CLIP or BERT folder holds its tokenizer)."""
    return text.tokenizer or text.pretrained


def tokenizer_exists(path: str) -> bool:
    """A tokenizer folder or file at ``path``, or a sentencepiece model at ``path.model``."""
    return Path(path).exists() or Path(path + ".model").is_file()


def prepare_tokenizer(cfg: Config, log: Log = print) -> None:
    """Rank 0, before the task is built: train the sentencepiece tokenizer on data.train's captions when
    ``text.train_tokenizer_if_missing`` and it does not exist yet. Atomic: a run killed mid-way leaves none."""
    text = cfg.text
    if text.tokenizer is None or tokenizer_exists(text.tokenizer) or not text.train_tokenizer_if_missing:
        return
    from turbo_ds.prep.tokenizer_trainer import read_captions, train  # the same trainer as the command line

    prefix = Path(text.tokenizer.removesuffix(".model"))
    tmp = prefix.with_name(f"{prefix.name}.tmp{os.getpid()}")
    captions = read_captions(None, cfg.data.train)
    vocab = train(captions, tmp, text.tokenizer_type, text.tokenizer_vocab_size, 0.9995, 2_000_000)
    os.replace(f"{tmp}.vocab", f"{prefix}.vocab")
    os.replace(f"{tmp}.model", f"{prefix}.model")  # last: its presence marks a complete tokenizer
    log(f"trained tokenizer {prefix}.model ({vocab} pieces) on {len(captions)} captions of {cfg.data.train}")


def build_tokenizer(text: TextConfig) -> TextTokenizer:
    try:
        return load_tokenizer(tokenizer_path(text))
    except (ValueError, OSError) as e:  # the message names the path and the command that builds it
        raise ConfigError(f"text.tokenizer={tokenizer_path(text)}: {e}") from e


def check_text_model(text: TextConfig, encoder: TextEncoder, tokenizer: TextTokenizer) -> None:
    """A tokenizer whose ids the text model does not embed trains garbage (or crashes on a GPU): stop now."""
    if tokenizer.vocab_size != encoder.vocab_size:
        raise ConfigError(
            f"text.tokenizer={tokenizer_path(text)} has {tokenizer.vocab_size} tokens but "
            f"text.pretrained={text.pretrained} embeds {encoder.vocab_size}; use the tokenizer saved with that model "
            "(its folder works as text.tokenizer), or drop text.pretrained to train a new text encoder on this tokenizer")
    if text.max_length > encoder.max_positions:
        raise ConfigError(f"text.max_length={text.max_length}: text.pretrained={text.pretrained} has only "
                          f"{encoder.max_positions} positions")
    if encoder.causal and text.pooling != "eos":  # the first token of a causal model sees nothing else
        raise ConfigError(f"text.pooling={text.pooling}: text.pretrained={text.pretrained} is a causal CLIP text "
                          "tower whose caption feature is the eos token's output; set text.pooling=eos")


def build_model(cfg: Config, tokenizer: TextTokenizer, weights: bool = True) -> tuple[VideoTextModel, str | None]:
    """The dual encoder of ``cfg`` and what loading pretrained weights did (to log), or None.

    ``weights=False``: the architecture only, for a caller that loads trained weights over it (model.pretrained
    and CLIP's heads are not read; a text.pretrained folder still gives the text tower its shape).
    """
    encoder = VideoViT(cfg.model, cfg.turbo)
    video, text_folder = (cfg.model.pretrained, cfg.text.pretrained) if weights else (None, None)
    report = [str(load_pretrained(encoder, video))] if video else []
    text = TextEncoder(cfg.text, tokenizer.vocab_size, tokenizer.pad_id)
    check_text_model(cfg.text, text, tokenizer)
    model = VideoTextModel(encoder, text, cfg.text.embed_dim, cfg.text.temperature)
    report += [f"  note: {note}" for note in load_clip_heads(model, video, text_folder)]
    return model, "\n".join(report) or None


# ----------------------------------------------------------------------- task


class VideoLanguage(Task):
    """Contrastive video-text training; ``counters`` are the caption counts of this rank's training batches."""

    targets = "captions"
    plannable = False  # the planner feeds labelled clips only

    def __init__(self, cfg: Config, manifest: dict[str, Any]):
        super().__init__(cfg, manifest)
        self.clip_frames = cfg.model.num_frames
        self.tokenizer = build_tokenizer(cfg.text)
        self.model, self.pretrained_report = build_model(cfg, self.tokenizer)
        self.encoder = self.model.video
        self.tokens_total = self.encoder.num_tokens
        self.zero_shot = None
        if cfg.eval.zero_shot_data:
            # the zero-shot dataset's check: opened (its manifest read) once, here, and kept for every evaluation
            self.zero_shot = ZeroShot(open_source(cfg.eval.zero_shot_data, cfg.data), cfg.eval.zero_shot_templates,
                                      self.tokenizer, cfg.text.max_length, self.clip_frames, cfg.model.img_size)
        self.train_counts, self.eval_counts = dict.fromkeys(COUNTERS, 0), dict.fromkeys(COUNTERS, 0)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """A tokenizer (or permission to train one) and, if given, a local text model folder."""
        super().check_config(cfg)
        x = cfg.text
        if tokenizer_path(x) is None:
            raise ConfigError("text.tokenizer: required by task=video_language; give a sentencepiece .model or a "
                              "transformers tokenizer folder (or a text.pretrained folder that holds one)")
        if x.tokenizer is not None and not tokenizer_exists(x.tokenizer) and not x.train_tokenizer_if_missing:
            prefix = x.tokenizer.removesuffix(".model")
            raise ConfigError(f"text.tokenizer={x.tokenizer}: no such file; build it with python "
                              f"data_prep/train_tokenizer.py --out {prefix} --shards {cfg.data.train}, set "
                              "text.train_tokenizer_if_missing=true, or give a local transformers tokenizer folder")
        generated = cfg.model.generate_demo_clip and x.pretrained == cfg.model.pretrained  # written by prepare
        if x.pretrained is not None and not (Path(x.pretrained) / "config.json").is_file() and not generated:
            raise ConfigError(f"text.pretrained={x.pretrained}: no config.json there; give a local transformers "
                              "model folder (model.save_pretrained(DIR))")

    @classmethod
    def prepare(cls, cfg: Config, log: Log) -> None:
        super().prepare(cfg, log)  # the demo captions come with the demo data
        prepare_tokenizer(cfg, log)

    def export_assets(self, out: Path) -> dict[str, str]:
        """The tokenizer (a sentencepiece file or a transformers tokenizer folder, as trained with) and the text
        tower as a transformers folder (``text_encoder/``: config + weights, loads with ``AutoModel``, or
        ``CLIPTextModel`` for a CLIP tower), which also rebuilds its architecture."""
        source = Path(tokenizer_path(self.cfg.text))
        if isinstance(self.tokenizer, HFTokenizer):  # the tokenizer's own files: its folder may hold a whole CLIP
            self.tokenizer.tok.save_pretrained(out / "tokenizer")
            tokenizer = "tokenizer"
        else:
            shutil.copyfile(source if source.is_file() else source.with_name(source.name + ".model"),
                            out / "tokenizer.model")
            tokenizer = "tokenizer.model"
        self.model.text.bert.save_pretrained(out / "text_encoder")
        return {"text.tokenizer": tokenizer, "text.pretrained": "text_encoder"}

    @property
    def tokens_kept(self) -> int:
        return self.encoder.turbo.num_kept(training=True)

    def extra_evaluations(self) -> list[Evaluation]:
        return [self.zero_shot] if self.zero_shot else []

    def forward_flops(self) -> float:
        """The video tower on its kept tokens, the text tower on ``text.max_length`` tokens (captions are padded to
        it), both projections."""
        text, layers = self.model.text, self.model.text.layers()
        return (vit_flops(self.encoder, self.tokens_kept)
                + transformer_flops(num_weights(layers), len(layers), self.cfg.text.max_length, text.width)
                + 2.0 * num_weights(self.model.video_proj, self.model.text_proj))

    @property
    def counters(self) -> dict[str, int]:
        """Cumulative caption counts of this rank's training batches (since this process started)."""
        return {f"text/{k}": v for k, v in self.train_counts.items()}

    def encode(self, captions: list[str], counts: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize in this process, counting captions, truncated ones and empty ones (encoded as bos, eos)."""
        ids, mask, truncated = self.tokenizer.encode(captions, self.cfg.text.max_length)  # (M, L) each
        for key, n in (("captions", len(captions)), ("truncated_captions", truncated),
                       ("empty_captions", sum(not c.strip() for c in captions))):
            counts[key] += n
        return ids, mask

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        video = batch["video"].to(dtype)  # (b, C, T, H, W)
        ids, mask = self.encode(batch["text"], self.train_counts)
        v, t, scale = model(video=video, input_ids=ids.to(video.device), attention_mask=mask.to(video.device))
        # Every rank computes the same loss on the global batch: mean over R*b pairs, no rescaling.
        return contrastive_loss(all_gather_with_grad(v), all_gather_with_grad(t), scale)

    @torch.no_grad()
    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
        """This rank's video embeddings (averaged over views), caption embeddings and caption -> local video index."""
        captions = [c for caps in batch["captions"] for c in caps]
        owner = torch.tensor([i for i, caps in enumerate(batch["captions"]) for _ in caps], dtype=torch.long)
        ids, mask = self.encode(captions, self.eval_counts) if captions else self.encode_placeholder()
        video = batch["video"].to(dtype)
        b = len(batch["captions"])
        # One model call with both towers per batch, so ZeRO-3's parameter gathers match across ranks.
        v, t, scale = model(video=video.flatten(0, 1) if video.ndim == 6 else video,  # (b*V, C, T, H, W)
                            input_ids=ids.to(video.device), attention_mask=mask.to(video.device))
        v = F.normalize(v.view(b, -1, v.shape[-1]).mean(dim=1), dim=-1)  # (b, V, E) -> (b, E)
        # Embeddings (and the logit scale, for DSL) stay on the device: no host sync per batch.
        return {"video": v, "text": t[: len(captions)], "owner": owner, "scale": scale.detach()}

    def encode_placeholder(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, _ = self.tokenizer.encode([""], self.cfg.text.max_length)  # (1, L) each, not counted
        return ids, mask

    @torch.no_grad()
    def eval_padding(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        """A forward pass on a dummy clip and caption, so ranks with fewer clips join ZeRO-3's collectives."""
        video = dummy_clip(model, self.clip_frames, self.cfg.model.img_size, dtype)
        ids, mask = self.encode_placeholder()
        model(video=video, input_ids=ids.to(video.device), attention_mask=mask.to(video.device))

    def eval_metrics(self, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Gather every rank's embeddings, then text->video and video->text retrieval over the whole set."""
        local = [{k: v.cpu() for k, v in o.items()} for o in outputs]  # gathered as objects: from host memory
        batches = [o for part in all_gather_objects(local) for o in part]
        videos, texts, owner = stack_batches(batches)
        dsl_scale = float(batches[0]["scale"]) if self.cfg.eval.dsl else None  # the model's logit scale
        metrics = retrieval_metrics(texts @ videos.T, owner, dsl_scale)  # (Q, V) cosine similarities
        counts = all_reduce_sum([self.eval_counts[k] for k in COUNTERS])
        self.eval_counts = dict.fromkeys(COUNTERS, 0)
        # The counts first: they say which protocol the numbers are comparable with (1k-A: 1000 and 1000).
        return {"eval/num_videos": len(videos), "eval/num_captions": len(texts),
                **{f"eval/{k}": v for k, v in metrics.items()}, "eval/chance_r1": 1 / len(videos),
                "eval/truncated_captions": int(counts[1]), "eval/empty_captions": int(counts[2])}


def stack_batches(batches: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """eval_step outputs -> videos (V, E), captions (Q, E), caption -> video index (Q,) into the stacked videos."""
    starts = itertools.accumulate((len(b["video"]) for b in batches), initial=0)
    owner = torch.cat([b["owner"] + start for b, start in zip(batches, starts)])
    return torch.cat([b["video"] for b in batches]), torch.cat([b["text"] for b in batches]), owner
