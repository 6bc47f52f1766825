#!/usr/bin/env python
"""Write a small random-init CLIP folder for the demo (model + tokenizer trained on the demo captions).

The command line of ``turbo_ds.prep.make_demo_clip`` (also ``python -m turbo_ds.prep.make_demo_clip`` and
``turbo-ds-make-demo-clip``); ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs it without `pip install -e .`

from turbo_ds.prep.make_demo_clip import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
