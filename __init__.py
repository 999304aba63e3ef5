"""ComfyUI entry point of the pack: registers the nodes and the frontend folder."""

import os
import sys

_root = os.path.dirname(os.path.abspath(__file__))
if _root not in sys.path:
    sys.path.append(_root)  # appended, so ComfyUI's own top-level modules (e.g. `nodes`) keep priority

from .nodes import comfy_entrypoint  # noqa: E402

WEB_DIRECTORY = "./web"
__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
