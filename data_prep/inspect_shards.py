#!/usr/bin/env python
"""Summarise a shard folder and draw a contact sheet of a few samples.

The command line of ``turbo_ds.prep.inspect_shards`` (also ``python -m turbo_ds.prep.inspect_shards`` and
``turbo-ds-inspect-shards``); ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs it without `pip install -e .`

from turbo_ds.prep.inspect_shards import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
