"""A clone works before `pip install -e .`: the data_prep tools find the package next to them.

The suite's interpreter has turbo_ds installed editable (pointing at another checkout, even), so each
tool runs here from a copy of the tracked files with that installation hidden: the editable finder
removed from ``sys.meta_path``, no PYTHONPATH, and a working directory outside the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e

TOOLS = sorted(p.name for p in (REPO / "data_prep").glob("*.py"))
# what `python data_prep/X.py` does, in an interpreter whose editable turbo_ds is hidden
HIDDEN = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
          "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; {body}")


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The tracked files of this checkout (as a clone has them), copied."""
    out = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, out / name)
    return out


def hidden(body: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", HIDDEN.format(body=body)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_without_the_tools_own_path_the_package_is_not_found(clone, tmp_path):
    proc = hidden("import turbo_ds", tmp_path)  # the control: the hiding works
    assert proc.returncode == 1 and "No module named 'turbo_ds'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_every_data_prep_tool_runs_from_a_clone(clone, tmp_path, tool):
    script = clone / "data_prep" / tool
    proc = hidden(f"sys.argv = [{str(script)!r}, '--help']; runpy.run_path(sys.argv[0], run_name='__main__')", tmp_path)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
