"""Runs the JS unit tests of the editor (tests/web/*.test.mjs) with node's built-in test runner.

They start from the server's own reading of each storyboard (tests/web/describe.py), run with this
interpreter so the core they ask is the one under test.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed; the JS unit tests cannot run here")
def test_js_units_pass():
    files = sorted(str(p) for p in HERE.glob("*.test.mjs"))
    assert files
    env = {**os.environ, "HISTENC_PYTHON": sys.executable}
    proc = subprocess.run([NODE, "--test", *files], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
