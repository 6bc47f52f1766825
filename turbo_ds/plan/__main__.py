"""``python -m turbo_ds.plan``: the planner's command line (``cli.main``); also the measuring child's entry."""

import sys

from turbo_ds.plan.cli import main

if __name__ == "__main__":  # importing this module (as tests that import every module do) runs nothing
    sys.exit(main())
