"""The section loop: history -> context payload -> sample a section -> append -> repeat.

Independent of ComfyUI: the node supplies ``sample_section(index, task, history, seed) -> latents``
(ComfyUI sampling of one section) and this module does the rest: seeds, the order sections are
made in, what history each one sees, crash-safe resumable state (``histenc.resume``), progress
over sections x steps, and a summary.

What ``sample_section`` receives:
- ``index``: the section's index in time;
- ``task``: a ``SectionTask`` (the section and its prompt, a ``ContextPayload`` to put in
  ``transformer_options[PAYLOAD_KEY]``, and ``report_step`` for per-step progress);
- ``history``: the finished sections directly before this one, in time order, on CPU, in the
  sampler's own latent space (``None`` for the first section or when the section before is not
  made yet); ``continuation_frames(history, k)`` gives the frames to condition on natively;
  ``task.future`` likewise holds the finished sections directly after it (endpoint and inverted
  orders make those first; ``next_frames(task.future, k)``);
- the payload carries what the sampling order's plan gives the section as context: every finished
  frame before it and after it, gaps allowed, each with its true time (an anchor made earlier, the
  section-0 endpoint, the start image while section 0 is not made yet), so FramePack's orders
  (``histenc.longvideo.orders``) reach the DiT as planned;
- ``seed``: ``section_seed(user_seed, index)``.
It returns exactly ``section.latent_frames`` NEW latent frames [B, C, L, H, W]: when the model
conditions on overlapping frames, the node drops them before returning.

Interruption: whatever ``sample_section`` raises (ComfyUI raises on cancel within a step)
propagates; every section finished before it is already on disk, so the same job resumes there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from ..context import ContextSource, ContextTokens, SectionGrid
from ..dit.payload import ContextPayload
from .resume import JobState, canonical_settings
from .storyboard import SectionPrompt, format_time

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def section_seed(seed: int, index: int) -> int:
    """Seed of section ``index``: deterministic, different per section, in [0, 2**64).

    Section 0 uses the user seed itself (a one-section job reproduces a stock sampler run);
    section k > 0 uses ``splitmix64((seed + k * 0x9E3779B97F4A7C15) mod 2**64)``, so nearby user
    seeds do not share section seeds the way ``seed + k`` would.
    """
    if index == 0:
        return int(seed) & _MASK64
    z = (int(seed) + index * _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def continuation_frames(history: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """The last ``frames`` latent frames of the history: what the next section is conditioned on.

    The node maps them to the model's native mechanism (Wan 2.2 TI2V: latent replacement with
    noise_mask 0; Wan 2.1 I2V: the image-conditioning channels). ``None`` when there is no history.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"continuation frames must be a whole number >= 1, got {frames!r}.")
    if history is None or history.shape[2] == 0:
        return None
    return history[:, :, -frames:].clone()


