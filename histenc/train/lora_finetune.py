"""Plain LoRA finetune of a native Wan or HunyuanVideo DiT on a cached dataset (small style / character adapters).

Each step picks a cached clip, draws noise and a shifted logit-normal time t, and trains the LoRA
so that the DiT's velocity at x_t = (1 - t) x0 + t noise matches noise - x0, the rectified-flow
target ComfyUI's Wan and HunyuanVideo sampling (model_sampling CONST, timestep = 1000 t) expects.
Latents are moved into the model's input space by the caller's ``to_model_space`` (ComfyUI:
process_latent_in). HunyuanVideo also takes the prompt's pooled CLIP-L vector (cached by the dataset)
and its embedded guidance, held at ``HUNYUAN_GUIDANCE``, the value ComfyUI's HunyuanVideo samples with
unless a FluxGuidance node sets another.

Block swap: a ``BlockSwap`` over the DiT's blocks (histenc.memory.offload) is installed for the run; its
swapped blocks run checkpointed, their weights fetched again for backward, so gradients are those of the
unswapped model. Gradient checkpointing covers every block of either family (Wan's ``blocks``,
HunyuanVideo's double then single blocks). HunyuanVideo's blocks add to their residual stream in place, so they
train under ``histenc.dit.hunyuan.trainable``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch
import torch.nn.functional as F

from ..dit.hunyuan import trainable as hunyuan_trainable
from ..dit.info import dit_info
from ..lora import LoRA
from ..memory.offload import BlockSwap, model_blocks
from .dataset import CachedDataset
from .loop import TrainResult, TrainSettings, checkpoint_modules, logit_normal_timesteps, noisy_pair, train

HUNYUAN_GUIDANCE = 6.0


def text_width(dit) -> int:
    """The width of the text conditioning the DiT takes (umT5 for Wan; the LLM's for HunyuanVideo)."""
    if dit_info(dit).family == "wan":
        return int(dit.text_embedding[0].in_features)
    return int(dit.txt_in.input_embedder.in_features)


def check_dataset_fits(dataset: CachedDataset, dit) -> None:
    """Refuse a dataset cached with a VAE or text encoder of another model, naming both sizes."""
    info = dit_info(dit)
    in_dim, out_dim = info.input_channels, info.latent_channels
    if in_dim != out_dim:
        raise ValueError(
            f"this model takes {in_dim} input channels (image-to-video); plain LoRA training needs a "
            "text-to-video model, so load the T2V / TI2V checkpoint."
        )
    first = dataset[0]
    channels = int(first["latents"].shape[1])
    if channels != out_dim:
        raise ValueError(
            f"the dataset's latents have {channels} channels but this model uses {out_dim}; "
            "cache the dataset again with this model's VAE."
        )
    width, text_dim = int(first["text"].shape[-1]), text_width(dit)
    if width != text_dim:
        raise ValueError(
            f"the dataset's text conditioning has width {width} but this model expects {text_dim}; "
            "cache the dataset again with this model's text encoder."
        )
    if info.family == "hunyuan_video" and first.get("pooled") is None:
        raise ValueError(
            "the dataset holds no pooled text vector, which HunyuanVideo takes beside the text (CLIP-L's); cache "
            "the dataset again with the Video Dataset node and HunyuanVideo's text encoder."
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


def velocity(dit, x_t, timestep, context, pooled=None) -> torch.Tensor:
    """The DiT's prediction at ``x_t``: Wan takes the text; HunyuanVideo the text, pooled vector and guidance."""
    if pooled is None:
        return dit(x_t, timestep, context)
    guidance = torch.full((x_t.shape[0],), HUNYUAN_GUIDANCE, device=x_t.device)
    return dit(x_t, timestep, context, y=pooled, guidance=guidance)


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
    block_swap: BlockSwap | None = None,
) -> TrainResult:
    """Train ``lora`` (attached to ``dit``) for ``settings.steps`` steps, resuming from ``out_dir``.

    ``block_swap``: an engine over ``model_blocks(dit)`` whose swapped blocks' weights live off the device; it
    is parked and installed for the run and undone after it.
    """
    check_dataset_fits(dataset, dit)
    hunyuan = dit_info(dit).family == "hunyuan_video"
    device = next(dit.parameters()).device
    memo: dict[int, tuple] = {}

    def sample(i: int):
        if i not in memo:
            item = dataset[i]
            pooled = item["pooled"].float() if hunyuan else None
            memo[i] = (to_model_space(item["latents"].float()), item["text"].float(), pooled)
        return memo[i]

    def batches(step: int, g: torch.Generator):
        x0, context, pooled = sample(int(torch.randint(0, len(dataset), (1,), generator=g)))
        noise = torch.randn(x0.shape, generator=g)
        t = logit_normal_timesteps(x0.shape[0], g, shift=shift)
        x_t, target = noisy_pair(x0, t, noise)
        pooled = None if pooled is None else pooled.reshape(x0.shape[0], -1).to(device)
        return x_t.to(device), (t * 1000).to(device), context.to(device), target.to(device), pooled

    def loss_fn(batch, step: int) -> torch.Tensor:
        x_t, timestep, context, target, pooled = batch
        return F.mse_loss(velocity(dit, x_t, timestep, context, pooled).float(), target.float())

    params = {
        f"{name}.{kind}": getattr(layer, kind)
        for name, layer in zip(lora.names, lora.layers)
        for kind in ("down", "up")
    }
    release_inference_tensors(dit)
    frozen = {p: p.requires_grad for p in dit.parameters()}
    dit.requires_grad_(False)
    blocks = model_blocks(dit)
    if block_swap is not None and [id(b) for b in block_swap.blocks] != [id(b) for b in blocks]:
        raise ValueError("the block swap was built over other blocks than this DiT's; build it on model_blocks(dit).")
    swapped = set(block_swap.swap) if block_swap is not None else set()
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [p.requires_grad_(flag) for p, flag in frozen.items()])
        if hunyuan:  # innermost around the blocks' own forward (see histenc.dit.hunyuan.trainable)
            stack.enter_context(hunyuan_trainable(dit))
        if block_swap is not None:
            block_swap.park()
            stack.callback(block_swap.unpark)
            block_swap.install()
            stack.callback(block_swap.uninstall)
        if gradient_checkpointing:  # swapped blocks checkpoint themselves (histenc.memory.offload)
            stack.callback(checkpoint_modules([b for i, b in enumerate(blocks) if i not in swapped]))
        lora.attach()
        return train(params, loss_fn, batches, settings, out_dir, on_step=on_step)
