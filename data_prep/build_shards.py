#!/usr/bin/env python
"""Build WebDataset shards (turbo_ds schema) from real videos.

The command line of ``turbo_ds.prep.build_shards`` (also ``python -m turbo_ds.prep.build_shards`` and
``turbo-ds-build-shards``); ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs it without `pip install -e .`

from turbo_ds.prep.build_shards import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
