"""Caption tokenizers behind one interface: a sentencepiece ``.model`` (trained with
data_prep/train_tokenizer.py) or a local transformers tokenizer folder.

``encode`` pads every batch to ``max_length`` (static shapes: the same memory every step)
and reports how many captions were cut, so the caller can log truncation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

TRAIN_HINT = ("python data_prep/train_tokenizer.py --out PREFIX --manifest captions.csv "
              "(or --shards DATASET_DIR), which writes PREFIX.model")


class TextTokenizer(Protocol):
    vocab_size: int
    pad_id: int

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, int]: ...

    def decode(self, ids: list[int]) -> str: ...


def pad_batch(seqs: list[list[int]], max_length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Already-truncated id lists -> (ids (B, max_length) long, attention_mask (B, max_length) long)."""
    ids = torch.full((len(seqs), max_length), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(seqs), max_length), dtype=torch.long)  # (B, L)
    for i, seq in enumerate(seqs):
        assert len(seq) <= max_length, "sequences must be truncated before padding"
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


class SentencePieceTokenizer:
    """``[bos] pieces [eos]``; long captions keep their first pieces and still end with eos."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a sentencepiece model ({e}); create one with {TRAIN_HINT}") from e
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id = max(self.sp.pad_id(), 0)  # models without a pad piece pad with id 0
        self.specials = ([self.sp.bos_id()] if self.sp.bos_id() >= 0 else [],
                         [self.sp.eos_id()] if self.sp.eos_id() >= 0 else [])

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        head, tail = self.specials
        room = max_length - len(head) - len(tail)
        if room < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text between bos/eos")
        pieces = self.sp.encode(list(texts))
        seqs = [head + p[:room] + tail for p in pieces]
        return (*pad_batch(seqs, max_length, self.pad_id), sum(len(p) > room for p in pieces))

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])  # special and pad pieces decode to nothing


class HFTokenizer:
    """A transformers tokenizer saved in a local folder (``save_pretrained``); never downloads."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        if pad is None:
            raise ValueError(f"tokenizer in {folder} has neither a pad nor an eos token to pad with")
        self.pad_id, self.vocab_size = pad, len(self.tok)

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        seqs = self.tok(list(texts), verbose=False)["input_ids"]
        long = [i for i, seq in enumerate(seqs) if len(seq) > max_length]
        if long:  # the tokenizer's own truncation keeps its special tokens (e.g. [SEP]) in place
            cut = self.tok([texts[i] for i in long], truncation=True, max_length=max_length)["input_ids"]
            for i, seq in zip(long, cut):
                seqs[i] = seq
        return (*pad_batch(seqs, max_length, self.pad_id), len(long))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """A sentencepiece ``.model`` file (or its PREFIX) or a local transformers tokenizer folder."""
    path = Path(path)
    if path.is_dir():
        return HFTokenizer(path)
    if path.is_file():
        return SentencePieceTokenizer(path)
    if path.with_name(path.name + ".model").is_file():
        return SentencePieceTokenizer(path.with_name(path.name + ".model"))
    raise FileNotFoundError(f"tokenizer {path} not found: train one with {TRAIN_HINT}, or point to a local "
                            f"transformers tokenizer folder (tokenizer.save_pretrained(DIR))")
