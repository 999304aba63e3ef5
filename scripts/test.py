"""Run the whole test suite against a real host: ``python3 scripts/test.py [--host NAME|PATH] [pytest args]``.

Creates the host's environment on first use (see scripts/host.py). ``--host`` picks the ComfyUI the
suite runs against (0.3.75, the default, or 0.33.0, or a ComfyUI folder); it is the same as setting
``HISTENC_HOST``. Test artifacts (server logs) go to test-artifacts/<host>.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import host  # noqa: E402


def take_host(args: list[str]) -> list[str]:
    """Remove ``--host NAME`` / ``--host=NAME`` from the arguments and select that host."""
    out, i = [], 0
    while i < len(args):
        if args[i] == "--host" and i + 1 < len(args):
            os.environ["HISTENC_HOST"] = args[i + 1]
            i += 2
            continue
        if args[i].startswith("--host="):
            os.environ["HISTENC_HOST"] = args[i].split("=", 1)[1]
        else:
            out.append(args[i])
        i += 1
    return out


def main() -> int:
    args = take_host(sys.argv[1:])
    host.reexec_in_venv()
    import pytest

    os.chdir(host.REPO)
    os.environ.setdefault("HISTENC_ARTIFACTS", str(host.REPO / "test-artifacts" / host.host_name()))
    if not any(os.path.exists(a.split("::")[0]) for a in args if not a.startswith("-")):
        args.append("tests")  # options alone (e.g. -k, --durations) still run the project's tests
    print(f"[test] ComfyUI host {host.host_name()} at {host.comfyui_path()}", flush=True)
    return pytest.main(["-c", "tests/pytest.ini", "--rootdir", "tests", "-q", *args])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except host.HostError as e:
        sys.exit(f"error: {e}")
