"""Autoregressive generation and teacher-forced prediction, one one-frame section at a time, for every mode.

A runner holds one mode's state over one video: ``before(history, s, text)`` readies the context of section
``s`` from the frames so far (the model's own when generating, the truth when teacher-forced), ``velocity``
is the DiT's velocity for the section with that context, ``after(s, frame, text)`` takes the finished
section. Context-token modes (window, encoder, FramePack) reach the DiT through
histenc.dit.wan.forward_with_context, as bench/context_proof/queries.velocity calls it. The clip KV cache goes
through histenc.kvcache.ClipKVCache and histenc.dit.wan_kv as the long-video sampler's cache source uses them:
clips chosen by cue similarity before each section (the earlier clip wins a tie), evicted K/V rebuilt in
time order, a record pass at t = 0 over each finished section at its real frame; its attention patches are
the ones its training uses (histenc.train.extension.patched / record_kv).

Sampling is Euler over the shifted schedule from noise seeded by (seed, video, frame): every mode starts
each section from the same noise, so modes are compared pairwise. Teacher-forced prediction is the one-step
x0 at t = 1 (pure noise, so everything it gets right came through the context and the cue).
"""

from __future__ import annotations

import torch

from histenc.dit import wan_kv
from histenc.kvcache import Clip, ClipKVCache, prompt_embedding
from histenc.train.extension import patched, record_kv
from histenc.train.frame_query import context_tokens

from bench.context_proof import queries as qs

from .setup import patchifier, section_grid

TIMES = torch.zeros(1)  # the section's one frame sits at t = 0, its history at t < 0


class ContextRunner:
    """A context-token mode (``source`` None: the no-context floor)."""

    stateful = False

    def __init__(self, dit, source, cfg):
        self.dit, self.source, self.grid, self.patch = dit, source, section_grid(cfg), patchifier(dit)
        self.ctx = None

    def reset(self) -> None:
        self.ctx = None
        if hasattr(self.source, "reset"):
            self.source.reset()

    def before(self, history: torch.Tensor, s: int, text: torch.Tensor) -> None:
        empty = self.source is None or history.shape[2] == 0
        self.ctx = None if empty else context_tokens(self.source, history, self.grid, self.patch)

    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return qs.velocity(self.dit, x, timestep, text, TIMES, self.ctx)

    def after(self, s: int, frame: torch.Tensor, text: torch.Tensor) -> None:
        pass


class KVRunner:
    """The clip KV cache: every section (given or made) becomes a one-frame clip at its real frame."""

    stateful = True

    def __init__(self, dit, cfg):
        self.dit, self.cfg = dit, cfg
        self.reset()

    def reset(self) -> None:
        self.cache = ClipKVCache(self.cfg.kv_clips, self.cfg.kv_blocks)
        self.selection, self.view = [], None

    def _record(self, latents, start: int, text, attend) -> dict:
        view = self.cache.view(attend, len(self.dit.blocks), start, wan_kv.clip_tokens(self.dit, latents))
        return record_kv(self.dit, latents, text, view)

    def before(self, history: torch.Tensor, s: int, text: torch.Tensor) -> None:
        self.cache.forget_from(s)
        self.selection = self.cache.select(prompt_embedding(text), before=s)
        self.cache.prepare(
            self.selection, lambda clip, attend: self._record(clip.latents, clip.start, clip.condition, attend)
        )
        self.view = self.cache.view(self.selection, len(self.dit.blocks), s) if self.selection else None

    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with patched(self.dit, view=self.view):
            return self.dit(x, timestep, text)

    def after(self, s: int, frame: torch.Tensor, text: torch.Tensor) -> None:
        kv = self._record(frame, s, text, self.selection)
        self.cache.add(Clip(s, s, frame.detach().clone(), prompt_embedding(text), text), kv)


def noise_for(seed: int, video: int, frame: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + 1009 * video + frame)
    return torch.randn(shape, generator=g)


def schedule(cfg) -> torch.Tensor:
    u = torch.linspace(1, 0, cfg.sample_steps + 1)
    return cfg.shift * u / (1 + (cfg.shift - 1) * u)


@torch.no_grad()
def run_video(runner, cfg, video, index: int, seed: int, teacher_forced: bool) -> torch.Tensor:
    """Latents [1, C, T, h, w]: the given start, then every later section generated (or, teacher-forced,
    predicted in one step from the true history). Returns the frames the runner made, start included."""
    truth = video.latents
    out = truth.clone()
    ts = schedule(cfg)
    runner.reset()
    for s in range(truth.shape[2]):
        text = video.cues[s].view(1, 1, -1)
        history = (truth if teacher_forced else out)[:, :, :s]
        if s < video.prefix:  # the given start: only a stateful mode has to see it section by section
            if runner.stateful:
                runner.before(history, s, text)
                runner.after(s, truth[:, :, s : s + 1], text)
            continue
        runner.before(history, s, text)
        x = noise_for(seed, index, s, truth[:, :, s : s + 1].shape)
        if teacher_forced:
            x = x - runner.velocity(x, torch.tensor([1000.0]), text).float()
        else:
            for a, b in zip(ts[:-1], ts[1:]):
                x = x + (b - a) * runner.velocity(x, (a * 1000).reshape(1), text).float()
        out[:, :, s : s + 1] = x
        runner.after(s, truth[:, :, s : s + 1] if teacher_forced else x, text)
    return out
