"""Text encoder (a transformers BERT-style or CLIP text model) and the video-text dual encoder. Pure PyTorch.

The text tower is either a new BERT built from ``text.width/depth/heads`` with the
tokenizer's vocabulary, or a local ``save_pretrained`` folder (never downloaded): any
encoder ``AutoModel`` loads, or the text tower of a ``CLIPModel`` / ``CLIPTextModel`` folder
(causal, so its caption feature is the eos token's output: ``text.pooling: eos``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from turbo_ds.config import TextConfig
from turbo_ds.models.weights import mark_pretrained

MAX_LOGIT_SCALE = 100.0  # CLIP's cap on 1/temperature: keeps the softmax from saturating
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")
LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")  # BERT..., DistilBERT, CLIP, others
CLIP_TEXT_TYPES = ("clip", "clip_text_model")


def new_bert(cfg: TextConfig, vocab_size: int, pad_id: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                        num_attention_heads=cfg.heads, intermediate_size=4 * cfg.width,
                        max_position_embeddings=cfg.max_length, pad_token_id=pad_id,
                        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
    return BertModel(config, add_pooling_layer=False)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars or load reports (a CLIPModel folder's vision tensors would each be
    reported as unexpected by its text tower); the caller reports what it loaded."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_text_model(folder: str, dropout: float) -> nn.Module:
    """A local transformers encoder in float32 (DeepSpeed casts it), with ``dropout`` everywhere it has one.

    A CLIPModel folder gives its text tower only (CLIPTextModel): the vision tensors are left unread.
    """
    from transformers import AutoConfig, AutoModel, CLIPTextConfig, CLIPTextModel

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    clip = config.model_type in CLIP_TEXT_TYPES
    if clip:
        config = CLIPTextConfig.from_pretrained(folder, local_files_only=True)  # a CLIPModel's text_config
    for key in DROPOUT_KEYS:
        if hasattr(config, key):
            setattr(config, key, dropout)
    with quiet_transformers():
        model = (CLIPTextModel if clip else AutoModel).from_pretrained(folder, config=config, local_files_only=True,
                                                                       dtype=torch.float32)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # unused (we pool ourselves); dropped so every trainable tensor gets a gradient
    return model


class TextEncoder(nn.Module):
    """Token ids -> one feature per caption: the first token's output (bos/[CLS]) or the masked mean."""

    def __init__(self, cfg: TextConfig, vocab_size: int, pad_id: int):
        super().__init__()
        if cfg.pretrained:
            self.bert = load_text_model(cfg.pretrained, cfg.dropout)
            mark_pretrained(self.bert.parameters())
        else:
            self.bert = new_bert(cfg, vocab_size, pad_id)
        config = self.bert.config
        self.causal = config.model_type in CLIP_TEXT_TYPES  # each token sees only earlier ones
        self.width, self.vocab_size = config.hidden_size, config.vocab_size
        self.max_positions: int = config.max_position_embeddings
        self.pooling, self.freeze, self.freeze_layers = cfg.pooling, cfg.freeze, cfg.freeze_layers
        if self.freeze_layers > len(self.layers()):
            raise ValueError(f"text.freeze_layers={self.freeze_layers}: the text model has {len(self.layers())} layers")
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def layers(self) -> nn.ModuleList:
        for path in LAYER_PATHS:
            try:
                return self.bert.get_submodule(path)
            except AttributeError:
                continue
        raise ValueError(f"{type(self.bert).__name__}: no layer list at {' / '.join(LAYER_PATHS)}, so "
                         "text.freeze_layers cannot apply; use text.freeze or 0")

    def frozen_modules(self) -> list[nn.Module]:
        if self.freeze:
            return [self.bert]
        if self.freeze_layers:
            return [self.bert.embeddings, *self.layers()[: self.freeze_layers]]
        return []

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        for module in self.frozen_modules():  # frozen parts are fixed functions: no dropout noise
            module.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # A frozen tower needs no autograd graph: it stores no activations.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        if self.pooling == "cls":
            return h[:, 0]  # (B, D)
        if self.pooling == "eos":  # the last real token: CLIP's eos (BERT's [SEP])
            return h[torch.arange(len(h), device=h.device), attention_mask.sum(dim=1) - 1]  # (B, D)
        mask = attention_mask[..., None].to(h.dtype)  # (B, L, 1)
        return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B, D)


class VideoTextModel(nn.Module):
    """Video and text towers, linear projections to a shared space, and a learned temperature.

    ``forward`` embeds whichever inputs it gets; embeddings are L2-normalised in float32.
    """

    def __init__(self, video: nn.Module, text: TextEncoder, embed_dim: int, temperature: float):
        super().__init__()
        self.video, self.text = video, text
        self.video_proj = nn.Linear(video.width, embed_dim, bias=False)
        self.text_proj = nn.Linear(text.width, embed_dim, bias=False)
        for proj, width in ((self.video_proj, video.width), (self.text_proj, text.width)):
            nn.init.normal_(proj.weight, std=width**-0.5)
        # Learned in log space, as CLIP. Shape (1,), not a scalar: DeepSpeed's parameter broadcast
        # views each tensor as bytes, which a 0-dim bf16 tensor cannot do.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1 / temperature)))

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)[0]  # ()

    def forward(self, video: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
        """(video embeddings (B, E) or None, caption embeddings (M, E) or None, logit scale ())."""
        v = t = None
        if video is not None:
            v = F.normalize(self.video_proj(self.video(video)).float(), dim=-1)  # (B, E)
        if input_ids is not None:
            t = F.normalize(self.text_proj(self.text(input_ids, attention_mask)).float(), dim=-1)  # (M, E)
        return v, t, self.logit_scale()
