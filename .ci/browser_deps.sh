#!/usr/bin/env bash
# What the browser test (tests/e2e/test_e2e_storyboard_editor.py) needs: Debian's Chromium and Python's
# playwright in the project venv. The browser comes from apt only; playwright never downloads one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends chromium
fi
PY=.cache/venv/bin/python
if [ ! -x "$PY" ]; then
  python3 scripts/host.py >/dev/null  # creates the project venv the tests run in
fi
"$PY" -m pip install -q playwright
