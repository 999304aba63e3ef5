"""Two-expert sampling (Wan 2.2 14B): a high-noise model makes the first steps of every section, a low-noise model
the rest, exactly as ComfyUI's Wan 2.2 templates chain two KSamplerAdvanced.

The first stage adds the section's noise and stops at the switch with its leftover noise
(``last_step = switch``, no full denoise); the second stage adds no noise and continues from there
(``start_step = switch``, zero noise, full denoise). With a custom SAMPLER the sigmas are split at the switch
as SplitSigmas does. Where the switch falls and which pairs fit: histenc.longvideo.experts.

Frames the section is given through the latent (continuation, the start image; noise mask 0) are where two
stock KSamplerAdvanced go wrong: the second stage continues from the first one's latent there too, so it sees
the given frames under the noise of the switch at every later step and returns them noisy. Here the second
stage gets the given frames and the section's noise there instead (``second_stage``), so with one model the two
stages give what one sampler run gives; the given frames are then written back exactly.
"""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import torch

from ..histenc.longvideo.experts import Experts, check_pair, switch_at
from ._common import model_info


def section_sigmas(model, steps: int, sampler_name: str, scheduler: str, custom: bool) -> torch.Tensor:
    """The sigmas one section is sampled on: the stock KSampler's (its sampler may add a step), or the
    scheduler's for a custom SAMPLER."""
    if custom:
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    return comfy.samplers.KSampler(
        model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler, denoise=1.0
    ).sigmas


def experts_for(model, low, info, steps, sampler_name, scheduler, custom, step, boundary) -> Experts | None:
    """The Experts of a section run (None without a low-noise model), checked."""
    if low is None:
        return None
    check_pair(info, model_info(low), (type(model.model).__name__, type(low.model).__name__))
    sigmas = section_sigmas(model, steps, sampler_name, scheduler, custom)
    return Experts(low, switch_at(sigmas, step, boundary), len(sigmas) - 1)


def second_stage(first: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, mask: torch.Tensor | None):
    """The noise and latent of the second stage. Where the section makes frames: no noise and the first stage's
    result, as KSamplerAdvanced continues. Where it is given frames (noise mask 0): the section's own noise and the
    given frames, so the low-noise expert sees them as the first did, noised to each step's sigma; continuing from
    the first stage's result there would show it the given frames under the noise of the switch at every step."""
    quiet = torch.zeros(first.size(), dtype=first.dtype, layout=first.layout, device="cpu")
    if mask is None:
        return quiet, first
    mask = mask.to(first)
    return noise.to(first) * (1.0 - mask), first * mask + latent.to(first) * (1.0 - mask)


def sample_two(high, low, switch, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent, **kw):
    """Two chained comfy.sample.sample calls, as two KSamplerAdvanced: ``kw`` is noise_mask, callback (given
    the step offset, made per stage), disable_pbar, seed."""
    callback = kw.pop("callback", None)
    first = comfy.sample.sample(
        high,
        noise,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent,
        start_step=0,
        last_step=switch,
        force_full_denoise=False,
        callback=None if callback is None else callback(0),
        **kw,
    )
    noise, latent = second_stage(first, noise, latent, kw.get("noise_mask"))
    return comfy.sample.sample(
        low,
        noise,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent,
        disable_noise=True,
        start_step=switch,
        last_step=steps,
        force_full_denoise=True,
        callback=None if callback is None else callback(switch),
        **kw,
    )


def sample_two_custom(high, low, switch, noise, cfg, sampler, sigmas, positive, negative, latent, **kw):
    """Two chained comfy.sample.sample_custom calls on the sigmas split at the switch (SplitSigmas)."""
    callback = kw.pop("callback", None)
    first = comfy.sample.sample_custom(
        high,
        noise,
        cfg,
        sampler,
        sigmas[: switch + 1],
        positive,
        negative,
        latent,
        callback=None if callback is None else callback(0),
        **kw,
    )
    noise, latent = second_stage(first, noise, latent, kw.get("noise_mask"))
    return comfy.sample.sample_custom(
        low,
        noise,
        cfg,
        sampler,
        sigmas[switch:],
        positive,
        negative,
        latent,
        callback=None if callback is None else callback(switch),
        **kw,
    )
