"""Training the video-extension model and its causal clip attention (paper 002, Sec. 3.3 and 4.1).

Two stages, as the paper trains them:

* ``extension`` (short clips): a T2V DiT learns to continue given frames. Each step takes a clip
  window and a multi-task draw (first, last, or first + last frames given; none with ``p_drop``);
  the given frames reach the DiT as condition latents + mask through the zero-initialised
  ``ExtensionProjection`` (histenc.extension). The projection and a LoRA train on the
  flow-matching loss of the frames to generate (given frames are not scored).
* ``causal`` (long clips): the model learns to use the K/V of past sections. A clip is cut into
  sections of ``section_frames`` new latent frames (at a random offset); for a random section the
  earlier ones are ranked by prompt similarity and at most ``max_clips`` selected by a
  ``ClipKVCache``, exactly as at inference: same selection and tie rule, same rebuild in time
  order in which each selected clip attends to the selected ones before it, one pass over its
  clean latents at t = 0 at its real frames. Their K/V stay on the autograd graph, so the loss
  reaches the K/V projections through them. The section is denoised with its first
  ``given_frames`` frames (the end of the section before) given through the projection when
  there is one, as the long-video sampler's continuation does. Only the LoRA trains (default: the
  self-attention K and V of the latter half of the blocks, the paper's choice).

Plain torch: the DiT is a native-layout Wan (ComfyUI's, or histenc.train.toy_dit); attention and
input patches are set on the modules for one pass and removed after it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from ..dit import wan_kv
from ..extension import KINDS, ExtendedPatchEmbedding, ExtensionProjection, ExtensionTask, condition_inputs, sample_task
from ..kvcache import AttentionView, Clip as CachedClip, ClipKVCache, parse_blocks, prompt_embedding
from ..longvideo.timing import latent_section_prompt
from .frame_query import Clip, check_section, fit
from .loop import TrainResult, TrainSettings, logit_normal_timesteps, noisy_pair

STAGES = ("extension", "causal")
STAGE_LORA = {"extension": ("all", "all"), "causal": ("self_attn.k,self_attn.v", "latter_half")}


@dataclass(frozen=True)
class ExtensionSettings:
    stage: str = "extension"
    clip_frames: int = 8  # extension: latent frames per training clip
    max_given: int = 2  # extension: 1..max_given frames given at each chosen end
    p_drop: float = 0.1  # extension: share of steps with no frame given (keeps the T2V ability)
    section_frames: int = 4  # causal: new latent frames per section, as the long-video sampler makes them
    given_frames: int = 1  # causal: continuation frames from the section before (0: none)
    max_clips: int = 5  # causal: past sections attended to (K)
    blocks: str = "latter half"  # causal: blocks whose self-attention reads the cache
    tolerance: float = 1e-3  # causal: similarity tie band (the earlier clip wins)
    shift: float = 3.0

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"extension training stage {self.stage!r} is unknown; use 'extension' or 'causal'.")
        if self.stage == "extension" and not 1 <= int(self.max_given) < int(self.clip_frames) / 2:
            raise ValueError(
                f"max_given is {self.max_given} with clip_frames {self.clip_frames}; give at least 1 "
                "frame and fewer than half the clip, so first + last frames leave frames to generate."
            )
        if not 0.0 <= float(self.p_drop) <= 1.0:
            raise ValueError(f"p_drop is {self.p_drop}; use a probability between 0 and 1 (the paper uses 0.1).")
        if int(self.section_frames) < 1 or int(self.given_frames) < 0:
            raise ValueError(
                f"section_frames {self.section_frames} and given_frames {self.given_frames}: a section "
                "needs at least 1 new frame and given frames cannot be negative."
            )
        if int(self.max_clips) < 1 or not float(self.tolerance) >= 0:
            raise ValueError(
                f"max_clips {self.max_clips} and tolerance {self.tolerance}: keep at least 1 clip and a "
                "tolerance of 0 or more."
            )
        parse_blocks(self.blocks, 10**6)  # the syntax now; the range once the DiT is known

    def lora_layout(self) -> tuple[str, str]:
        """The LoRA (targets, blocks) this stage trains by default."""
        return STAGE_LORA[self.stage]

    def to_meta(self) -> dict:
        return asdict(self)


# --- one DiT pass with the extension input and a KV view ---------------------------------------------
def _attention_module(dm, name: str) -> nn.Module:
    """'diffusion_model.blocks.3.self_attn.forward' -> dm.blocks[3].self_attn."""
    module = dm
    for part in name.split(".")[1:-1]:
        module = getattr(module, part)
    return module


@contextlib.contextmanager
def patched(
    dm, projection: ExtensionProjection | None = None, condition=None, mask=None, view: AttentionView | None = None
):
    """For one pass: the patch embedding sees the extension condition, the chosen blocks ``view``."""
    saved = []
    try:
        if projection is not None and condition is not None:
            saved.append((dm, "patch_embedding", dm.patch_embedding))
            dm.patch_embedding = ExtendedPatchEmbedding(dm.patch_embedding, projection, condition, mask)
        if view is not None and not view.empty:
            patches = wan_kv.attention_patches(dm, view, lambda name: _attention_module(dm, name).forward)
            for name, forward in patches.items():
                module = _attention_module(dm, name)
                saved.append((module, "forward", module.__dict__.get("forward")))
                module.forward = forward
        yield dm
    finally:
        for owner, attr, value in reversed(saved):
            if value is None:
                del owner.__dict__[attr]
            else:
                setattr(owner, attr, value)


def record_kv(dm, latents: torch.Tensor, text: torch.Tensor, view: AttentionView) -> dict:
    """A clip's K/V per block: one pass at t = 0 over its clean latents (gradients kept when the view says so)."""
    t = torch.zeros(latents.shape[0], device=latents.device)
    with patched(dm, view=view):
        dm(latents, t, text)
    return dict(view.recorded)


