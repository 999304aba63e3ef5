"""The low-resolution branch's input: each token box at low resolution, before the DiT's patch embedding.

Two options (``EncoderConfig.lr_input``):

* ``"latent"``: the latents are area-averaged over each rate box (or one latent pixel per box is
  picked, ``lr_downsample="pick"``). No VAE is needed; at initialisation the tokens equal the large
  patchifier's. Files written before the option existed are of this kind.
* ``"pixels"``: the paper's branch (001, Sec. 3.1): each temporal group of latents is decoded to pixels
  by the VAE, downsampled in pixel space (an area average over ``H_rate x W_rate`` pixel blocks, and
  over the group's frames in time, or its newest frame with ``lr_downsample="pick"``), and encoded
  again by the VAE into one latent frame at 1/rate the size.
  A low-resolution image keeps its layout inside every token, where averaging latents mixes the
  VAE's channels across the whole box.

The section loop holds latents (the sampler makes latents and pixels exist only after the final
decode), so the pixel option decodes: keeping pixels is never possible while a video is generated.
Each group is decoded on its own, so a token never depends on later frames and incremental
encoding stays exact (tokens of finished groups are never recomputed). With a causal video VAE
(Wan, HunyuanVideo) a group decoded alone starts as if it were the first frame of a video: an
approximation of decoding the whole history, paid for exactness and bounded cost per section.

The VAE enters as a ``PixelCodec`` (the core never imports ComfyUI): the node wraps ComfyUI's VAE
and the model's latent format, the benchmarks use the fixed ``PixelLatents`` map.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

LR_INPUTS = ("latent", "pixels")


@runtime_checkable
class PixelCodec(Protocol):
    """A VAE as the pixel branch uses it, in the DiT's latent space (after the latent format's process_in).

    ``decode(latents [1, C, T, H, W]) -> frames [F, H * s, W * s, 3]`` in 0..1, any F >= 1;
    ``encode(frames [1, h, w, 3]) -> latents [1, C, 1, h / s, w / s]``; ``s`` is the VAE's spatial factor.
    """

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...


def latent_lowres(x: torch.Tensor, rate: tuple[int, int, int], downsample: str) -> torch.Tensor:
    """[B, C, L, H, W] latents -> [B, C, L / T, H / H_rate, W / W_rate] by area average or pick."""
    rh, rw, rt = rate
    if downsample == "area":
        return F.avg_pool3d(x, kernel_size=(rt, rh, rw)) if (rt, rh, rw) != (1, 1, 1) else x
    return x[:, :, rt - 1 :: rt, rh // 2 :: rh, rw // 2 :: rw]  # newest frame, the pixel nearest each box centre


def pixel_lowres(x: torch.Tensor, rate: tuple[int, int, int], downsample: str, codec: PixelCodec) -> torch.Tensor:
    """[B, C, L, H, W] latents -> the VAE's latents of the pixel-downsampled groups, [B, C, L / T, H / rh, W / rw]."""
    rh, rw, rt = rate
    b, c, length, h, w = x.shape
    out = []
    for i in range(b):
        groups = []
        for g in range(length // rt):
            frames = _decode(codec, x[i : i + 1, :, g * rt : (g + 1) * rt])
            small = _downsample_frames(frames, h, w, rh, rw, downsample)
            lat = codec.encode(small)
            if tuple(lat.shape) != (1, c, 1, h // rh, w // rw):
                raise ValueError(
                    f"the VAE encoded a {small.shape[2]}x{small.shape[1]} frame to a latent of shape "
                    f"{tuple(lat.shape)} but the low-resolution branch needs {(1, c, 1, h // rh, w // rw)}; "
                    "give the VAE of this model family."
                )
            groups.append(lat.to(x))
        out.append(torch.cat(groups, dim=2))
    return torch.cat(out, dim=0)


def _decode(codec: PixelCodec, latents: torch.Tensor) -> torch.Tensor:
    try:
        return codec.decode(latents)
    except RuntimeError as err:  # a VAE of another family fails inside its first layer
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"the VAE could not decode the model's {latents.shape[1]}-channel latents ({first}); "
            "give the VAE of this model family."
        ) from None


def _downsample_frames(frames: torch.Tensor, h: int, w: int, rh: int, rw: int, downsample: str) -> torch.Tensor:
    """Decoded frames [F, H * s, W * s, 3] of one group -> one frame [1, H * s / rh, W * s / rw, 3]."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % h or frames.shape[2] % w:
        raise ValueError(
            f"the VAE decoded a {w}x{h} latent to frames of shape {tuple(frames.shape)}, not [frames, "
            f"{h} * s, {w} * s, 3]; give the VAE of this model family."
        )
    frame = frames.float().mean(0) if downsample == "area" else frames[-1].float()
    planes = frame.permute(2, 0, 1).unsqueeze(0)
    if rh * rw > 1:
        planes = F.avg_pool2d(planes, kernel_size=(rh, rw))
    return planes[0].permute(1, 2, 0).unsqueeze(0)
