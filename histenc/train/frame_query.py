"""Frame-query pretraining of the history encoder (paper 001, Eq. 3-4).

Each step cuts a history H from a clip, draws a fresh random set of frame indices Omega (never
fixed positions: with fixed targets the encoder learns to keep only those frames), keeps H[Omega]
clean and replaces every other frame by (1 - s) H + s eps with its own level s ~ logit-normal
L(0.2, 1). The DiT (with LoRA when one is given) must then regenerate H[Omega] from the encoder's
tokens phi(mask(H, Omega)) and the prompt, trained with the rectified-flow loss of Eq. 4:
x_t = (1 - t) H[Omega] + t eps, target eps - H[Omega], t ~ shifted logit-normal.

The queried frames are placed on the DiT's RoPE grid at their own times in the history (history
frame i of T sits at t = i - T, where the encoder puts its tokens), so the position says which
frames to fetch. Both objectives run the DiT through ``histenc.dit.wan.forward_with_context`` with the
context computed outside ``no_grad``, so gradients reach the encoder; the helpers below are shared
with ``histenc.train.autoregressive``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..context import ContextTokens, SectionGrid
from ..framepack.codebook import DiscreteHistory
from ..dit import wan
from ..encoder.model import HistoryEncoder
from .loop import TrainResult, TrainSettings, checkpoint_modules, logit_normal_timesteps, noisy_pair, train
from .lora_finetune import release_inference_tensors


# --- the DiT with context tokens that keep their gradients ------------------------------------------
class GivenContext:
    """A ``ContextPayload`` stand-in that hands the adapter tokens computed (with gradients) by the caller."""

    def __init__(self, ctx: ContextTokens, clean_context: bool | None = None):
        self.ctx, self.clean_context = ctx, clean_context
        self.info = None  # the adapter reads the model facts from the DiT itself

    def resolve(self, dit, grid: SectionGrid) -> ContextTokens:
        if self.ctx.width != dit.width:
            raise ValueError(
                f"context tokens are {self.ctx.width} wide but the DiT is {dit.width} wide; "
                "build the encoder from this model."
            )
        return ContextTokens(
            self.ctx.tokens.to(dit.device),
            self.ctx.positions.to(dit.device),
            None if self.ctx.extent is None else self.ctx.extent.to(dit.device),
        )


def context_tokens(source, history: torch.Tensor, grid: SectionGrid, dit) -> ContextTokens:
    """A context source's tokens for ``history`` with gradients (the encoder's stateless full pass)."""
    if isinstance(source, DiscreteHistory):
        return context_tokens(source.source, source.codebook.apply(history), grid, dit)
    if isinstance(source, HistoryEncoder):
        tokens = source(history)
        positions, extent = source.token_boxes(*history.shape[2:], device=tokens.device)
        return ContextTokens(tokens, positions, extent)
    return source.context(history, grid, dit)


def trainable_module(source) -> nn.Module | None:
    """The nn.Module holding a source's trainable weights (a codebook wrapper trains what it wraps)."""
    if isinstance(source, DiscreteHistory):
        return trainable_module(source.source)
    return source if isinstance(source, nn.Module) else None


def trainable_copy(source):
    """A copy of a context source (and whatever it wraps) to train, its weights plain tensors.

    ComfyUI makes every node output under ``torch.inference_mode``, whose tensors can never require gradients, and
    the source a graph holds is its node's cached output, which training must not change behind the user's back;
    a deep copy made outside inference mode is both trainable and separate. A history encoder's VAE (the pixel
    branch's codec, a host object) is shared, not copied, and its incremental state is left behind (the copy
    starts reset).
    """
    module = trainable_module(source)
    memo = {}
    if isinstance(module, HistoryEncoder):
        memo = {id(module.state): None, id(module.codec): module.codec}
    with torch.inference_mode(False):
        return copy.deepcopy(source, memo)


