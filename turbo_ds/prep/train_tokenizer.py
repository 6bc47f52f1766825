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
import sys
from pathlib import Path

from turbo_ds.data.tokenizer import load_tokenizer
from turbo_ds.prep.manifest_rows import ManifestError
from turbo_ds.prep.tokenizer_trainer import SPECIAL_IDS, read_captions, train


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
