#!/usr/bin/env bash
# What the browser test (tests/e2e/test_e2e_storyboard_editor.py) needs beyond the hosts' environments
# (scripts/host.py installs Python's playwright there): Debian's Chromium. playwright never downloads one.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends chromium
fi
