#!/usr/bin/env python
"""Build WebDataset shards (turbo_ds schema) from real videos.

The command line of ``turbo_ds.prep.build_shards`` (also ``python -m turbo_ds.prep.build_shards`` and
``turbo-ds-build-shards``); ``--help`` lists its options.
"""

import sys

from turbo_ds.prep.build_shards import main

if __name__ == "__main__":
    sys.exit(main())