def section_freqs(dm, times: Sequence[float] | torch.Tensor, height: int, width: int, device) -> torch.Tensor:
    """RoPE of a section whose latent frame k sits at time ``times[k]`` (patch cells), as Wan lays it out."""
    pt, ph, pw = (int(p) for p in dm.patch_size)
    t = torch.as_tensor(times, dtype=torch.float32, device=device)[::pt] / pt
    rows = torch.arange(-(-height // ph), dtype=torch.float32, device=device)
    cols = torch.arange(-(-width // pw), dtype=torch.float32, device=device)
    ids = torch.stack(torch.meshgrid(t, rows, cols, indexing="ij"), -1)
    return dm.rope_embedder(ids.reshape(1, -1, 3)).movedim(1, 2)


def check_section(dm, x: torch.Tensor) -> None:
    pt, ph, pw = (int(p) for p in dm.patch_size)
    if x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw:
        raise ValueError(
            f"training latents of {x.shape[2]} frames at {x.shape[4]}x{x.shape[3]} do not divide by "
            f"the DiT patch {(pt, ph, pw)}; cache the dataset at a size whose latents divide by it."
        )


def predict_velocity(dm, x_t, timestep, text, ctx: ContextTokens, times, clean_context: bool | None = None):
    """The DiT's velocity for section ``x_t`` at frame ``times``, seeing ``ctx`` (gradients flow to it)."""
    check_section(dm, x_t)
    freqs = section_freqs(dm, times, x_t.shape[3], x_t.shape[4], x_t.device)
    return wan.forward_with_context(dm, GivenContext(ctx, clean_context), x_t, timestep, text, freqs=freqs)


class DiTTrainer(nn.Module):
    """Trainable parts (context source, LoRA) as one module, so DistributedDataParallel can wrap it.

    The frozen DiT is kept outside the module tree (a list), so only trainable weights are synced.
    """

    def __init__(self, dit, source, lora=None, clean_context: bool | None = None):
        super().__init__()
        self._dit, self._source = [dit], [source]
        self.encoder = trainable_module(source)
        self.lora = lora
        self.clean_context = clean_context

    @property
    def dit(self):
        return self._dit[0]

    @property
    def source(self):
        return self._source[0]

    def patchifier(self, x: torch.Tensor) -> wan.WanPatchifier:
        return wan.WanPatchifier(self.dit, x.device, x.dtype)

    def flow_loss(self, history, x_t, timestep, text, target, times) -> torch.Tensor:
        grid = SectionGrid(x_t.shape[2], x_t.shape[3], x_t.shape[4], tuple(self.dit.patch_size))
        ctx = context_tokens(self.source, history, grid, self.patchifier(x_t))
        v = predict_velocity(self.dit, x_t, timestep, text, ctx, times, self.clean_context)
        return F.mse_loss(v.float(), target.float())

    def forward(self, batch: dict) -> torch.Tensor:
        return self.flow_loss(
            batch["history"], batch["x_t"], batch["timestep"], batch["text"], batch["target"], batch["times"]
        )


# --- data ---------------------------------------------------------------------------------------
@dataclass
class Clip:
    """A training clip in the model's latent space: [1, C, T, H, W] and its prompts (first latent frame, cond)."""

    latents: torch.Tensor
    prompts: list[tuple[float, torch.Tensor]]

    def prompt_at(self, frame: float) -> torch.Tensor:
        """The storyboard prompt in force at ``frame``: the last cue at or before it (the first cue before any)."""
        chosen = self.prompts[0][1]
        for start, cond in self.prompts:
            if start <= frame:
                chosen = cond
        return chosen


def step_generator(g: torch.Generator, rank: int = 0) -> torch.Generator:
    """One draw from the loop's generator seeds this step; each rank adds its rank, so ranks see other data."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator().manual_seed(seed + int(rank))


@dataclass(frozen=True)
class FrameQuerySettings:
    history_frames: int = 16  # frames of a clip the encoder sees per step (a random window)
    query_frames: int = 2  # |Omega|
    mask_mean: float = 0.2  # logit-normal L(mean, std) of the masking noise levels
    mask_std: float = 1.0
    shift: float = 3.0  # timestep shift of the query frames' flow-matching t

    def __post_init__(self):
        if int(self.query_frames) < 1 or int(self.query_frames) >= int(self.history_frames):
            raise ValueError(
                f"query_frames is {self.query_frames} with history_frames {self.history_frames}; "
                "query at least 1 frame and fewer than the history holds."
            )

    def to_meta(self) -> dict:
        return asdict(self)


def sample_query(frames: int, count: int, g: torch.Generator) -> torch.Tensor:
    """Omega: ``count`` distinct history frame indices drawn uniformly, sorted."""
    return torch.randperm(frames, generator=g)[:count].sort().values


def mask_history(
    history: torch.Tensor, omega: torch.Tensor, g: torch.Generator, mean: float = 0.2, std: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """mask(H, Omega): frames outside Omega noised, each at its own level s ~ L(mean, std); (masked, levels)."""
    frames = history.shape[2]
    levels = torch.sigmoid(mean + std * torch.randn(frames, generator=g))
    levels[omega] = 0.0
    noise = torch.randn(history.shape, generator=g)
    s = levels.view(1, 1, frames, 1, 1).to(history)
    return (1 - s) * history + s * noise.to(history), levels


def query_batch(clips: Sequence[Clip], fq: FrameQuerySettings, g: torch.Generator, device) -> dict:
    """One frame-query example: a random clip window, a fresh Omega, its masked history and noisy query frames."""
    clip = clips[int(torch.randint(0, len(clips), (1,), generator=g))]
    total = clip.latents.shape[2]
    n = min(int(fq.history_frames), total)
    start = int(torch.randint(0, total - n + 1, (1,), generator=g))
    history = clip.latents[:, :, start : start + n].float()
    omega = sample_query(n, min(int(fq.query_frames), n - 1), g)
    masked, _ = mask_history(history, omega, g, fq.mask_mean, fq.mask_std)
    x0 = history[:, :, omega]
    t = logit_normal_timesteps(1, g, shift=fq.shift)
    x_t, target = noisy_pair(x0, t, torch.randn(x0.shape, generator=g))
    return {
        "history": masked.to(device),
        "x_t": x_t.to(device),
        "timestep": (t * 1000).to(device),
        "text": clip.prompt_at(start + float(omega[0])).float().to(device),
        "target": target.to(device),
        "times": (omega - n).float(),
    }


# --- training -----------------------------------------------------------------------------------
def fit(
    trainer: DiTTrainer,
    make_batch: Callable[[torch.Generator], dict],
    settings: TrainSettings,
    out_dir: str | os.PathLike,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    rank: int = 0,
    gradient_checkpointing: bool = False,
    on_step=None,
) -> TrainResult:
    """Train the trainer's encoder / LoRA with the frozen DiT through the shared loop (resumable).

    ``wrap`` is e.g. ``DistributedDataParallel``; each rank draws its own batch from the step's seed.
    """
    dit = trainer.dit
    params = {n: p for n, p in trainer.named_parameters()}
    if not params:
        raise ValueError(
            "nothing to train: the context source has no weights and no LoRA was given; "
            "use a history encoder or FramePack packing, or give a LoRA."
        )
    release_inference_tensors(dit)
    frozen = {p: p.requires_grad for p in dit.parameters()}
    dit.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    if trainer.lora is not None:
        trainer.lora.attach()
    model = wrap(trainer) if wrap is not None else trainer
    undo = checkpoint_modules(dit.blocks) if gradient_checkpointing else (lambda: None)
    try:
        return train(
            params,
            lambda batch, step: model(batch),
            lambda step, g: make_batch(step_generator(g, rank)),
            settings,
            out_dir,
            on_step=on_step,
        )
    finally:
        undo()
        for p, flag in frozen.items():
            p.requires_grad_(flag)


def pretrain_history_encoder(
    dit,
    encoder: HistoryEncoder,
    clips: Sequence[Clip],
    settings: TrainSettings,
    out_dir,
    fq: FrameQuerySettings = FrameQuerySettings(),
    lora=None,
    **kwargs,
) -> TrainResult:
    """Eq. 4: train ``encoder`` (and ``lora``) so the DiT regenerates randomly queried history frames."""
    if not clips:
        raise ValueError("the frame-query dataset is empty; give at least one clip of latents.")
    short = min(c.latents.shape[2] for c in clips)
    need = max(encoder.config.box[0], int(fq.query_frames) + 1)
    if short < need:
        raise ValueError(
            f"a training clip has {short} latent frames but frame-query pretraining needs at least {need} "
            "(the encoder's temporal group and one frame more than the queries); use longer clips."
        )
    device = next(dit.parameters()).device
    encoder.to(device)
    trainer = DiTTrainer(dit, encoder, lora, kwargs.pop("clean_context", None))
    return fit(trainer, lambda g: query_batch(clips, fq, g, device), settings, out_dir, **kwargs)


# --- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def sample_queried(
    trainer: DiTTrainer,
    history: torch.Tensor,
    omega: torch.Tensor,
    text: torch.Tensor,
    g: torch.Generator,
    steps: int = 8,
    shift: float = 3.0,
    mask_mean: float = 0.2,
    mask_std: float = 1.0,
) -> torch.Tensor:
    """Sample H[Omega] (Euler, ``steps`` steps, seeded by ``g``) from phi(mask(H, Omega)); returns latents."""
    dit = trainer.dit
    device = next(dit.parameters()).device
    masked, _ = mask_history(history.float(), omega, g, mask_mean, mask_std)
    shape = (history.shape[0], history.shape[1], omega.numel(), *history.shape[3:])
    x = torch.randn(shape, generator=g).to(device)
    grid = SectionGrid(shape[2], shape[3], shape[4], tuple(dit.patch_size))
    ctx = context_tokens(trainer.source, masked.to(device), grid, trainer.patchifier(x))
    times = (omega - history.shape[2]).float()
    u = torch.linspace(1, 0, steps + 1)
    ts = shift * u / (1 + (shift - 1) * u)
    for a, b in zip(ts[:-1], ts[1:]):
        timestep = (a * 1000).reshape(1).to(device)
        v = predict_velocity(dit, x, timestep, text.to(device), ctx, times, trainer.clean_context)
        x = x + (b - a) * v.float()
    return x


def frame_query_psnr(
    trainer: DiTTrainer,
    clips: Sequence[Clip],
    decode: Callable[[torch.Tensor], torch.Tensor],
    pixels: Sequence[torch.Tensor],
    history_frames: int,
    query_frames: int,
    seed: int = 0,
    steps: int = 8,
    shift: float = 3.0,
) -> dict:
    """Mean PSNR / SSIM of queried frames against the true frames, over held-out ``clips``.

    Every trainer compared with the same ``seed`` sees the same windows, Omega, masking and noise.
    ``decode`` maps latents [1, C, K, H, W] to frames [K, H, W, 3]; ``pixels[i]`` are clip i's frames.
    """
    from ..analysis.metrics import query_reconstruction

    g = torch.Generator().manual_seed(int(seed))
    psnr, ssim = [], []
    was_training = trainer.training
    trainer.eval()
    for clip, frames in zip(clips, pixels):
        n = min(history_frames, clip.latents.shape[2])
        start = int(torch.randint(0, clip.latents.shape[2] - n + 1, (1,), generator=g))
        history = clip.latents[:, :, start : start + n]
        omega = sample_query(n, query_frames, g)
        out = sample_queried(trainer, history, omega, clip.prompt_at(start + float(omega[0])), g, steps, shift)
        scores = query_reconstruction(decode(out.cpu()).clamp(0, 1), frames[start : start + n], omega)
        psnr.append(scores["psnr"])
        ssim.append(scores["ssim"])
    trainer.train(was_training)
    psnr, ssim = torch.cat(psnr), torch.cat(ssim)
    return {"psnr": float(psnr[torch.isfinite(psnr)].mean()), "ssim": float(ssim.mean()), "queries": int(psnr.numel())}
