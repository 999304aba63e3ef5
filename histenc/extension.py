"""Video-extension conditioning (paper 002, Sec. 3.3 "Video extension model", Sec. 4.1).

A T2V DiT learns to extend a video from a few given frames: the condition latents (the VAE
latents of the given frames, zero-padded in time to the clip's length) and a binary mask channel
(1 on given frames) are concatenated along channels and mapped by an extra patch projection to
the DiT's width; its output is added to the noisy latent's patch embedding. The projection is
zero-initialised, so before training the model is exactly the T2V model it was.

Multi-task training draws, per sample, which frames are given: the first frames, the last frames,
or both ends; with probability ``p_drop`` none (the model keeps its T2V ability, and the dropped
condition is what classifier-free guidance contrasts against).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .weights import check_metadata, load_weights, read_metadata, save_weights

KINDS = ("first", "last", "first_last")
EXTENSION_FORMAT = "histenc.video_extension"
EXTENSION_VERSION = 1


@dataclass(frozen=True)
class ExtensionTask:
    """Which latent frames of a clip are given: ``frames`` at the start, the end, or both (``kind``)."""

    kind: str  # one of KINDS, or "none"
    frames: int = 0

    def __post_init__(self):
        if self.kind not in KINDS + ("none",):
            raise ValueError(f"extension task kind {self.kind!r} is not one of {list(KINDS) + ['none']}; pick one.")
        if self.kind != "none" and self.frames < 1:
            raise ValueError(f"extension task {self.kind!r} gives {self.frames} frames; give at least 1 or use 'none'.")

    def given(self, length: int) -> torch.Tensor:
        """Bool [length]: True on the given latent frames."""
        given = torch.zeros(length, dtype=torch.bool)
        if self.kind == "none":
            return given
        if self.frames * (2 if self.kind == "first_last" else 1) >= length:
            raise ValueError(
                f"extension task {self.kind!r} gives {self.frames} frames at each end of a clip of "
                f"{length} latent frames, leaving none to generate; give fewer frames."
            )
        if self.kind in ("first", "first_last"):
            given[: self.frames] = True
        if self.kind in ("last", "first_last"):
            given[length - self.frames :] = True
        return given


def sample_task(
    generator: torch.Generator, max_frames: int, p_drop: float = 0.1, kinds: tuple[str, ...] = KINDS
) -> ExtensionTask:
    """One multi-task draw: dropped with ``p_drop``, else a kind and 1..``max_frames`` given frames."""
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"p_drop must be a probability in [0, 1], got {p_drop!r}; the paper uses 0.1.")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames!r}.")
    if torch.rand((), generator=generator).item() < p_drop:
        return ExtensionTask("none")
    kind = kinds[int(torch.randint(len(kinds), (), generator=generator))]
    return ExtensionTask(kind, int(torch.randint(1, max_frames + 1, (), generator=generator)))


def condition_inputs(latents: torch.Tensor, task: ExtensionTask) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition [B, C, T, H, W] zero off the given frames, mask [B, 1, T, H, W]) for a clip's latents."""
    b, _, t, h, w = latents.shape
    given = task.given(t).to(latents.device)
    mask = given.to(latents.dtype).view(1, 1, t, 1, 1).expand(b, 1, t, h, w)
    return latents * mask, mask.contiguous()


def pad_condition(frames: torch.Tensor, length: int, at: str = "first") -> tuple[torch.Tensor, torch.Tensor]:
    """Given frames [B, C, k, H, W] placed at the start (or end) of ``length`` frames, zero-padded; with the mask."""
    b, c, k, h, w = frames.shape
    if k >= length:
        raise ValueError(f"{k} given frames leave nothing to generate in a clip of {length}; give fewer frames.")
    task = ExtensionTask("first" if at == "first" else "last", k)
    cond = frames.new_zeros(b, c, length, h, w)
    where = task.given(length).to(frames.device)
    cond[:, :, where] = frames
    return cond, where.to(frames.dtype).view(1, 1, length, 1, 1).expand(b, 1, length, h, w).contiguous()


