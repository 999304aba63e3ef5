"""Autoregressive finetuning (paper 001, Eq. 5-6): predict the next section from phi(H) and its prompt.

Each step cuts a clip at a random point: everything before (at most ``max_history`` frames, at
least one encoder group) is the clean history H, the next ``section_frames`` frames are the target
section X. The DiT with a newly initialised LoRA learns the flow-matching velocity of X at time
t, seeing the context tokens of H and the prompt a generated section there gets (the storyboard cue in
force at its middle, ``histenc.longvideo.timing``); the context source (the pretrained encoder, or
FramePack packing, optionally over a discretised history) keeps training with it, so its features
move from frame-query targets toward generation.
The section sits at RoPE times 0..F-1 with the history before it, as in inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from ..encoder.model import HistoryEncoder
from ..longvideo.timing import latent_section_prompt
from .frame_query import Clip, DiTTrainer, fit, trainable_module
from .loop import TrainResult, TrainSettings, logit_normal_timesteps, noisy_pair


@dataclass(frozen=True)
class AutoregressiveSettings:
    section_frames: int = 4  # latent frames of the section predicted per step
    max_history: int = 64  # the newest history frames the context sees (bounds memory on long clips)
    min_history: int = 2  # shortest history drawn (an encoder needs at least its temporal group)
    shift: float = 3.0

    def __post_init__(self):
        if int(self.section_frames) < 1:
            raise ValueError(f"section_frames is {self.section_frames}; predict at least 1 latent frame.")
        if not 1 <= int(self.min_history) <= int(self.max_history):
            raise ValueError(
                f"min_history {self.min_history} and max_history {self.max_history} must satisfy "
                "1 <= min_history <= max_history."
            )

    def to_meta(self) -> dict:
        return asdict(self)


def min_history_for(source, ar: AutoregressiveSettings) -> int:
    """The shortest history the source accepts: an encoder's temporal group, else ``min_history``."""
    inner = trainable_module(source)
    group = inner.config.box[0] if isinstance(inner, HistoryEncoder) else 1
    return max(int(ar.min_history), group)


def section_batch(clips: Sequence[Clip], ar: AutoregressiveSettings, lo: int, g: torch.Generator, device) -> dict:
    """One example: a random clip split into clean history and the next section, noised at t."""
    usable = [c for c in clips if c.latents.shape[2] >= lo + ar.section_frames]
    clip = usable[int(torch.randint(0, len(usable), (1,), generator=g))]
    total, f = clip.latents.shape[2], int(ar.section_frames)
    split = int(torch.randint(lo, total - f + 1, (1,), generator=g))
    history = clip.latents[:, :, max(0, split - int(ar.max_history)) : split].float()
    x0 = clip.latents[:, :, split : split + f].float()
    t = logit_normal_timesteps(1, g, shift=ar.shift)
    x_t, target = noisy_pair(x0, t, torch.randn(x0.shape, generator=g))
    return {
        "history": history.to(device),
        "x_t": x_t.to(device),
        "timestep": (t * 1000).to(device),
        "text": latent_section_prompt(clip.prompts, split, split + f).float().to(device),
        "target": target.to(device),
        "times": torch.arange(f, dtype=torch.float32),
    }


def finetune_autoregressive(
    dit,
    source,
    clips: Sequence[Clip],
    settings: TrainSettings,
    out_dir,
    ar: AutoregressiveSettings = AutoregressiveSettings(),
    lora=None,
    **kwargs,
) -> TrainResult:
    """Eq. 6: train ``source`` (encoder / FramePack projections) and ``lora`` jointly on next-section prediction."""
    lo = min_history_for(source, ar)
    if not any(c.latents.shape[2] >= lo + ar.section_frames for c in clips):
        longest = max((c.latents.shape[2] for c in clips), default=0)
        raise ValueError(
            f"no clip is long enough for autoregressive finetuning: the longest has {longest} latent "
            f"frames but a history of {lo} plus a section of {ar.section_frames} is needed; use longer "
            "clips or a shorter section."
        )
    device = next(dit.parameters()).device
    inner = trainable_module(source)
    if inner is not None:
        inner.to(device)
    trainer = DiTTrainer(dit, source, lora, kwargs.pop("clean_context", None))
    return fit(trainer, lambda g: section_batch(clips, ar, lo, g, device), settings, out_dir, **kwargs)
