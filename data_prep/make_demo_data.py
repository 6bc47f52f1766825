#!/usr/bin/env python
"""Generate the demo video datasets (action and long-video).

The command line of ``turbo_ds.prep.make_demo_data`` (also ``python -m turbo_ds.prep.make_demo_data`` and
``turbo-ds-make-demo-data``); ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs it without `pip install -e .`

from turbo_ds.prep.make_demo_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
