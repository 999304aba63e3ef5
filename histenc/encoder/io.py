"""Saving and loading history encoders (and their incremental state) as safetensors.

The metadata carries everything needed to rebuild the encoder (rate, variant, channels, width,
patch, hidden sizes, how the low-resolution branch is made) plus the DiT family it was trained
with, so a file can be refused before its tensors are read when it does not fit the model it is
applied to. Files with the pixel low-resolution branch are format version 2, so a pack that
predates it refuses them instead of running them as latent averaging; version 1 files (no
``lr_input``) load as latent averaging.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .model import EncoderConfig, HistoryEncoder
from .state import EncoderState
from ..weights import check_metadata, load_weights, read_metadata, save_weights

ENCODER_FORMAT = "histenc.history_encoder"
STATE_FORMAT = "histenc.history_encoder_state"
ENCODER_VERSION = 2  # the newest version this pack reads and writes


def file_version(config: EncoderConfig) -> int:
    """1 for what every version of the pack reads; 2 when the file needs the pixel low-resolution branch."""
    return 2 if config.lr_input == "pixels" else 1


def encoder_meta(encoder: HistoryEncoder, family: str | None = None) -> dict:
    meta = {"format": ENCODER_FORMAT, "version": file_version(encoder.config), "family": family or "unknown"}
    meta.update(encoder.config.to_meta())
    return meta


def config_from_file(meta: dict, path: Path) -> EncoderConfig:
    """The configuration a file describes, or one sentence naming the unusable field and its value."""
    try:
        return EncoderConfig.from_meta(meta)
    except ValueError as err:
        raise ValueError(f"weights file {path.name} is not a usable history encoder: {err}") from None


def expect_for_dit(dit, family: str | None = None) -> dict:
    """What an encoder file must say to be applied to ``dit`` (width, latent channels, patch, family)."""
    expect = {"width": int(dit.width), "channels": int(dit.in_channels), "patch": list(dit.patch)}
    if family:
        expect["family"] = family
    return expect


def save_encoder(path: str | os.PathLike, encoder: HistoryEncoder, family: str | None = None) -> Path:
    return save_weights(path, encoder.state_dict(), encoder_meta(encoder, family))


def _check_format(meta: dict, path: Path, wanted: str) -> None:
    check_metadata(meta, {"format": wanted}, name=f"weights file {path.name}")
    version = meta.get("version")
    if not isinstance(version, int) or version > ENCODER_VERSION:
        raise ValueError(
            f"weights file {path.name} has format version {version!r} but this pack reads up to {ENCODER_VERSION}; "
            "update the pack or re-save the file."
        )


def load_encoder(
    path: str | os.PathLike,
    dit=None,
    family: str | None = None,
    expect: dict | None = None,
    device: str | torch.device = "cpu",
) -> HistoryEncoder:
    """Rebuild an encoder from a file, refusing it if it does not fit ``dit`` / ``family`` / ``expect``."""
    path = Path(path)
    meta = read_metadata(path)
    _check_format(meta, path, ENCODER_FORMAT)
    wanted = dict(expect or {})
    if dit is not None:
        wanted.update(expect_for_dit(dit, family))
    elif family:
        wanted["family"] = family
    config_from_file(meta, path)  # refused before any tensor is read
    tensors, meta = load_weights(path, wanted, device=device)
    try:
        encoder = HistoryEncoder(EncoderConfig.from_meta(meta))
        encoder.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"weights file {path.name} does not match the encoder its metadata describes ({first}); re-save it."
        ) from None
    return encoder.to(device)


def save_state(path: str | os.PathLike, state: EncoderState, encoder: HistoryEncoder) -> Path:
    """Store an incremental state beside the history so a long generation resumes without re-encoding."""
    meta = {"format": STATE_FORMAT, "version": file_version(encoder.config)}
    meta.update(encoder.config.to_meta())
    return save_weights(path, state.to_dict(), meta)


def load_state(path: str | os.PathLike, encoder: HistoryEncoder, device=None) -> EncoderState:
    """Read a state saved for an encoder with the same configuration as ``encoder``."""
    path = Path(path)
    meta = read_metadata(path)
    _check_format(meta, path, STATE_FORMAT)
    check_metadata({"lr_input": "latent", **meta}, encoder.config.to_meta(), name=f"weights file {path.name}")
    tensors, _ = load_weights(path)
    return EncoderState.from_dict(tensors, device=device)
