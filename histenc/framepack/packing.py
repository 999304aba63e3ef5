"""FramePack: history frames packed with coarser kernels the less important they are.

Each segment of a schedule (``histenc.schedule``) is encoded by its own Conv3d projection whose
kernel is the segment's footprint. A projection starts as FramePack initialises its 2x / 4x
embedders: the DiT's patch embedding with each element repeated over the footprint and divided by
the repeat count, so its token is the DiT's own token of the footprint average-pooled to one patch
and an untrained pack already speaks the DiT's language. Kernels beyond (8, 16, 16) are
average-pooled down to it first and share its projection. Every token reports the box of DiT cells
its kernel covers, full size also at the grid's far edges, where FramePack pads the latents and the
rotary maps by replicating the last row / column: the adapter averages RoPE phases over the box with
cells past the grid taken at the edge (``histenc.dit.rope.box_rope``).

``context(history, grid, dit)`` is the ContextSource contract (history before the section);
``pack(...)`` also takes frames after the section and explicit time indices, which is what
endpoint, inverted and random-access sampling orders (``histenc.orders``) need, and
``context_both(...)`` is how the long-video loop hands it both sides. A schedule that packs
nothing after the section (a vanilla name such as ``td_f16k4f2k2f1k1_g9``) packs frames after it
with its before side mirrored, so any schedule can follow any sampling order.

The F1 preset (``framepack_f1``) packs as FramePack F1 does: the near slots take the last 19 frames of the
history with zero latents in front of it, the first history frame (the start image) fills the start slot
at t = -20, and nothing after the section is packed (F1 only looks back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..context import ContextSource, ContextTokens, SectionGrid, check_history
from .importance import SECONDS_PER_LATENT_FRAME, check_ordering, importance, most_important_first
from .schedule import LARGEST_KERNEL, Kernel, Schedule, Side, allocate, parse_schedule, side_tokens
from ..weights import load_weights, save_weights

WEIGHTS_FORMAT = "histenc.framepack"
WEIGHTS_VERSION = 1
TAIL_BLOCK = 64  # tail frames read at a time, so a long tail never needs a full float32 copy


def projection_for(kernel: Kernel) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(projection footprint, average-pool factor): multiples of the largest kernel pool down to it."""
    size = kernel.size
    if any(k > m for k, m in zip(size, LARGEST_KERNEL)) and all(k % m == 0 for k, m in zip(size, LARGEST_KERNEL)):
        return LARGEST_KERNEL, tuple(k // m for k, m in zip(size, LARGEST_KERNEL))
    return size, (1, 1, 1)


def _key(size) -> str:
    return "k{}h{}w{}".format(*size)


def repeated_patch_weights(weight: torch.Tensor, bias: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """FramePack's start for a larger kernel: each element of the patch kernel repeated over ``size`` and divided
    by the repeat count (bias unchanged), i.e. the patch embedding of the footprint average-pooled to one patch."""
    w = weight
    for axis, (s, p) in enumerate(zip(size, weight.shape[2:])):
        w = w.repeat_interleave(s // p, dim=2 + axis)
    return w / (w.shape[2:].numel() // weight.shape[2:].numel()), bias.clone()


@dataclass
class _Chunk:
    """Frames (indices into a side's tensor) that one temporal step of a kernel covers."""

    frames: list[int]
    times: list[int]


class FramePackContext(torch.nn.Module, ContextSource):
    """Context source packing history with a FramePack schedule; trainable projections per kernel."""

    def __init__(
        self,
        schedule,
        width: int,
        in_channels: int,
        patch=(1, 2, 2),
        ordering: str = "time",
        lambda_time: float = 1.0,
        seconds_per_frame: float = SECONDS_PER_LATENT_FRAME,
    ):
        super().__init__()
        self.schedule: Schedule = parse_schedule(schedule) if isinstance(schedule, str) else schedule
        self.width, self.in_channels, self.patch = int(width), int(in_channels), tuple(int(p) for p in patch)
        self.ordering = check_ordering(ordering)
        self.lambda_time, self.seconds_per_frame = float(lambda_time), float(seconds_per_frame)
        self.projections = torch.nn.ModuleDict()
        for kernel in self.schedule.kernels:
            if any(k % p for k, p in zip(kernel.size, self.patch)):
                raise ValueError(
                    f"schedule '{self.schedule}' uses kernel {kernel} ({kernel.t}, {kernel.h}, {kernel.w}), which is "
                    "not "
                    f"a multiple of the DiT patch {self.patch}; use kernels made of whole patches (e.g. k1, k2, k4)."
                )
            size, _ = projection_for(kernel)
            if _key(size) not in self.projections:
                self.projections[_key(size)] = torch.nn.Conv3d(in_channels, width, kernel_size=size, stride=size)

    # ---------------------------------------------------------------- construction and weights
    @classmethod
    def from_dit(cls, dit, schedule, ordering: str = "time", **kwargs) -> "FramePackContext":
        """A pack whose projections start from ``dit``'s patch embedding (see module docstring)."""
        pack = cls(schedule, dit.width, dit.in_channels, dit.patch, ordering=ordering, **kwargs)
        pack.init_from_patch(*dit.latent_patch_weights())
        return pack

    @torch.no_grad()
    def init_from_patch(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        if tuple(weight.shape[:2]) != (self.width, self.in_channels) or tuple(weight.shape[2:]) != self.patch:
            raise ValueError(
                f"patch embedding weight has shape {tuple(weight.shape)} but this pack needs "
                f"({self.width}, {self.in_channels}, *{self.patch}); initialise it from the DiT it will run with."
            )
        for conv in self.projections.values():
            w, b = repeated_patch_weights(weight.float(), bias.float(), conv.kernel_size)
            conv.weight.copy_(w.to(conv.weight))
            conv.bias.copy_(b.to(conv.bias))

    def metadata(self) -> dict:
        return {
            "format": WEIGHTS_FORMAT,
            "version": WEIGHTS_VERSION,
            "schedule": str(self.schedule),
            "width": self.width,
            "in_channels": self.in_channels,
            "patch": list(self.patch),
            "ordering": self.ordering,
            "lambda_time": self.lambda_time,
            "seconds_per_frame": self.seconds_per_frame,
        }

    def describe(self) -> dict:
        """Settings that shape the context (a resumed long-video job refuses to continue if they changed)."""
        return {"type": "FramePackContext", **self.metadata()}

    def save(self, path) -> None:
        """The pack's projections and settings as one safetensors file."""
        save_weights(path, self.state_dict(), self.metadata())

    @classmethod
    def load(cls, path, dit=None) -> "FramePackContext":
        """Load a saved pack; with ``dit``, refuse one made for another width / channels / patch."""
        expect = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION}
        if dit is not None:
            expect.update(width=int(dit.width), in_channels=int(dit.in_channels), patch=list(dit.patch))
        tensors, meta = load_weights(path, expect=expect)
        pack = cls(
            meta["schedule"],
            meta["width"],
            meta["in_channels"],
            meta["patch"],
            meta.get("ordering", "time"),
            meta.get("lambda_time", 1.0),
            meta.get("seconds_per_frame", SECONDS_PER_LATENT_FRAME),
        )
        missing = sorted(set(pack.state_dict()) - set(tensors))
        if missing:
            raise ValueError(f"packing weights {path} lack {missing[0]}; save the pack again with this version.")
        pack.load_state_dict({k: tensors[k] for k in pack.state_dict()})
        return pack

    # ---------------------------------------------------------------- the ContextSource contract
    @property
    def after_side(self) -> Side:
        """How frames after the section are packed: the schedule's after side, or its before side
        mirrored when the schedule packs nothing after the section."""
        after = self.schedule.after
        if self.schedule.fixed_slots:
            return after
        return after if after.capacity or after.tail is not None else self.schedule.before

    def context_length(self, grid: SectionGrid, before_frames: int, after_frames: int = 0) -> int:
        """Tokens ``pack`` returns for that many frames on each side, counted without tensors."""
        if self.schedule.fixed_slots:
            return self.schedule.tokens(grid, before_frames, 0)
        return side_tokens(self.schedule.before, before_frames, grid) + side_tokens(self.after_side, after_frames, grid)

    def tokens_for(self, grid: SectionGrid, history_frames: int) -> int:
        return self.context_length(grid, history_frames)

    def weight_bytes(self) -> int:
        """The projections as stored (fp32, or the DiT's dtype once the node casts them); ``_device`` moves them to
        the DiT's device when they pack."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def context(self, history: torch.Tensor, grid: SectionGrid, dit) -> ContextTokens:
        return self.pack(grid, before=history, device=dit.device)

    def context_both(self, before, after, grid: SectionGrid, dit, after_times=None, before_times=None) -> ContextTokens:
        """Frames on both sides of the section (either may be None), each side packed outward from the section
        by its own part of the schedule; the times default to the frames touching the section."""
        if self.schedule.fixed_slots:
            before_times = None  # F1 fills its slots from the frames in order, whatever their times
        return self.pack(
            grid, before=before, after=after, before_times=before_times, after_times=after_times, device=dit.device
        )

    def pack(
        self,
        grid: SectionGrid,
        before=None,
        after=None,
        before_times=None,
        after_times=None,
        estimate=None,
        device=None,
    ) -> ContextTokens:
        """Pack frames before the section (``before``, times < 0) and after it (``after``, times >=
        grid.frames). Times are latent-frame indices with the section starting at 0; they default
        to the frames directly touching the section and may skip indices (RoPE random access).
        """
        if self.schedule.fixed_slots:
            if after is not None and after.shape[2]:
                raise ValueError(
                    f"schedule '{self.schedule}' packs only frames before the section (FramePack F1 looks back "
                    "only), but frames after it were given; sample the sections in forward order."
                )
            if before is not None and before.shape[2]:
                before, before_times = self._fixed_slots(before), None
        parts = []
        for frames, times, side, where in (
            (before, before_times, self.schedule.before, "before"),
            (after, after_times, self.after_side, "after"),
        ):
            if frames is None or frames.shape[2] == 0:
                continue
            check_history(frames, self.in_channels, name=f"frames {where} the section")
            if tuple(frames.shape[3:]) != (grid.height, grid.width):
                raise ValueError(
                    f"frames {where} the section are {frames.shape[4]}x{frames.shape[3]} latent pixels but the section "
                    f"is {grid.width}x{grid.height}; generate the history at the same width and height."
                )
            times = self._times(frames.shape[2], times, grid, where)
            parts.extend(self._pack_side(frames, times, side, grid, estimate, device))
        if not parts:
            return ContextTokens.empty(1, self.width)
        return ContextTokens.cat(parts)

    # ---------------------------------------------------------------- internals
    def _fixed_slots(self, history: torch.Tensor) -> torch.Tensor:
        """F1's frames, oldest first: the first history frame (start slot), then the last ``near`` frames with
        zero latents in front where the video is shorter; they then pack at t = -(near + 1) .. -1."""
        check_history(history, self.in_channels, name="frames before the section")
        near = sum(s.frames for s in self.schedule.before.near)
        recent = history[:, :, -near:]
        missing = history.new_zeros(*history.shape[:2], near - recent.shape[2], *history.shape[3:])
        return torch.cat([history[:, :, :1], missing, recent], dim=2)

    @staticmethod
    def _times(n: int, times, grid: SectionGrid, where: str) -> torch.Tensor:
        if times is None:
            return torch.arange(-n, 0) if where == "before" else torch.arange(grid.frames, grid.frames + n)
        times = torch.as_tensor(times, dtype=torch.long).flatten().cpu()
        if times.numel() != n or len(set(times.tolist())) != n:
            raise ValueError(f"time indices {where} the section must be {n} distinct integers, one per frame.")
        bad = times >= 0 if where == "before" else times < grid.frames
        if bool(bad.any()):
            raise ValueError(
                f"time index {int(times[bad][0])} is not {where} the section (which covers 0..{grid.frames - 1}); "
                "pass the frames on the side where they are."
            )
        return times

    def _pack_side(self, frames, times, side: Side, grid, estimate, device) -> list[ContextTokens]:
        near_n, anchor_n, _ = allocate(side, frames.shape[2])
        far_first = sorted(range(len(times)), key=lambda i: -abs(int(times[i])))
        used, chunks = 0, []  # chunks: (kernel, _Chunk)
        for group, counts in zip(side.anchors[::-1], anchor_n[::-1]):  # outermost anchor takes the farthest frames
            for seg, n in zip(group[::-1], counts[::-1]):
                chunks += self._chunks(seg.kernel, far_first[used : used + n], times)
                used += n
        rest = far_first[used:]
        if self.ordering == "time" or not rest:  # no need to look at the frames themselves
            order = rest[::-1]
        else:
            sub_times = times[rest]
            scores = importance(
                frames[:, :, rest], sub_times, self.ordering, estimate, self.lambda_time, self.seconds_per_frame
            )
            order = [rest[i] for i in most_important_first(scores.cpu(), sub_times)]
        pos = 0
        for seg, n in zip(side.near, near_n):
            chunks += self._chunks(seg.kernel, order[pos : pos + n], times)
            pos += n
        out = self._encode(frames, chunks, grid, device)
        tail = order[pos:]
        if tail and side.tail is not None and side.tail.mode != "d" and side.near:
            out.append(self._tail(frames, tail, times, side.tail.mode, side.near[-1].kernel, grid, device))
        return out

    @staticmethod
    def _chunks(kernel: Kernel, picked: list[int], times) -> list[tuple[Kernel, _Chunk]]:
        """Split frames (most important first) into kernel.t-sized chunks, each sorted by time."""
        out = []
        for start in range(0, len(picked), kernel.t):
            ids = sorted(picked[start : start + kernel.t], key=lambda i: int(times[i]))
            out.append((kernel, _Chunk(ids, [int(times[i]) for i in ids])))
        return out

    def _project(self, x: torch.Tensor, kernel: Kernel) -> torch.Tensor:
        """[B, C, chunks * kt, h, w] -> [B, D, chunks, h', w'] (spatial edges replicate-padded)."""
        size, factor = projection_for(kernel)
        conv = self.projections[_key(size)]
        x = x.to(conv.weight.dtype)
        pad_h, pad_w = -x.shape[3] % kernel.h, -x.shape[4] % kernel.w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
        if factor != (1, 1, 1):
            x = F.avg_pool3d(x, kernel_size=factor, stride=factor)
        return conv(x)

    def _device(self, device) -> torch.device:
        param = next(self.parameters(), None)
        if device is not None and param is not None and param.device != torch.device(device):
            self.to(device)
        return param.device if device is None and param is not None else torch.device(device or "cpu")

    def _encode(self, frames, chunks, grid: SectionGrid, device) -> list[ContextTokens]:
        dev = self._device(device)
        out = []
        for kernel in dict.fromkeys(k for k, _ in chunks):
            mine = sorted((c for k, c in chunks if k == kernel), key=lambda c: min(c.times))  # time order
            index = []
            for c in mine:  # pad a short chunk with its own last frame
                index += c.frames + [c.frames[-1]] * (kernel.t - len(c.frames))
            x = frames[:, :, index].to(dev)
            tokens = self._project(x, kernel).flatten(2).transpose(1, 2)
            positions, extent = self._boxes(kernel, [c.times for c in mine], grid)
            out.append(ContextTokens(tokens, positions.to(tokens.device), extent.to(tokens.device)))
        return out

    def _boxes(self, kernel: Kernel, chunk_times: list[list[int]], grid: SectionGrid):
        """Start and size, in DiT cells, of every token box: chunk-major, then h, then w. A box at the far edge
        keeps the kernel's full size: the cells past the grid are the edge's (replicate padding, as FramePack)."""
        pt, ph, pw = self.patch
        _, hc, wc = grid.cells
        kh, kw = kernel.h // ph, kernel.w // pw
        hs, ws = list(range(0, hc, kh)), list(range(0, wc, kw))
        pos, ext = [], []
        for times in chunk_times:
            t0, t1 = min(times) // pt, max(times) // pt
            for h in hs:
                for w in ws:
                    pos.append((t0, h, w))
                    ext.append((t1 - t0 + 1, kh, kw))
        return torch.tensor(pos, dtype=torch.float32).reshape(-1, 3), torch.tensor(ext, dtype=torch.long).reshape(-1, 3)

    def _tail(self, frames, tail: list[int], times, mode: str, kernel: Kernel, grid, device) -> ContextTokens:
        """Append: one token per tail frame. Compress: the tail's mean frame through the last kernel."""
        dev = self._device(device)
        _, hc, wc = grid.cells
        blocks = (frames[:, :, tail[i : i + TAIL_BLOCK]].to(dev).float() for i in range(0, len(tail), TAIL_BLOCK))
        if mode == "a":
            x = torch.cat([F.adaptive_avg_pool3d(b, (b.shape[2], kernel.h, kernel.w)) for b in blocks], dim=2)
            x = x.repeat_interleave(kernel.t, dim=2)
            tokens = self._project(x, kernel).flatten(2).transpose(1, 2)
            t = torch.tensor([int(times[i]) // self.patch[0] for i in tail], dtype=torch.float32)
            positions = torch.stack([t, torch.zeros_like(t), torch.zeros_like(t)], dim=1)
            extent = torch.tensor([[1, hc, wc]], dtype=torch.long).repeat(len(tail), 1)
            return ContextTokens(tokens, positions.to(tokens.device), extent.to(tokens.device))
        x = (sum(b.sum(dim=2, keepdim=True) for b in blocks) / len(tail)).repeat_interleave(kernel.t, dim=2)
        tokens = self._project(x, kernel).flatten(2).transpose(1, 2)
        # the summary sits where the next chunk of the last kernel would: the nearest tail frames
        positions, extent = self._boxes(kernel, [[int(times[i]) for i in tail[: kernel.t]]], grid)
        return ContextTokens(tokens, positions.to(tokens.device), extent.to(tokens.device))
