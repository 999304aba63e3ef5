"""Run the whole test suite against the real host: ``python3 scripts/test.py [pytest args]``.

Creates the project's environment and host on first use (see scripts/host.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import host  # noqa: E402


def main() -> int:
    host.reexec_in_venv()
    import pytest

    os.chdir(host.REPO)
    args = sys.argv[1:]
    if not any(os.path.exists(a.split("::")[0]) for a in args if not a.startswith("-")):
        args.append("tests")  # options alone (e.g. -k, --durations) still run the project's tests
    return pytest.main(["-c", "tests/pytest.ini", "--rootdir", "tests", "-q", *args])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except host.HostError as e:
        sys.exit(f"error: {e}")