# --- the trainable parts as one module ---------------------------------------------------------------
class ExtensionTrainer(nn.Module):
    """Projection (when it trains) and LoRA as one module; the DiT and a frozen projection sit outside it."""

    def __init__(
        self,
        dit,
        projection: ExtensionProjection | None,
        lora,
        settings: ExtensionSettings,
        train_projection: bool = True,
    ):
        super().__init__()
        self._dit, self._projection = [dit], [projection]
        self.projection = projection if (train_projection and projection is not None) else None
        self.lora = lora
        self.settings = settings
        self.blocks = parse_blocks(settings.blocks, len(dit.blocks))

    @property
    def dit(self):
        return self._dit[0]

    @property
    def condition_projection(self) -> ExtensionProjection | None:
        return self._projection[0]

    def velocity(self, batch: dict, view: AttentionView | None = None) -> torch.Tensor:
        check_section(self.dit, batch["x_t"])
        with patched(self.dit, self.condition_projection, batch["condition"], batch["mask"], view):
            return self.dit(batch["x_t"], batch["timestep"], batch["text"])

    def past_view(self, batch: dict) -> AttentionView | None:
        """The section's view of the selected past clips, their K/V rebuilt as ClipKVCache.prepare does."""
        s, dm = self.settings, self.dit
        cache = ClipKVCache(s.max_clips, list(self.blocks), s.tolerance)
        cache.clips = [
            CachedClip(i, start, lat, prompt_embedding(text), text)
            for i, (start, lat, text) in enumerate(batch["past"])
        ]
        selection = cache.select(prompt_embedding(batch["text"]), before=batch["section_start"])

        def compute(clip, attend):
            view = cache.view(attend, len(dm.blocks), clip.start, wan_kv.clip_tokens(dm, clip.latents), keep_graph=True)
            return record_kv(dm, clip.latents, clip.condition, view)

        cache.prepare(selection, compute)
        return cache.view(selection, len(dm.blocks), batch["time_start"]) if selection else None

    def forward(self, batch: dict) -> torch.Tensor:
        view = self.past_view(batch) if "past" in batch else None
        v = self.velocity(batch, view).float()
        weight = batch["weight"].to(v)  # [1, 1, F, 1, 1]: 1 on frames to generate
        per_frame = (v - batch["target"].float()).pow(2).mean(dim=(1, 3, 4), keepdim=True)
        return (per_frame * weight).sum() / weight.sum()


# --- batches -----------------------------------------------------------------------------------------
def _noised(x0: torch.Tensor, task: ExtensionTask, shift: float, g: torch.Generator, device) -> dict:
    condition, mask = condition_inputs(x0, task)
    t = logit_normal_timesteps(1, g, shift=shift)
    x_t, target = noisy_pair(x0, t, torch.randn(x0.shape, generator=g))
    weight = 1.0 - mask[:, :, :, :1, :1]
    return {
        "x_t": x_t.to(device),
        "timestep": (t * 1000).to(device),
        "target": target.to(device),
        "condition": condition.to(device),
        "mask": mask.to(device),
        "weight": weight.to(device),
    }


