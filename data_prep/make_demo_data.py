#!/usr/bin/env python
"""Generate the demo video datasets (action and long-video).

The command line of ``turbo_ds.prep.make_demo_data`` (also ``python -m turbo_ds.prep.make_demo_data`` and
``turbo-ds-make-demo-data``); ``--help`` lists its options.
"""

import sys

from turbo_ds.prep.make_demo_data import main

if __name__ == "__main__":
    sys.exit(main())
