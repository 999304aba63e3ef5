"""The pack's ComfyUI nodes: thin V3 adapters over histenc. Each feature module lists its NODES."""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

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


def tested_versions() -> list[str]:
    """The ComfyUI releases the suite runs on, as pyproject.toml's [tool.comfy] tested-comfyui lists them."""
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r"^tested-comfyui\s*=\s*\[([^\]]*)\]", text, re.M)
    return re.findall(r'"([^"]+)"', found.group(1)) if found else []


def host_version() -> str:
    """The running ComfyUI's version ("unknown" when it does not say)."""
    try:
        return str(importlib.import_module("comfyui_version").__version__)
    except (ImportError, AttributeError):
        return "unknown"


def host_note() -> str:
    """One line: the host's version and whether the pack's test suite runs on it."""
    version, tested = host_version(), tested_versions()
    if version in tested:
        return f"histenc: ComfyUI {version}, a tested host."
    return (
        f"histenc: ComfyUI {version} is not one of the tested hosts ({', '.join(tested)}); the nodes load, and "
        "a feature whose host internals changed says so in one sentence when it runs."
    )


class HistEncExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


async def comfy_entrypoint() -> HistEncExtension:
    logging.info(host_note())
    return HistEncExtension()
