#!/usr/bin/env python
"""Train a sentencepiece tokenizer on the captions of a video-language dataset.

The command line of ``turbo_ds.prep.train_tokenizer`` (also ``python -m turbo_ds.prep.train_tokenizer`` and
``turbo-ds-train-tokenizer``); ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs it without `pip install -e .`

from turbo_ds.prep.train_tokenizer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
