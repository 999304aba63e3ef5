"""Runs the JS unit tests of the editor (tests/web/*.test.mjs) with node's built-in test runner."""

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed; the JS unit tests cannot run here")
def test_js_units_pass():
    files = sorted(str(p) for p in HERE.glob("*.test.mjs"))
    assert files
    proc = subprocess.run([NODE, "--test", *files], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
