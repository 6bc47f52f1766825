#!/usr/bin/env python
"""Train a sentencepiece tokenizer on the captions of a video-language dataset.

    python data_prep/train_tokenizer.py --out data/webvid/spm8k --manifest webvid_train.csv
    python data_prep/train_tokenizer.py --out data/webvid/spm8k --shards data/webvid/train

Captions come from a build_shards manifest (CSV/JSONL, "caption" column; JSONL may give
a list) or from shards (txt members, or every caption of json["captions"]). Writes
PREFIX.model and PREFIX.vocab with pad=0, unk=1, bos=2, eos=3 (bos/eos serve as the
[CLS]/[SEP] of a BERT-style text encoder). Load it with
turbo_ds.data.tokenizer.load_tokenizer("PREFIX.model").
"""

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

import sentencepiece as spm  # noqa: E402

from turbo_ds.prep.manifest_rows import ManifestError, read_input_shard_items, read_manifest_items  # noqa: E402
from turbo_ds.data.tokenizer import load_tokenizer  # noqa: E402

SPECIAL_IDS = {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}
TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def read_captions(manifest: Path | None, shards: str | None) -> list[str]:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="build manifest (CSV/JSONL) with a caption column")
    src.add_argument("--shards", metavar="DIR_OR_GLOB", help="a dataset folder of .tar shards, or a quoted glob")
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    p.add_argument("--vocab-size", type=int, default=8000,
                   help="pieces incl. the 4 special ones (default 8000; shrinks with a warning for small corpora)")
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of characters covered by the vocabulary; rarer ones map to unk (default 0.9995)")
    p.add_argument("--max-sentences", type=int, default=2_000_000,
                   help="train on a random sample of at most this many captions (default 2M)")
    a = p.parse_args(argv)
    if a.vocab_size <= len(SPECIAL_IDS) or not 0 < a.character_coverage <= 1:
        p.error("--vocab-size must exceed 4 and --character-coverage be in (0, 1]")
    try:
        captions = read_captions(a.manifest, a.shards)
    except ManifestError as e:
        print(f"train_tokenizer: error: {e}", file=sys.stderr)
        return 2
    vocab = train(captions, a.out, a.model_type, a.vocab_size, a.character_coverage, a.max_sentences)
    tok = load_tokenizer(f"{a.out}.model")
    ids, mask, _ = tok.encode(captions[:1], max_length=64)
    print(f"train_tokenizer: {a.out}.model ({a.model_type}, {vocab} pieces) from {len(captions)} captions; "
          f"{captions[0]!r} -> {ids[0, : int(mask[0].sum())].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