class ExtensionProjection(nn.Module):
    """Zero-initialised patch projection of [condition | mask] to the DiT's width ([B, D, T', H', W'])."""

    def __init__(self, channels: int, width: int, patch: tuple[int, int, int] = (1, 2, 2)):
        super().__init__()
        self.proj = nn.Conv3d(channels + 1, width, kernel_size=patch, stride=patch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([condition, mask], dim=1)
        return self.proj(x.to(self.proj.weight.dtype))


class ExtendedPatchEmbedding(nn.Module):
    """The DiT's patch embedding plus the projection of one condition: what an object patch puts in its place."""

    def __init__(
        self, embedding: nn.Module, projection: ExtensionProjection, condition: torch.Tensor, mask: torch.Tensor
    ):
        super().__init__()
        self.embedding, self.projection = embedding, projection
        self.condition, self.mask = condition, mask

    @property
    def weight(self) -> torch.Tensor:
        """The DiT's own embedding weight: hosts read its shape to size the model's input channels."""
        return self.embedding.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.embedding.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.embedding(x)
        extra = self.projection(self.condition.to(x.device), self.mask.to(x.device))
        if extra.shape[0] != out.shape[0]:  # cond + uncond batched together
            extra = extra.repeat(-(-out.shape[0] // extra.shape[0]), 1, 1, 1, 1)[: out.shape[0]]
        if extra.shape[2:] != out.shape[2:]:
            raise ValueError(
                f"the extension condition covers {tuple(extra.shape[2:])} patch cells but the latent "
                f"covers {tuple(out.shape[2:])}; pad the condition to the clip's frames and size."
            )
        return out + extra.to(out.dtype)


# --- files ----------------------------------------------------------------------------------------
def save_extension(
    path: str | os.PathLike, projection: ExtensionProjection, family: str, training: dict | None = None
) -> Path:
    """The projection as safetensors with what it fits (family, width, channels, patch) in the metadata."""
    w = projection.proj.weight
    meta = {
        "format": EXTENSION_FORMAT,
        "version": EXTENSION_VERSION,
        "family": family,
        "width": int(w.shape[0]),
        "channels": int(w.shape[1]) - 1,
        "patch": list(projection.proj.kernel_size),
        "training": training or {},
    }
    return save_weights(path, projection.state_dict(), meta)


def load_extension(
    path: str | os.PathLike,
    width: int | None = None,
    channels: int | None = None,
    patch=None,
    family: str | None = None,
) -> ExtensionProjection:
    """An extension projection from a file, refused in one sentence if it was made for another model.

    Sizes left as None are taken from the file (the caller checks them against the model at use).
    """
    path = Path(path)
    meta = read_metadata(path)
    check_metadata(meta, {"format": EXTENSION_FORMAT}, name=f"weights file {path.name}")
    if not isinstance(meta.get("version"), int) or meta["version"] > EXTENSION_VERSION:
        raise ValueError(
            f"weights file {path.name} has format version {meta.get('version')!r} but this pack reads up "
            f"to {EXTENSION_VERSION}; update the pack or train the extension again."
        )
    given = {"width": width, "channels": channels, "patch": patch, "family": family}
    expect = {k: (list(v) if k == "patch" else v) for k, v in given.items() if v is not None}
    tensors, meta = load_weights(path, expect)
    try:
        width, channels, patch = int(meta["width"]), int(meta["channels"]), tuple(int(p) for p in meta["patch"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"weights file {path.name} does not say which model it was made for; train or save the extension again."
        ) from None
    projection = ExtensionProjection(channels, width, patch)
    try:
        projection.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"weights file {path.name} does not hold an extension projection ({str(err).splitlines()[0]}); "
            "train or save it again."
        ) from None
    return projection
