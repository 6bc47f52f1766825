#!/usr/bin/env python
"""Build a standard dataset (Kinetics, SSv2, UCF101, HMDB51, MSR-VTT, WebVid, Breakfast, COIN)
from its own annotation files.

The command line of ``turbo_ds.prep.prepare_dataset`` (also ``python -m turbo_ds.prep.prepare_dataset``
and ``turbo-ds-prepare-dataset``); ``--help`` lists the datasets, their splits and the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs it without `pip install -e .`

from turbo_ds.prep.prepare_dataset import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
