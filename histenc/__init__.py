"""histenc: long-video history context for video DiTs.

Plain PyTorch core of the pack. Nothing in this package imports ComfyUI, so it can be
used, tested and trained headless. The ComfyUI nodes in ``nodes/`` are thin adapters.
"""

from .context import ContextTokens, ContextSource, SectionGrid

__version__ = "0.1.0"
__all__ = ["ContextTokens", "ContextSource", "SectionGrid", "__version__"]
