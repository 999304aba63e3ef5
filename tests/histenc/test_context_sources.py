"""What every context source must do, checked on its output rather than on its type.

``isinstance(x, ContextSource)`` only proves a class says it is one; the DiT adapter relies on the
tokens: the count ``tokens_for`` promised (the VRAM planner and the summary use it), the DiT's width,
boxes inside the section's patch grid and entirely before it in time, the newest box touching the
section, and tokens that follow the history.
"""

from __future__ import annotations

import json

import pytest
import torch

from histenc.context import ContextSource, ContextTokens, SectionGrid
from histenc.encoder.model import HistoryEncoder
from histenc.framepack.codebook import DiscreteHistory, HistoryCodebook, framepacks
from histenc.framepack.packing import FramePackContext
from histenc.window import SlidingWindow
from tests.helpers import ToyDiT

GRID = SectionGrid(3, 8, 12)  # 4x6 patch cells: rows and columns differ, so a swapped axis shows


def history(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, frames, GRID.height, GRID.width, generator=torch.Generator().manual_seed(seed))


def encoder(dit):
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", hidden=(8, 16, 32, 32), heads=4)
    with torch.no_grad():  # the learned branch starts at zero; give it weights so it takes part
        enc.hr_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return enc


SOURCES = {
    "sliding window": lambda dit: SlidingWindow(2),
    "history encoder": encoder,
    "framepack": lambda dit: FramePackContext.from_dit(dit, "td_f4k2f1k1_g3"),
    "discrete framepack": lambda dit: DiscreteHistory(
        FramePackContext.from_dit(dit, "td_f4k2f1k1_g3"), HistoryCodebook.fit(history(6, seed=9), k=8, seed=0)
    ),
}


def check_context(source, dit, frames: int) -> ContextTokens:
    """The contract, asserted on what ``source.context`` returns for ``frames`` frames of history."""
    if hasattr(source, "reset"):
        source.reset()  # the encoder keeps an incremental state per video
    past = history(frames)
    ctx = source.context(past, GRID, dit)
    n = source.tokens_for(GRID, frames)
    assert n > 0 and ctx.tokens.shape == (1, n, dit.width), (tuple(ctx.tokens.shape), n)
    assert ctx.positions.shape == (n, 3) and bool(torch.isfinite(ctx.tokens).all())
    start, end = ctx.positions, ctx.positions + ctx.extent_or_ones().to(ctx.positions)
    assert float(end[:, 0].max()) == 0, "the newest history must sit directly before the section"
    assert float(start[:, 0].min()) >= -frames, "a box reaches before the first history frame"
    _, rows, cols = GRID.cells
    assert float(start[:, 1:].min()) >= 0 and float(end[:, 1].max()) <= rows and float(end[:, 2].max()) <= cols
    if hasattr(source, "reset"):
        source.reset()
    changed = past.clone()
    changed[:, :, -1] = history(1, seed=5)[:, :, 0] * 3  # only the newest frame differs
    assert (source.context(changed, GRID, dit).tokens - ctx.tokens).abs().max() > 1e-4
    return ctx


# Every source for every history length, including one frame before a 2x2x2 encoder (shorter than its
# temporal stride: a long video with 1-frame sections must get context from its second section on).
CASES = [(name, frames) for name in SOURCES for frames in (1, 3, 8)]


@pytest.mark.parametrize("name, frames", CASES)
def test_every_source_keeps_the_contract(name, frames):
    dit = ToyDiT(width=32, seed=2)
    source = SOURCES[name](dit)
    assert isinstance(source, ContextSource)  # registered as one, and it behaves as one:
    check_context(source, dit, frames)
    assert json.loads(json.dumps(source.describe()))["type"]
    looks_back_only = not framepacks([source])
    empty = source.context_both(None, history(2), GRID, dit) if looks_back_only else None
    assert empty is None or empty.count == 0  # looking back only: nothing before means no tokens


class PlacedAfter(ContextSource):
    """Declares itself a source, but puts its tokens inside the section: the contract must catch it."""

    def context(self, history, grid, dit):
        tokens = dit.patchify(history[:, :, -1:])
        return ContextTokens(tokens, torch.zeros(tokens.shape[1], 3))

    def tokens_for(self, grid, history_frames):
        return grid.cells[1] * grid.cells[2]


def test_the_contract_catches_a_source_that_only_has_the_right_type():
    dit = ToyDiT(width=32, seed=2)
    with pytest.raises(AssertionError, match="directly before the section"):
        check_context(PlacedAfter(), dit, 3)


@pytest.mark.parametrize("name", SOURCES)
def test_every_source_places_frames_with_gaps_at_their_true_times(name):
    """An order that makes sections out of time order hands over frames with gaps (an earlier anchor, the start
    image): every token box must start and end on the times of frames it was given, the newest box ending right
    after the newest frame, and the tokens must be those of the same frames laid end to end."""
    dit = ToyDiT(width=32, seed=2)
    source = SOURCES[name](dit)
    times = [-40, -39, -12, -11, -10, -1]  # the start image's frames, an anchor, the frame touching the section
    past = history(len(times))
    if hasattr(source, "reset"):
        source.reset()
    plain = source.context(past, GRID, dit)
    if hasattr(source, "reset"):
        source.reset()
    placed = source.context_both(past, None, GRID, dit, before_times=times)
    assert placed.count == plain.count == source.tokens_for(GRID, len(times))
    start = placed.positions[:, 0]
    end = start + placed.extent_or_ones()[:, 0].to(start)
    assert set(start.tolist()) <= set(times) and set((end - 1).tolist()) <= set(times)
    assert float(end.max()) == 0 and float(start.min()) >= -40
    if looks_back_only := not framepacks([source]):  # summarised as contiguous, then moved: same tokens
        assert torch.equal(placed.tokens, plain.tokens)
    # FramePack packs by true distance: f1k1 takes -1, f4k2 the next four (-10, -11 | -12, -39), -40 is the tail (td)
    assert looks_back_only or sorted(set(start.tolist())) == [-39.0, -11.0, -1.0]


def test_frames_touching_the_section_are_not_moved():
    dit = ToyDiT(width=32, seed=2)
    window = SlidingWindow(3)
    past = history(3)
    plain = window.context(past, GRID, dit)
    both = window.context_both(past, None, GRID, dit, before_times=[-3, -2, -1])
    assert torch.equal(plain.positions, both.positions) and torch.equal(plain.tokens, both.tokens)
