"""ComfyUI entry point of the pack: registers the nodes and the frontend folder.

The pack is imported as a package from ``custom_nodes/<any folder name>``; its own code is reached
relatively (``histenc`` is the core, ``histenc_nodes`` the ComfyUI nodes), so nothing is added to
``sys.path`` and no top-level name of the ComfyUI process is taken.
"""

from .histenc_nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"
__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