def extension_batch(clips: Sequence[Clip], s: ExtensionSettings, g: torch.Generator, device) -> dict:
    """A random clip window with a multi-task draw of given frames, noised at a shifted logit-normal t."""
    usable = [c for c in clips if c.latents.shape[2] >= s.clip_frames]
    clip = usable[int(torch.randint(0, len(usable), (1,), generator=g))]
    start = int(torch.randint(0, clip.latents.shape[2] - s.clip_frames + 1, (1,), generator=g))
    x0 = clip.latents[:, :, start : start + s.clip_frames].float()
    task = sample_task(g, int(s.max_given), float(s.p_drop), KINDS)
    text = latent_section_prompt(clip.prompts, start, start + s.clip_frames)
    return {**_noised(x0, task, s.shift, g, device), "text": text.float().to(device)}


def causal_need(s: ExtensionSettings) -> tuple[int, int]:
    """(first section that can be denoised: one before it and room for its given frames, clip frames needed)."""
    f, k = int(s.section_frames), int(s.given_frames)
    first = max(1, -(-k // f))
    return first, (first + 1) * f


def causal_batch(clips: Sequence[Clip], s: ExtensionSettings, g: torch.Generator, device) -> dict:
    """A long clip cut into sections; a random one (with one before it) to denoise, the earlier ones as its past."""
    f, k = int(s.section_frames), int(s.given_frames)
    first, need = causal_need(s)
    usable = [c for c in clips if c.latents.shape[2] >= need]
    clip = usable[int(torch.randint(0, len(usable), (1,), generator=g))]
    total = clip.latents.shape[2]
    offset = int(torch.randint(0, min(f - 1, total - need) + 1, (1,), generator=g))  # sections not always aligned
    starts = list(range(offset, total - f + 1, f))
    j = int(torch.randint(first, len(starts), (1,), generator=g))
    start = starts[j]
    x0 = clip.latents[:, :, start - k : start + f].float()
    task = ExtensionTask("first", k) if k else ExtensionTask("none")

    def prompt(p: int) -> torch.Tensor:  # what the section [p, p + f) is sampled with in a generated video
        return latent_section_prompt(clip.prompts, p, p + f).float().to(device)

    past = [(p, clip.latents[:, :, p : p + f].float().to(device), prompt(p)) for p in starts[:j]]
    return {
        **_noised(x0, task, s.shift, g, device),
        "text": prompt(start),
        "past": past,
        "section_start": start,
        "time_start": start - k,
    }


def check_clips(clips: Sequence[Clip], s: ExtensionSettings) -> None:
    if not clips:
        raise ValueError("the extension training set is empty; give at least one clip of latents.")
    longest = max(c.latents.shape[2] for c in clips)
    if s.stage == "extension":
        need, what = s.clip_frames, f"a clip of {s.clip_frames} frames"
    else:
        need = causal_need(s)[1]
        what = f"sections of {s.section_frames} frames with {s.given_frames} given from the one before"
    if longest < need:
        raise ValueError(
            f"no clip is long enough for the {s.stage} stage: the longest has {longest} latent frames but "
            f"{what} need {need}; use longer clips or shorter settings."
        )


def finetune_extension(
    dit,
    projection: ExtensionProjection | None,
    clips: Sequence[Clip],
    settings: TrainSettings,
    out_dir,
    ext: ExtensionSettings = ExtensionSettings(),
    lora=None,
    **kwargs,
) -> TrainResult:
    """Train the extension stage (projection + LoRA) or the causal stage (LoRA; the projection stays fixed)."""
    check_clips(clips, ext)
    if ext.stage == "extension" and projection is None:
        raise ValueError("the extension stage trains the condition projection; give one (a new ExtensionProjection).")
    if ext.stage == "causal" and lora is None:
        raise ValueError("the causal stage trains only a LoRA on the cache's K/V; give a LoRA rank of 1 or more.")
    device = next(dit.parameters()).device
    if projection is not None:
        channels = int(projection.proj.weight.shape[1]) - 1
        if channels != int(dit.out_dim) or int(projection.proj.weight.shape[0]) != int(dit.dim):
            raise ValueError(
                f"the extension projection maps {channels}-channel latents to width "
                f"{projection.proj.weight.shape[0]} but the DiT uses {dit.out_dim} channels at width "
                f"{dit.dim}; train or load an extension made for this model."
            )
        projection.to(device)
    trainer = ExtensionTrainer(dit, projection, lora, ext, train_projection=ext.stage == "extension")
    make = extension_batch if ext.stage == "extension" else causal_batch
    return fit(trainer, lambda g: make(clips, ext, g, device), settings, out_dir, **kwargs)
