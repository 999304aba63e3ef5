"""Prints the server's reading (describe_storyboard) of each storyboard text given as a JSON list on stdin.

The JS edit tests start from these docs, so they edit what the server really answers, not a copy.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from histenc.longvideo.storyboard_editor import describe_storyboard  # noqa: E402

json.dump([describe_storyboard(text) for text in json.load(sys.stdin)], sys.stdout)
