"""Train a sentencepiece tokenizer on captions: the library behind data_prep/train_tokenizer.py.

``read_captions`` collects the captions of a build manifest or of shards; ``train`` writes
PREFIX.model and PREFIX.vocab with pad=0, unk=1, bos=2, eos=3. The video-language task
calls both at start-up when ``text.train_tokenizer_if_missing`` is set.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

from turbo_ds.prep.manifest_rows import read_input_shard_items, read_manifest_items

SPECIAL_IDS = {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}
TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def read_captions(manifest: Path | None, shards: str | None) -> list[str]:
    """Every caption of a build manifest (CSV/JSONL) or of shards (a folder or a glob); unusable rows are left out."""
    items = (read_manifest_items(manifest, "video_language") if manifest is not None
             else read_input_shard_items(shards, "video_language")[0])
    # One caption a line for sentencepiece, so line breaks inside a caption become spaces.
    return [" ".join(c.split()) for it in items if it.error is None for c in it.captions]


def train(captions: list[str], prefix: Path, model_type: str, vocab_size: int, coverage: float,
          max_sentences: int) -> int:
    """Train and return the vocabulary size used; a too-small corpus shrinks it (with a warning)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=prefix.parent, delete=False) as f:
        f.write("\n".join(captions) + "\n")
    try:
        while True:
            try:
                spm.SentencePieceTrainer.train(
                    input=f.name, model_prefix=str(prefix), model_type=model_type, vocab_size=vocab_size,
                    character_coverage=coverage, input_sentence_size=max_sentences, shuffle_input_sentence=True,
                    num_threads=os.cpu_count() or 1, minloglevel=2, **SPECIAL_IDS)
                return vocab_size
            except RuntimeError as e:
                match = TOO_LARGE.search(str(e))
                if not match or int(match.group(2)) >= vocab_size:
                    raise
                print(f"train_tokenizer: warning: the captions support at most {match.group(2)} pieces, not "
                      f"{vocab_size}; training with --vocab-size {match.group(2)}", file=sys.stderr)
                vocab_size = int(match.group(2))
    finally:
        os.unlink(f.name)
