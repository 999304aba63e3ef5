"""Plain LoRA finetune of a native Wan DiT on a cached dataset (small style / character adapters).

Each step picks a cached clip, draws noise and a shifted logit-normal time t, and trains the LoRA
so that the DiT's velocity at x_t = (1 - t) x0 + t noise matches noise - x0, the rectified-flow
target ComfyUI's Wan sampling (model_sampling CONST, timestep = 1000 t) expects. Latents are moved
into the model's input space by the caller's ``to_model_space`` (ComfyUI: process_latent_in).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F

from ..dit.info import dit_info
from ..lora import LoRA
from .dataset import CachedDataset
from .loop import TrainResult, TrainSettings, checkpoint_modules, logit_normal_timesteps, noisy_pair, train


def check_dataset_fits(dataset: CachedDataset, dit) -> None:
    """Refuse a dataset cached with a VAE or text encoder of another model, naming both sizes."""
    info = dit_info(dit)
    in_dim, out_dim = info.input_channels, info.latent_channels
    if in_dim != out_dim:
        raise ValueError(
            f"this model takes {in_dim} input channels (image-to-video); plain LoRA training needs a "
            "text-to-video Wan model, so load the T2V / TI2V checkpoint."
        )
    first = dataset[0]
    channels = int(first["latents"].shape[1])
    if channels != out_dim:
        raise ValueError(
            f"the dataset's latents have {channels} channels but this model uses {out_dim}; "
            "cache the dataset again with this model's VAE."
        )
    width, text_dim = int(first["text"].shape[-1]), int(dit.text_embedding[0].in_features)
    if width != text_dim:
        raise ValueError(
            f"the dataset's text conditioning has width {width} but this model expects {text_dim}; "
            "cache the dataset again with this model's text encoder."
        )


def release_inference_tensors(module: torch.nn.Module) -> int:
    """Swap parameters and buffers created under torch.inference_mode for plain copies; returns how many.

    ComfyUI loads models inside inference mode, and autograd cannot save such tensors for backward;
    the copies hold the same values, so the model computes exactly as before.
    """
    swapped = 0
    with torch.inference_mode(False):
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.is_inference():
                    m._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                    swapped += 1
            for name, b in list(m._buffers.items()):
                if b is not None and b.is_inference():
                    m._buffers[name] = b.clone()
                    swapped += 1
    return swapped


def finetune_lora(
    dit,
    lora: LoRA,
    dataset: CachedDataset,
    settings: TrainSettings,
    out_dir: str | os.PathLike,
    to_model_space: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    shift: float = 3.0,
    gradient_checkpointing: bool = False,
    on_step=None,
) -> TrainResult:
    """Train ``lora`` (attached to ``dit``) for ``settings.steps`` steps, resuming from ``out_dir``."""
    check_dataset_fits(dataset, dit)
    device = next(dit.parameters()).device
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def sample(i: int):
        if i not in memo:
            item = dataset[i]
            memo[i] = (to_model_space(item["latents"].float()), item["text"].float())
        return memo[i]

    def batches(step: int, g: torch.Generator):
        x0, context = sample(int(torch.randint(0, len(dataset), (1,), generator=g)))
        noise = torch.randn(x0.shape, generator=g)
        t = logit_normal_timesteps(x0.shape[0], g, shift=shift)
        x_t, target = noisy_pair(x0, t, noise)
        return x_t.to(device), (t * 1000).to(device), context.to(device), target.to(device)

    def loss_fn(batch, step: int) -> torch.Tensor:
        x_t, timestep, context, target = batch
        return F.mse_loss(dit(x_t, timestep, context).float(), target.float())

    params = {
        f"{name}.{kind}": getattr(layer, kind)
        for name, layer in zip(lora.names, lora.layers)
        for kind in ("down", "up")
    }
    release_inference_tensors(dit)
    frozen = {p: p.requires_grad for p in dit.parameters()}
    dit.requires_grad_(False)
    undo = checkpoint_modules(dit.blocks) if gradient_checkpointing else (lambda: None)
    lora.attach()
    try:
        return train(params, loss_fn, batches, settings, out_dir, on_step=on_step)
    finally:
        undo()
        for p, flag in frozen.items():
            p.requires_grad_(flag)
