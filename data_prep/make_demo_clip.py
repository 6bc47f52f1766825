#!/usr/bin/env python
"""Write a small random-init CLIP folder for the demo (model + tokenizer trained on the demo captions).

The command line of ``turbo_ds.prep.make_demo_clip`` (also ``python -m turbo_ds.prep.make_demo_clip`` and
``turbo-ds-make-demo-clip``); ``--help`` lists its options.
"""

import sys

from turbo_ds.prep.make_demo_clip import main

if __name__ == "__main__":
    sys.exit(main())
