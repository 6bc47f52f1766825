#!/usr/bin/env python
"""Train a sentencepiece tokenizer on the captions of a video-language dataset.

The command line of ``turbo_ds.prep.train_tokenizer`` (also ``python -m turbo_ds.prep.train_tokenizer`` and
``turbo-ds-train-tokenizer``); ``--help`` lists its options.
"""

import sys

from turbo_ds.prep.train_tokenizer import main
# TODO(merge): remove. tasks/video_language.py (owned by the training branch) still imports these from here;
# at merge it imports them from turbo_ds.prep.tokenizer_trainer.
from turbo_ds.prep.tokenizer_trainer import read_captions, train  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