def next_frames(future: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """The first ``frames`` latent frames of the sections after this one: what it must lead into.

    The node places them at the END of the section through the same native mechanism as
    ``continuation_frames`` and drops them after sampling. ``None`` when nothing after is made.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"continuation frames must be a whole number >= 1, got {frames!r}.")
    if future is None or future.shape[2] == 0:
        return None
    return future[:, :, :frames].clone()


def forward_order(count: int) -> list[list[int]]:
    """Vanilla order: one section per step, first to last."""
    return [[i] for i in range(count)]


def check_order(order: Sequence[Sequence[int]], count: int) -> list[list[int]]:
    """A sampling order (steps of section indices, e.g. from histenc.orders) naming each section once."""
    steps = [[int(i) for i in step] for step in order]
    seen: set[int] = set()
    for number, step in enumerate(steps):
        for i in step:
            if not 0 <= i < count:
                raise ValueError(
                    f"sampling order step {number} names section {i} but the video has sections 0..{count - 1}."
                )
            if i in seen:
                raise ValueError(
                    f"sampling order names section {i} twice (again in step {number}); name each section once."
                )
            seen.add(i)
    if len(seen) != count:
        missing = sorted(set(range(count)) - seen)
        raise ValueError(f"sampling order never makes section(s) {missing[:8]}; name every section once.")
    return steps


class CountingPayload(ContextPayload):
    """A ContextPayload that remembers how many context tokens the DiT was given (for the summary)."""

    tokens_used: int | None = None

    def resolve(self, dit, grid: SectionGrid) -> ContextTokens:
        ctx = super().resolve(dit, grid)
        self.tokens_used = ctx.count
        return ctx


@dataclass
class SectionTask:
    """Everything about one section besides its history and seed."""

    item: SectionPrompt
    step: int  # which step of the sampling order makes it
    payload: CountingPayload
    report_step: Callable[[int], None]  # call with 1..steps as sampling proceeds
    future: torch.Tensor | None = None  # finished sections directly after this one, sampler space, CPU

    @property
    def prompt(self) -> str:
        return self.item.prompt


@dataclass
class LongVideoResult:
    latents: torch.Tensor  # [B, C, latent_frames, H, W] on CPU, the whole video in time order
    seeds: list[int]
    prompts: list[str]
    summary: str
    resumed_sections: int  # sections taken from disk instead of sampled
    context_tokens: list[int | None] = field(default_factory=list)  # per section; None: not measured


SampleSection = Callable[[int, SectionTask, "torch.Tensor | None", int], torch.Tensor]


class SectionLoop:
    """One long-video job. ``run()`` samples (or resumes) every section and returns the whole video.

    ``settings``: everything else that shapes the result (model, cfg, sampler, size, context mode...)
    as JSON values; it is stored in the job folder and a differing value refuses to resume.
    ``folder``: job folder for resumable state (None: keep everything in memory only).
    ``order``: steps of section indices (default ``forward_order``, or ``Plan.section_order()``
    of a ``histenc.orders`` plan); sections of a step are sampled in the listed order, each
    seeing the finished sections directly before it as history and every finished section
    after it as future context.
    ``history_limit``: latent frames a section may see on each side (None: all). With a folder,
    sections no remaining section can see are dropped from memory and re-read at the end.
    ``model_space``: maps history latents to the model's input space for the payload (ComfyUI:
    ``model.model.process_latent_in``); identity by default.
    ``replay(index, item, latents)``: called on resume for every section taken from disk, in the
    order they were made, so context sources that keep state per finished section (the clip KV
    cache) rebuild it exactly as if the job had never stopped.
    ``anchor``: the start image's latent frames (sampler space, the video's first latent frames):
    context for every section made while section 0 (which holds them) is not finished yet, as the
    inverted order keeps the start image in view. ``received`` records, per section, the times of
    the context frames its payload was given (relative to its first frame), to check against a plan.
    """

    def __init__(
        self,
        sections: Sequence[SectionPrompt],
        sample_section: SampleSection,
        sources: Sequence[ContextSource] = (),
        *,
        seed: int,
        steps: int = 1,
        settings: Mapping | None = None,
        folder: str | os.PathLike | None = None,
        order: Sequence[Sequence[int]] | None = None,
        progress: Callable[[int, int], None] | None = None,
        history_limit: int | None = None,
        model_space: Callable[[torch.Tensor], torch.Tensor] | None = None,
        replay: Callable[[int, SectionPrompt, torch.Tensor], None] | None = None,
        anchor: torch.Tensor | None = None,
    ):
        if not sections:
            raise ValueError("the job has no sections; give a schedule with at least one section.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r}.")
        if history_limit is not None and (not isinstance(history_limit, int) or history_limit < 1):
            raise ValueError(
                f"history limit must be a whole number of latent frames >= 1 or None, got {history_limit!r}."
            )
        self.sections = list(sections)
        self.sample_section = sample_section
        self.sources = list(sources)
        self.steps = steps
        self.seeds = [section_seed(seed, i) for i in range(len(sections))]
        self.order = check_order(order if order is not None else forward_order(len(sections)), len(sections))
        self.progress = progress
        self.history_limit = history_limit
        self.model_space = model_space
        self.replay = replay
        self.anchor = None if anchor is None or anchor.shape[2] == 0 else anchor.detach().to("cpu")
        self.received: list[dict | None] = [None] * len(sections)
        self.tokens: list[int | None] = [None] * len(sections)
        self.cache: dict[int, torch.Tensor] = {}
        self.finished: list[int] = []
        self.resumed = 0
        self.state = None
        if folder is not None:
            own = {"seed": int(seed), "steps": steps, "sampling order": self.order, "history limit": history_limit}
            if self.order != forward_order(len(sections)):  # jobs from before planned context cannot resume into it
                own["order context"] = "every finished frame at its true time, start image included"
            given = canonical_settings(settings or {})
            clash = [k for k in own if k in given and given[k] != canonical_settings({k: own[k]})[k]]
            if clash:
                raise ValueError(
                    f"setting '{clash[0]}' is {given[clash[0]]!r} but the loop was given {own[clash[0]]!r}; pass one "
                    "value."
                )
            described = [
                {"seed": s, "prompt": p.prompt, "latent_frames": p.section.latent_frames}
                for s, p in zip(self.seeds, self.sections)
            ]
            self.state = JobState.open(folder, {**given, **own}, described)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> LongVideoResult:
        flat = [(number, i) for number, step in enumerate(self.order) for i in step]
        start = 0
        if self.state is not None:  # resume after the longest finished prefix of the order
            while start < len(flat) and self.state.is_done(flat[start][1]):
                start += 1
            self.resumed = start
            self.finished = [i for _, i in flat[:start]]
            needed = self._still_needed(flat, start)
            for i in self.finished:
                if i in needed:
                    self.cache[i] = self.state.load(i)
            if self.replay is not None:  # sources that keep per-section state see the resumed sections again
                for i in self.finished:
                    self.replay(i, self.sections[i], self.cache[i] if i in self.cache else self.state.load(i))
        self._report(0)
        for position in range(start, len(flat)):
            number, index = flat[position]
            self._sample(number, index)
            self._evict(flat, position + 1)
        return LongVideoResult(
            self.video(),
            list(self.seeds),
            [p.prompt for p in self.sections],
            self.summary(),
            self.resumed,
            list(self.tokens),
        )

    def _sample(self, step: int, index: int) -> None:
        item = self.sections[index]
        history = self.history_before(index)
        before, times = self.context_before(index)
        future, offsets = self.context_after(index)
        payload = CountingPayload(
            self.sources,
            self._in_model(before),
            future=self._in_model(future),
            future_offsets=offsets,
            history_times=times,
        )
        frames = self.sections[index].section.latent_frames
        self.received[index] = {"before": list(times or []), "after": [frames + o for o in offsets or []]}
        task = SectionTask(
            item, step, payload, lambda s: self._report(min(max(int(s), 0), self.steps)), self.history_after(index)
        )
        if self.state is not None:
            self.state.mark(index, "running")
        try:
            latents = self.sample_section(index, task, history, self.seeds[index])
        except BaseException:
            if self.state is not None:
                self.state.mark(index, "interrupted")
            raise
        latents = self._check(index, latents)
        if self.state is not None:
            self.state.save(index, latents)
        self.cache[index] = latents
        self.finished.append(index)
        seen = before is not None or future is not None
        self.tokens[index] = payload.tokens_used if self.sources and seen else 0
        self._report(0)

    def _check(self, index: int, latents) -> torch.Tensor:
        want = self.sections[index].section.latent_frames
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[2] != want:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(
                f"section {index} sampler returned {shape} but must return [batch, channels, {want}, height, width] "
                f"latents: exactly the section's {want} new latent frames."
            )
        ref = next((self.cache[i] for i in self.cache), None)
        if ref is not None and (ref.shape[:2], ref.shape[3:]) != (latents.shape[:2], latents.shape[3:]):
            raise ValueError(
                f"section {index} latents are {tuple(latents.shape)} but earlier sections are {tuple(ref.shape)} "
                "apart from frames; sample every section at the same batch, channels, height and width."
            )
        if not bool(torch.isfinite(latents).all()):
            raise ValueError(
                f"section {index} came out with non-finite values (NaN or infinity), so the job stops before saving "
                f"it; lower cfg or check the model and its LoRAs, then queue again: the {len(self.finished)} finished "
                "section(s) are kept and a named job resumes after them."
            )
        return latents.detach().to("cpu").contiguous()

    # -- history and memory -------------------------------------------------------------------

    def _in_model(self, latents: torch.Tensor | None) -> torch.Tensor | None:
        return latents if latents is None or self.model_space is None else self.model_space(latents)

    def _limited(self, frames: int) -> bool:
        return self.history_limit is not None and frames >= self.history_limit

    def _before(self, index: int, done: set[int]) -> list[int]:
        """Sections the history of ``index`` is made of: finished, contiguous, nearest first."""
        out, frames, j = [], 0, index - 1
        while j >= 0 and j in done and not self._limited(frames):
            out.append(j)
            frames += self.sections[j].section.latent_frames
            j -= 1
        return out

    def _before_any(self, index: int, done: set[int]) -> list[int]:
        """Finished sections before ``index``, nearest first, gaps allowed, up to ``history_limit`` frames."""
        out, frames = [], 0
        for j in range(index - 1, -1, -1):
            if self._limited(frames):
                break
            if j in done:
                out.append(j)
                frames += self.sections[j].section.latent_frames
        return out

    def _after(self, index: int, done: set[int], contiguous: bool) -> list[int]:
        """Finished sections after ``index``, nearest first (``contiguous``: stop at the first gap)."""
        out, frames = [], 0
        for j in range(index + 1, len(self.sections)):
            if self._limited(frames):
                break
            if j in done:
                out.append(j)
                frames += self.sections[j].section.latent_frames
            elif contiguous:
                break
        return out

    def history_before(self, index: int) -> torch.Tensor | None:
        """The finished sections directly before ``index`` (contiguous in time), last ``history_limit`` frames."""
        parts = [self._latents(j) for j in self._before(index, set(self.finished))]
        if not parts:
            return None
        history = torch.cat(parts[::-1], dim=2)
        return history if self.history_limit is None else history[:, :, -self.history_limit :]

    def history_after(self, index: int) -> torch.Tensor | None:
        """The finished sections directly after ``index`` (contiguous), first ``history_limit`` frames."""
        parts = [self._latents(j) for j in self._after(index, set(self.finished), contiguous=True)]
        if not parts:
            return None
        future = torch.cat(parts, dim=2)
        return future if self.history_limit is None else future[:, :, : self.history_limit]

    def context_before(self, index: int) -> tuple[torch.Tensor | None, list[int] | None]:
        """Every finished section before ``index`` (gaps allowed, nearest ``history_limit`` frames), oldest
        first, plus the start image while section 0 is not finished; each frame's time relative to the
        section's first frame (< 0)."""
        chosen = self._before_any(index, set(self.finished))[::-1]
        start = self.sections[index].section.latent_start
        parts = [self._latents(j) for j in chosen]
        times = [
            self.sections[j].section.latent_start - start + f
            for j in chosen
            for f in range(self.sections[j].section.latent_frames)
        ]
        if self.history_limit is not None and len(times) > self.history_limit:
            parts, times = [torch.cat(parts, dim=2)[:, :, -self.history_limit :]], times[-self.history_limit :]
        if self.anchor is not None and index != 0 and 0 not in self.finished:
            first = self.sections[0].section.latent_start
            parts.insert(0, self.anchor)
            times = [first - start + f for f in range(self.anchor.shape[2])] + times
        if not parts:
            return None, None
        return torch.cat(parts, dim=2), times

    def context_after(self, index: int) -> tuple[torch.Tensor | None, list[int] | None]:
        """Every finished section after ``index`` (gaps allowed, nearest ``history_limit`` frames) and
        each frame's offset past the section's last frame: a planned endpoint keeps its true time."""
        chosen = self._after(index, set(self.finished), contiguous=False)
        if not chosen:
            return None, None
        end = self.sections[index].section.latent_end
        offsets = [
            self.sections[j].section.latent_start - end + f
            for j in chosen
            for f in range(self.sections[j].section.latent_frames)
        ]
        future = torch.cat([self._latents(j) for j in chosen], dim=2)
        if self.history_limit is not None:
            future, offsets = future[:, :, : self.history_limit], offsets[: self.history_limit]
        return future, offsets

    def _still_needed(self, flat: Sequence[tuple[int, int]], position: int) -> set[int]:
        """Sections some section still to sample (``flat[position:]``) will see (all of them without a limit)."""
        if self.history_limit is None or self.state is None:
            return set(range(len(self.sections)))
        done = {i for _, i in flat[:position]}
        needed: set[int] = set()
        for _, k in flat[position:]:
            needed.update(self._before_any(k, done), self._after(k, done, contiguous=False))
            done.add(k)
        return needed

    def _evict(self, flat: Sequence[tuple[int, int]], position: int) -> None:
        needed = self._still_needed(flat, position)
        for i in [i for i in self.cache if i not in needed]:
            del self.cache[i]  # safe on disk; re-read by video() / iter_sections()

    def _latents(self, index: int) -> torch.Tensor:
        if index in self.cache:
            return self.cache[index]
        return self.state.load(index)

    def iter_sections(self):
        """(SectionPrompt, latents) of every finished section in time order, one in memory at a time."""
        for i in sorted(self.finished):
            yield self.sections[i], self._latents(i)

    def video(self) -> torch.Tensor:
        """The finished sections concatenated in time order (the whole video once ``run`` returns)."""
        return torch.cat([latents for _, latents in self.iter_sections()], dim=2)

    # -- progress and summary -----------------------------------------------------------------

    def _report(self, step_in_section: int) -> None:
        if self.progress is not None:
            total = len(self.sections) * self.steps
            self.progress(min(len(self.finished) * self.steps + step_in_section, total), total)

    def summary(self) -> str:
        done = sorted(self.finished)
        n = len(self.sections)
        fps = self.sections[0].section.fps
        shown = sum(self.sections[i].section.pixel_frames for i in done) / fps
        total = self.sections[-1].section.pixel_end / fps
        frames = sum(self.sections[i].section.latent_frames for i in done)
        all_frames = sum(p.section.latent_frames for p in self.sections)
        measured = [t for t in self.tokens if t is not None]
        context = f"context up to {max(measured):,} tokens per section" if measured else "context tokens not measured"
        text = (
            f"{len(done)} of {n} sections done ({frames} of {all_frames} latent frames), "
            f"{format_time(round(shown, 3))} of {format_time(round(total, 3))} of video, {context}"
        )
        if self.resumed:
            text += f"; resumed {self.resumed} finished section(s) from disk"
        return text + "."
