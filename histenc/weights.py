"""safetensors files with typed metadata, validated on load.

Every trained piece of the pack (history encoders, packing projections, LoRA, codebooks) is
stored the same way: a flat dict of tensors plus a small metadata dict. Metadata values are
kept as JSON strings inside the safetensors header, so ints, floats, bools and lists survive
a round trip, and a file can be checked against the model it is meant for before any tensor
is read. Files are written to a temporary name and moved into place, so an interrupted save
never leaves a half-written file under the real name. No pickle is involved anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import atomic_path

FORMAT_KEY = "format"
VERSION_KEY = "version"


def _encode_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise ValueError(f"weights metadata keys must be strings, got {key!r}; rename that entry.")
        try:
            out[key] = json.dumps(value)
        except TypeError:
            raise ValueError(
                f"weights metadata {key!r} has the value {value!r}, which is not JSON-serialisable; "
                "store it as a string, number, bool or list."
            ) from None
    return out


def _decode_meta(raw: Mapping[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, text in (raw or {}).items():
        try:
            out[key] = json.loads(text)
        except (TypeError, ValueError):
            out[key] = text  # written by another tool: keep the plain string
    return out


def _same(found: Any, wanted: Any) -> bool:
    if isinstance(wanted, tuple):
        wanted = list(wanted)
    if isinstance(found, tuple):
        found = list(found)
    return found == wanted


def save_weights(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` atomically (see histenc.files)."""
    path = Path(path)
    if FORMAT_KEY not in meta or VERSION_KEY not in meta:
        raise ValueError(f"weights metadata must name a {FORMAT_KEY!r} and a {VERSION_KEY!r}; add both before saving.")
    header = _encode_meta(meta)
    flat = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"weights entry {name!r} is a {type(tensor).__name__}, not a tensor; convert it first.")
        flat[name] = tensor.detach().to("cpu").contiguous()
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=header)
    return path


def _open_error(path: Path, err: Exception) -> ValueError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"weights file {path} is not a readable safetensors file ({reason}); it may be truncated or corrupt, "
        "so download or save it again."
    )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a weights file, reading only its header."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist; check the file name and folder.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return _decode_meta(f.metadata())
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise _open_error(path, err) from None


def check_metadata(meta: Mapping[str, Any], expect: Mapping[str, Any], name: str = "weights file") -> None:
    """Refuse, in one sentence naming both values, the first expected entry the metadata disagrees with."""
    for key, wanted in expect.items():
        if key not in meta:
            raise ValueError(
                f"{name} has no {key!r} in its metadata but {wanted!r} is needed here; it was not made for this use."
            )
        if not _same(meta[key], wanted):
            raise ValueError(
                f"{name} was made for {key} {meta[key]!r} but this needs {key} {wanted!r}; "
                "pick weights made for this model and setting."
            )


def load_weights(
    path: str | os.PathLike, expect: Mapping[str, Any] | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file, checking ``expect`` against its metadata before loading any tensor.

    Returns (tensors, meta). Any read failure (missing file, bad header, truncated data) becomes
    one ValueError sentence, so a caller such as a node never sees a raw library traceback.
    """
    path = Path(path)
    meta = read_metadata(path)
    if expect:
        check_metadata(meta, expect, name=f"weights file {path.name}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:
        raise _open_error(path, err) from None
    return tensors, meta
