"""The pack's ComfyUI nodes: thin V3 adapters over histenc. Each feature module lists its NODES."""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

FEATURES = [
    "context",
    "history_encoder",
    "framepack",
    "framepack_hunyuan",
    "kvcache",
    "extension",
    "dataset",
    "lora_train",
    "train_history",
    "offload",
    "storyboard",
    "long_video",
    "decode",
    "trflow",
    "drift_report",
]


def node_list() -> list[type[io.ComfyNode]]:
    """Every node of every feature module; a feature that fails to import is logged, the rest still load."""
    found = []
    for name in FEATURES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"nodes.{name}"):
                continue  # feature not present in this checkout
            logging.exception("histenc: could not load the node module %s", name)
            continue
        except Exception:
            logging.exception("histenc: could not load the node module %s", name)
            continue
        found.extend(getattr(module, "NODES", []))
    return found


class HistEncExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


async def comfy_entrypoint() -> HistEncExtension:
    return HistEncExtension()
