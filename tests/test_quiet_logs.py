"""Warnings a training step repeats are shown once per process, not once per step."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit

STEPS = """
import warnings
from deepspeed.utils import logger
from turbo_ds.engine.quiet import show_repeated_warnings_once

show_repeated_warnings_once()
for step in range(50):
    warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning)
    with warnings.catch_warnings():  # what resets Python's own once-per-call-site memory (torch does this)
        warnings.simplefilter("ignore", UserWarning)
    logger.warning("a DeepSpeed warning from the same line every step")
    logger.warning(f"step {step}") if step in (3, 4) else None
warnings.warn("another text", FutureWarning)
"""


def test_a_warning_repeated_every_step_is_shown_once():
    proc = subprocess.run([sys.executable, "-c", STEPS], cwd=REPO, capture_output=True, text=True, check=True)
    err = proc.stdout + proc.stderr  # DeepSpeed's logger writes to stdout
    assert err.count("all_gather_into_tensor` is deprecated") == 1
    assert err.count("a DeepSpeed warning from the same line") == 1
    assert err.count("another text") == 1
    assert "step 3" in err and "step 4" not in err  # one call site: its first message stands for all
