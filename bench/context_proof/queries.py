"""Frame-query examples (paper 001, Eq. 4) in batches, the fixed held-out queries, and their paired scores.

Training batches share one Omega per step (the DiT's RoPE times are per batch) and draw clip, window,
masking and noise per example. Timesteps are the shifted logit-normal, except that one example in
``PURE_NOISE_EVERY`` is at t = 1: the shifted logit-normal almost never reaches it, and a model never
trained there keeps a noise-dependent x0 at the one-step evaluation's point. Held-out queries are
fixed by seed: every contender sees the same windows, Omega, masked history and starting noise, so
differences between contenders are paired.
Each query is scored twice from the same noise: one Euler-sampled reconstruction and the one-step
x0 prediction at t = 1 (pure noise, so everything it gets right came through the context).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from histenc.analysis.metrics import psnr_per_frame, ssim_per_frame
from histenc.context import SectionGrid
from histenc.train.frame_query import context_tokens, mask_history, predict_velocity, sample_query, section_freqs
from histenc.train.loop import logit_normal_timesteps, noisy_pair

MASK_MEAN, MASK_STD = 0.2, 1.0  # L(0.2, 1), the paper's masking levels
PURE_NOISE_EVERY = 8


def text_for(cfg, batch: int) -> torch.Tensor:
    return torch.zeros(batch, 1, cfg.text_dim)  # one empty prompt: memory, not text, says what to draw


def query_batch(latents: torch.Tensor, cfg, g: torch.Generator, batch: int) -> dict:
    """``batch`` frame-query examples from videos ``latents`` [N, C, T, H, W], one shared Omega."""
    n, q = cfg.history_frames, cfg.query_frames
    idx = torch.randint(0, latents.shape[0], (batch,), generator=g)
    starts = torch.randint(0, latents.shape[2] - n + 1, (batch,), generator=g)
    omega = sample_query(n, q, g)
    history = torch.stack([latents[int(i), :, int(s) : int(s) + n] for i, s in zip(idx, starts)])
    masked = torch.cat([mask_history(history[b : b + 1], omega, g, MASK_MEAN, MASK_STD)[0] for b in range(batch)])
    x0 = history[:, :, omega]
    t = logit_normal_timesteps(batch, g, shift=cfg.shift)
    t = torch.where(torch.rand(batch, generator=g) < 1 / PURE_NOISE_EVERY, torch.ones_like(t), t)
    x_t, target = noisy_pair(x0, t, torch.randn(x0.shape, generator=g))
    return {
        "history": masked,
        "x_t": x_t,
        "timestep": t * 1000,
        "text": text_for(cfg, batch),
        "target": target,
        "times": (omega - n).float(),
    }


def section_batch(latents: torch.Tensor, cfg, g: torch.Generator, batch: int, scale: int = 1) -> dict:
    """Plain denoising without context (the base DiT): ``query_frames`` frames of a window at their times.

    ``scale`` > 1 area-downsamples the latents by that factor in space (the base model also learns
    the 2x / 4x low-resolution latents the LR tokens are made of).
    """
    ex = query_batch(latents, cfg, g, batch)
    x0 = ex["x_t"] - ex["timestep"].view(-1, 1, 1, 1, 1) / 1000 * ex["target"]  # undo noisy_pair: x0 back
    if scale > 1:
        x0 = torch.nn.functional.avg_pool3d(x0, (1, scale, scale))
    t = ex["timestep"] / 1000
    x_t, target = noisy_pair(x0, t, torch.randn(x0.shape, generator=g))
    return {"x_t": x_t, "timestep": t * 1000, "text": ex["text"], "target": target, "times": ex["times"]}


def velocity(dit, x_t, timestep, text, times, ctx=None, clean_context=None) -> torch.Tensor:
    """The DiT's velocity for frames at ``times``, with context tokens or (``ctx`` None) without any."""
    if ctx is None:
        freqs = section_freqs(dit, times, x_t.shape[3], x_t.shape[4], x_t.device)
        return dit.forward_orig(x_t, timestep, text, freqs=freqs, transformer_options={})
    return predict_velocity(dit, x_t, timestep, text, ctx, times, clean_context)


@dataclass(frozen=True)
class Query:
    video: int
    start: int
    omega: tuple[int, ...]
    seed: int


def held_out_queries(cfg) -> list[Query]:
    g = torch.Generator().manual_seed(cfg.data_seed + 77)
    out = []
    for v in range(cfg.test_videos):
        for _ in range(cfg.windows_per_test_video):
            start = int(torch.randint(0, cfg.frames - cfg.history_frames + 1, (1,), generator=g))
            omega = tuple(sample_query(cfg.history_frames, cfg.query_frames, g).tolist())
            out.append(Query(v, start, omega, int(torch.randint(0, 2**31 - 1, (1,), generator=g))))
    return out


def query_inputs(data, cfg, q: Query) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked history, starting noise, true frames [K, H, W, 3]) of one held-out query, the same for everyone."""
    g = torch.Generator().manual_seed(q.seed)
    history = data.test[q.video : q.video + 1, :, q.start : q.start + cfg.history_frames]
    omega = torch.tensor(q.omega)
    masked, _ = mask_history(history, omega, g, MASK_MEAN, MASK_STD)
    noise = torch.randn((1, history.shape[1], len(q.omega), *history.shape[3:]), generator=g)
    truth = data.test_pixels[q.video, [q.start + i for i in q.omega]]
    return masked, noise, truth


def psnr(decoded: torch.Tensor, truth: torch.Tensor) -> float:
    return float(psnr_per_frame(decoded.clamp(0, 1), truth).mean())


def scores(decoded: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean (PSNR, SSIM) of decoded frames [K, H, W, 3] against the truth, pixels clamped to 0..1."""
    return psnr(decoded, truth), float(ssim_per_frame(decoded.clamp(0, 1), truth).mean())


@torch.no_grad()
def evaluate(dit, source, data, cfg, queries: list[Query], patch) -> dict[str, list[float]]:
    """Per-query PSNR / SSIM, sampled (Euler) and one-step x0, for ``source`` (None: no context)."""
    out = {"psnr_sampled": [], "ssim_sampled": [], "psnr_onestep": [], "ssim_onestep": []}
    u = torch.linspace(1, 0, cfg.sample_steps + 1)
    ts = cfg.shift * u / (1 + (cfg.shift - 1) * u)
    text = text_for(cfg, 1)
    for q in queries:
        masked, noise, truth = query_inputs(data, cfg, q)
        times = torch.tensor(q.omega, dtype=torch.float32) - cfg.history_frames
        ctx = None
        if source is not None:
            grid = SectionGrid(noise.shape[2], noise.shape[3], noise.shape[4], (1, 1, 1))
            ctx = context_tokens(source, masked, grid, patch)
        one = noise - velocity(dit, noise, torch.tensor([1000.0]), text, times, ctx).float()
        x = noise
        for a, b in zip(ts[:-1], ts[1:]):
            x = x + (b - a) * velocity(dit, x, (a * 1000).reshape(1), text, times, ctx).float()
        for key, lat in (("sampled", x), ("onestep", one)):
            p, s = scores(data.codec.decode(lat), truth)
            out[f"psnr_{key}"].append(p)
            out[f"ssim_{key}"].append(s)
    return out
