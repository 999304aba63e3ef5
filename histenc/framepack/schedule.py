"""FramePack schedule names (e.g. ``td_f16k4f4k2f1k1_g9_x_f1k1+D``) as typed data.

A name is a timeline read left to right (old to new). Parts are joined by ``_``:

    kernel   ``k1h2w2`` (frames, height, width in latent pixels) or shorthand ``kN`` = (N, 2N, 2N)
    pack     one or more segments ``f{frames}{kernel}``, e.g. ``f16k4f2k2f1k1``
    g{N}     the N latent frames being generated (the section)
    x        a skip of any number of frames (0 included): what follows is anchored at the far end
    td/ta/tc the tail beyond the packed frames: delete, append one token per frame, compress
    +D       the history is discretised before packing (``+d`` is accepted and kept as written)

Parsing then printing gives the same string back, so a name is also the schedule's identity
(weights, benchmarks and nodes all key on it). Errors are ValueErrors naming the position and
what was expected there.

One preset is not written in the grammar: ``framepack_f1`` (``framepack_f1_g{N}`` for another section
length) is FramePack F1's own layout, the one context with released trained weights. Its parts are
``f1k1_x_f16k4f2k2f1k1_g9`` (the video's first frame, then 16 frames at k4, 2 at k2, 1 at k1), with F1's
rules on top: the slots are always full (frames the video does not have yet are zero latents), and the
first frame sits right before the packed frames (t = -20) instead of at its true time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Union

from ..context import SectionGrid

LARGEST_KERNEL = (8, 16, 16)  # the biggest kernel with its own projection; larger ones pool first
MAX_NUMBER = 1_000_000  # frames / kernel sizes above this are typos, not schedules
F1 = "framepack_f1"  # FramePack F1's layout (module docstring); "framepack_f1_g{N}" sets the section length
F1_PARTS = "f1k1_x_f16k4f2k2f1k1_g{}"
F1_SECTION = 9  # F1's latent window: its released weights were trained on 9-frame sections
_F1_NAME = re.compile(re.escape(F1) + r"(?:_g([1-9][0-9]{0,5}))?")

# Every variant of the paper's ablation table (Table 1), in table order; the text adds the inverted
# example "f1k1_x_g9_f1k1f4k2f16k4_td". Offered as presets and checked by the tests. The table prints its
# inverted rows with a second g (``f1k1_x_g9_f1k1f4k2f1k1_g9+D``); a step generates one section, so those rows
# are listed in their one-g form and the two-g spelling is refused with a sentence that offers it.
PAPER_SCHEDULES = (
    "td_f8k8f4k4f2k2f1k1_g9",
    "td_f64k8f16k4f4k2f1k1_g9",
    "td_f512k8f64k4f8k2f1k1_g9",
    "td_f512k16f64k8f8k2f1k1_g9",
    "td_f16k4f4k2f1k1_g9",
    "td_f16k4f2k2f1k1_g1",
    "td_f16k4f2k2f1k1_g4",
    "td_f16k4f2k2f1k1_g9",
    "tc_f16k4f2k2f1k1_g9",
    "ta_f16k4f2k2f1k1_g9",
    "td_f8k8f4k4f2k2f1k1_g9_x_f1k1",
    "td_f64k8f16k4f4k2f1k1_g9_x_f1k1",
    "td_f512k8f64k4f8k2f1k1_g9_x_f1k1",
    "td_f512k16f64k8f8k2f1k1_g9_x_f1k1",
    "td_f16k4f4k2f1k1_g9_x_f1k1",
    "td_f16k4f2k2f1k1_g1_x_f1k1",
    "td_f16k4f2k2f1k1_g4_x_f1k1",
    "td_f16k4f2k2f1k1_g9_x_f1k1",
    "tc_f16k4f2k2f1k1_g9_x_f1k1",
    "ta_f16k4f2k2f1k1_g9_x_f1k1",
    "f1k1_x_g9_f1k1f2k2f1k1+D",
    "f1k1_x_g9_f1k1f4k2f1k1+D",
    "f1k1_x_g9_f1k1f8k2f1k1+D",
    "f1k1_x_g9_f1k1f16k4f1k1+D",
    "f1k1_x_g9_f1k1f32k2f1k1+D",
    "f1k1_x_g1_f1k1f2k2f1k1+D",
    "f1k1_x_g1_f1k1f4k2f1k1+D",
    "td_f8k8f4k4f2k2f1k1_g9+D",
    "td_f64k8f16k4f4k2f1k1_g9+D",
    "td_f512k8f64k4f8k2f1k1_g9+D",
    "td_f512k16f64k8f8k2f1k1_g9+D",
    "td_f16k4f4k2f1k1_g9+D",
    "td_f16k4f2k2f1k1_g1+D",
    "td_f16k4f2k2f1k1_g4+D",
    "td_f16k4f2k2f1k1_g9+D",
    "tc_f16k4f2k2f1k1_g9+D",
    "ta_f16k4f2k2f1k1_g9+D",
    "f1k1_x_g9_f1k1f4k2f16k4_td",
)


@dataclass(frozen=True)
class Kernel:
    """A patchify footprint in latent pixels (t, h, w); ``short`` keeps the ``kN`` spelling."""

    t: int
    h: int
    w: int
    short: bool = False

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.t, self.h, self.w)

    @property
    def key(self) -> str:
        """Spelling-independent name, used for projection weights."""
        return f"k{self.t}h{self.h}w{self.w}"

    def __str__(self) -> str:
        if self.short and (self.h, self.w) == (2 * self.t, 2 * self.t):
            return f"k{self.t}"
        return self.key

    def tokens(self, frames: int, height: int, width: int) -> int:
        """Tokens this kernel makes from ``frames`` latent frames of height x width (edges padded)."""
        return -(-frames // self.t) * -(-height // self.h) * -(-width // self.w)


@dataclass(frozen=True)
class Segment:
    frames: int
    kernel: Kernel

    def __str__(self) -> str:
        return f"f{self.frames}{self.kernel}"


@dataclass(frozen=True)
class Pack:
    """Contiguous segments, written old to new."""

    segments: tuple[Segment, ...]

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    def __str__(self) -> str:
        return "".join(str(s) for s in self.segments)


@dataclass(frozen=True)
class Tail:
    mode: str  # "d" delete, "a" append, "c" compress

    def __str__(self) -> str:
        return f"t{self.mode}"


@dataclass(frozen=True)
class Skip:
    def __str__(self) -> str:
        return "x"


@dataclass(frozen=True)
class Generate:
    frames: int

    def __str__(self) -> str:
        return f"g{self.frames}"


Part = Union[Pack, Tail, Skip, Generate]


@dataclass(frozen=True)
class Side:
    """The context on one side of the section, listed outward from it (nearest part first).

    ``near`` packs frames adjacent to the section (most important first); ``anchors`` are packs
    placed after a skip, pinned to the far end of that side (the video's first frame, a planned
    endpoint), outermost last.
    """

    near: tuple[Segment, ...]
    anchors: tuple[tuple[Segment, ...], ...]
    tail: Tail | None

    @property
    def capacity(self) -> int:
        return sum(s.frames for s in self.near) + sum(s.frames for a in self.anchors for s in a)

    @property
    def anchor_frames(self) -> int:
        return sum(s.frames for a in self.anchors for s in a)


@dataclass(frozen=True)
class Schedule:
    parts: tuple[Part, ...]
    discrete: str = ""  # "", "D" or "d"
    preset: str = ""  # "" (the name is its parts) or F1

    def __str__(self) -> str:
        if self.preset:
            frames = self.generate_frames
            return self.preset if frames == F1_SECTION else f"{self.preset}_g{frames}"
        text = "_".join(str(p) for p in self.parts)
        return f"{text}+{self.discrete}" if self.discrete else text

    @property
    def fixed_slots(self) -> bool:
        """F1's rules: every slot is filled (zero latents stand in for frames not made yet) and the anchored
        first frame sits right before the packed frames, so the context looks the same at every section."""
        return self.preset == F1

    @property
    def generate_frames(self) -> int | None:
        """Latent frames generated per step, or None when the name leaves it to the caller."""
        gens = [p.frames for p in self.parts if isinstance(p, Generate)]
        return sum(gens) if gens else None

    @property
    def kernels(self) -> tuple[Kernel, ...]:
        """Every kernel the schedule uses, in order of first use, one per footprint."""
        seen: dict[tuple[int, int, int], Kernel] = {}
        for p in self.parts:
            if isinstance(p, Pack):
                for s in p.segments:
                    seen.setdefault(s.kernel.size, s.kernel)
        return tuple(seen.values())

    def _section_index(self) -> tuple[int, int]:
        gens = [i for i, p in enumerate(self.parts) if isinstance(p, Generate)]
        if not gens:
            return len(self.parts), len(self.parts)  # no g: the section follows the last part
        return gens[0], gens[-1]

    def _side(self, parts: list[Part]) -> Side:
        """``parts`` ordered outward from the section."""
        groups: list[list[Segment]] = [[]]
        tail = None
        for p in parts:
            if isinstance(p, Skip):
                groups.append([])
            elif isinstance(p, Tail):
                tail = p
            elif isinstance(p, Pack):
                groups[-1].extend(p.segments)
        return Side(tuple(groups[0]), tuple(tuple(g) for g in groups[1:] if g), tail)

    @property
    def before(self) -> Side:
        """Context before the section (history), nearest part first; segments nearest first."""
        first, _ = self._section_index()
        parts = [_reverse(p) for p in reversed(self.parts[:first])]
        return self._side(parts)

    @property
    def after(self) -> Side:
        """Context after the section (planned endpoints, later sections), nearest first."""
        _, last = self._section_index()
        return self._side(list(self.parts[last + 1 :]))

    @property
    def inverted(self) -> bool:
        """True when the main (longest, tailed) context lies after the section."""
        b, a = self.before, self.after
        if (a.tail is not None) != (b.tail is not None):
            return a.tail is not None
        if not b.near and b.anchors:  # the history is only a pinned first frame: fill toward it
            return True
        return a.capacity > b.capacity

    @property
    def sampling(self) -> str:
        """The sampling order the name implies: "vanilla", "endpoint" or "inverted"."""
        if self.inverted:
            return "inverted"
        return "endpoint" if self.after.capacity else "vanilla"

    def section_grid(self, height: int, width: int, patch=(1, 2, 2)) -> SectionGrid:
        frames = self.generate_frames
        if frames is None:
            raise ValueError(f"schedule '{self}' has no g part; add one (e.g. _g9) or pass a SectionGrid.")
        return SectionGrid(frames, height, width, tuple(patch))

    def context_length(self, grid: SectionGrid, history_frames: int, other_frames: int | None = None) -> int:
        """Context tokens (section excluded) for a latent grid.

        ``history_frames`` feed the main side (before the section, or after it for inverted
        schedules); ``other_frames`` feed the other side, None meaning its slots are all filled
        (anchors exist, as they do once endpoints are planned).
        """
        if history_frames < 0 or (other_frames is not None and other_frames < 0):
            raise ValueError(f"frame counts must be >= 0, got {history_frames} and {other_frames}.")
        main, other = (self.after, self.before) if self.inverted else (self.before, self.after)
        other_n = other.capacity if other_frames is None else other_frames
        if self.inverted:
            return self.tokens(grid, other_n, history_frames)
        return self.tokens(grid, history_frames, other_n)

    def tokens(self, grid: SectionGrid, before_frames: int, after_frames: int) -> int:
        """Context tokens with ``before_frames`` known before the section and ``after_frames`` after it."""
        if self.fixed_slots and before_frames:
            before_frames = self.before.capacity  # zero latents fill what the video does not have yet
        return side_tokens(self.before, before_frames, grid) + side_tokens(self.after, after_frames, grid)

    def total_length(self, grid: SectionGrid, history_frames: int, other_frames: int | None = None) -> int:
        """Context plus the section's own tokens: the paper's L."""
        return self.context_length(grid, history_frames, other_frames) + grid.tokens


def allocate(side: Side, available: int) -> tuple[list[int], list[list[int]], int]:
    """How many of ``available`` frames each segment, anchor and the tail get.

    Anchors are served first (they are the frames a plan guarantees), then the near segments from
    the section outward, and what is left goes to the tail. Returns (near counts, anchor counts,
    tail count), counts in schedule order outward.
    """
    left = available
    anchors: list[list[int]] = []
    for group in reversed(side.anchors):  # outermost anchor first, its outermost segment first
        counts = []
        for s in reversed(group):
            n = min(s.frames, left)
            counts.append(n)
            left -= n
        anchors.insert(0, counts[::-1])
    near = []
    for s in side.near:
        n = min(s.frames, left)
        near.append(n)
        left -= n
    return near, anchors, left


def side_tokens(side: Side, available: int, grid: SectionGrid) -> int:
    """Token count of one side, computed from the counts alone (no tensors)."""
    near, anchors, tail = allocate(side, available)
    h, w = grid.height, grid.width
    total = sum(s.kernel.tokens(n, h, w) for s, n in zip(side.near, near) if n)
    for group, counts in zip(side.anchors, anchors):
        total += sum(s.kernel.tokens(n, h, w) for s, n in zip(group, counts) if n)
    if tail and side.tail is not None and side.near:
        last = side.near[-1].kernel
        if side.tail.mode == "a":
            total += tail
        elif side.tail.mode == "c":
            total += last.tokens(last.t, h, w)
    return total


def _reverse(part: Part) -> Part:
    return Pack(tuple(reversed(part.segments))) if isinstance(part, Pack) else part


def parse_schedule(text: str) -> Schedule:
    """Parse a FramePack schedule name; raises ValueError naming the position of the first error."""
    if isinstance(text, str) and text.startswith(F1):
        match = _F1_NAME.fullmatch(text)
        frames = int(match.group(1) or F1_SECTION) if match else 0
        if match is None or (match.group(1) and frames == F1_SECTION) or frames > MAX_NUMBER:
            raise ValueError(
                f"schedule '{text}' starts like the F1 preset but is not it; write '{F1}' (F1's 9-frame sections) "
                f"or '{F1}_g<frames>' for another section length, e.g. '{F1}_g5'."
            )
        return replace(_Parser(F1_PARTS.format(frames)).parse(), preset=F1)
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text):
        if not isinstance(text, str):
            raise ValueError(f"a schedule must be a string like 'td_f16k4f4k2f1k1_g9', got {type(text).__name__}.")
        self.text, self.pos = text, 0

    def fail(self, expected: str):
        found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end"
        raise ValueError(
            f"schedule '{self.text}': at position {self.pos} expected {expected}, found {found}; "
            "write it like 'td_f16k4f4k2f1k1_g9'."
        )

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def number(self, what: str) -> int:
        start = self.pos
        if not self.peek().isdigit() or not self.peek().isascii() or self.peek() == "0":
            self.fail(f"a number 1-{MAX_NUMBER} ({what})")
        while self.peek().isdigit() and self.peek().isascii():
            self.pos += 1
        value = int(self.text[start : self.pos])
        if value > MAX_NUMBER:
            self.pos = start
            self.fail(f"a number 1-{MAX_NUMBER} ({what})")
        return value

    def expect(self, char: str, what: str):
        if self.peek() != char:
            self.fail(what)
        self.pos += 1

    def kernel(self) -> Kernel:
        self.expect("k", "'k' starting a kernel (e.g. k4 or k1h2w2)")
        t = self.number("kernel frames")
        if self.peek() != "h":
            return Kernel(t, 2 * t, 2 * t, short=True)
        self.pos += 1
        h = self.number("kernel height")
        self.expect("w", "'w' and the kernel width (e.g. k1h2w2)")
        return Kernel(t, h, self.number("kernel width"))

    def part(self) -> tuple[int, Part]:
        start, c = self.pos, self.peek()
        if c == "t":
            self.pos += 1
            if self.peek() not in ("d", "a", "c") or not self.peek():
                self.fail("a tail mode 'd', 'a' or 'c' after 't'")
            self.pos += 1
            return start, Tail(self.text[self.pos - 1])
        if c == "g":
            self.pos += 1
            return start, Generate(self.number("generated frames"))
        if c == "x":
            self.pos += 1
            return start, Skip()
        if c == "f":
            segments = []
            while self.peek() == "f":
                self.pos += 1
                frames = self.number("frames of a segment")
                segments.append(Segment(frames, self.kernel()))
            return start, Pack(tuple(segments))
        self.fail("a part: f<frames>k<kernel>, g<frames>, x, td, ta or tc")

    def parse(self) -> Schedule:
        parts: list[tuple[int, Part]] = [self.part()]
        while self.peek() == "_":
            self.pos += 1
            parts.append(self.part())
        discrete = ""
        if self.peek() == "+":
            self.pos += 1
            if self.peek() not in ("D", "d") or not self.peek():
                self.fail("'D' after '+' (history discretisation)")
            discrete = self.peek()
            self.pos += 1
        if self.pos != len(self.text):
            self.fail("'_' between parts, '+D' or the end")
        self.check(parts)
        return Schedule(tuple(p for _, p in parts), discrete)

    def check(self, parts: list[tuple[int, Part]]) -> None:
        """Rules beyond the syntax: tails only at the ends, no doubled skips or packs."""
        for i, (pos, part) in enumerate(parts):
            self.pos = pos
            if isinstance(part, Tail) and 0 < i < len(parts) - 1:
                self.fail("a tail only as the first or last part")
            if isinstance(part, Tail) and len(parts) > 1 and not isinstance(parts[1 if i == 0 else i - 1][1], Pack):
                self.pos = parts[1 if i == 0 else i - 1][0]
                self.fail("a pack (f<frames>k<kernel>) next to the tail")
            if i and type(part) is type(parts[i - 1][1]) and isinstance(part, (Skip, Pack, Tail)):
                self.fail(f"something other than a second {'skip' if isinstance(part, Skip) else 'pack'} here")
        if all(isinstance(p, Tail) for _, p in parts):
            self.pos = 0
            self.fail("at least one pack or g part besides the tail")
        gens = [i for i, (_, p) in enumerate(parts) if isinstance(p, Generate)]
        if len(gens) > 1:
            raise ValueError(self.one_generate_part(parts, gens))

    def one_generate_part(self, parts: list[tuple[int, Part]], gens: list[int]) -> str:
        """The sentence for a name with several g parts, offering the name with only the first one."""
        one = "_".join(str(p) for i, (_, p) in enumerate(parts) if i not in gens[1:])
        one += self.text[self.text.rfind("+") :] if "+" in self.text else ""
        frames = parts[gens[0]][1].frames
        try:
            _Parser(one).parse()
        except ValueError:
            return (
                f"schedule '{self.text}' has {len(gens)} g parts, but a step generates one section; keep only "
                f"the first (g{frames}) and write the packs around it."
            )
        return (
            f"schedule '{self.text}' has {len(gens)} g parts, but a step generates one section; write '{one}', "
            f"which packs the same frames around one {frames}-frame section (FramePack's Table 1 prints its "
            "inverted rows with a second g naming the sections already made)."
        )
