import pytest
import torch
import torch.nn.functional as F

from histenc.context import SectionGrid
from histenc.dit.rope import box_rope
from histenc.framepack.packing import FramePackContext
from histenc.framepack.schedule import PAPER_SCHEDULES, parse_schedule
from histenc.window import SlidingWindow
from tests.helpers import ToyDiT

torch.manual_seed(0)


@pytest.fixture(scope="module")
def dit():
    return ToyDiT(width=32, in_channels=4, seed=1)


def base_tokens(dit, frames):
    """The DiT's own tokens as a [B, D, T, h, w] grid."""
    b, c, t, h, w = frames.shape
    return dit.patch_embedding(frames).reshape(b, dit.width, t, h // 2, w // 2)


@pytest.mark.parametrize("name", PAPER_SCHEDULES)
@pytest.mark.parametrize("frames", [1, 23, 90])
def test_packed_count_matches_the_analytic_count(dit, name, frames):
    """Every Table 1 schedule packs exactly the tokens it counts, on the side its sampling order fills first
    (inverted schedules: the frames after the section, the start image as their anchor before it)."""
    pack = FramePackContext.from_dit(dit, name)
    grid = SectionGrid(9, 12, 20)
    frames_ = torch.randn(1, 4, frames, 12, 20)
    if pack.schedule.inverted:
        image = torch.randn(1, 4, 1, 12, 20)
        ctx = pack.pack(grid, before=image, after=frames_, before_times=[-50])
        assert ctx.count == pack.schedule.context_length(grid, frames, other_frames=1) == ctx.positions.shape[0]
        assert bool(((ctx.positions[:, 0] == -50) | (ctx.positions[:, 0] >= 9)).all())
    else:
        ctx = pack.context(frames_, grid, dit)
        assert ctx.count == pack.context_length(grid, frames) == ctx.positions.shape[0]
        assert bool((ctx.positions[:, 0] < 0).all())  # history sits before the section


def geometric_schedule(levels: int) -> str:
    """lambda = 2: frame i packed with a footprint 2**i times the patch, alternating height and width."""
    segs = []
    for i in range(levels):
        h, w = 2 * 2 ** (i // 2 + i % 2), 2 * 2 ** (i // 2)
        segs.append(f"f1k1h{h}w{w}")
    return "td_" + "".join(reversed(segs)) + "_g9"


def test_context_stays_under_the_geometric_bound_for_any_history_length(dit):
    grid = SectionGrid(9, 16, 16)
    l_f = grid.cells[1] * grid.cells[2]
    schedule = parse_schedule(geometric_schedule(7))  # footprints up to the whole 16x16 frame
    bound = (grid.frames + 2 / (2 - 1)) * l_f
    lengths = [schedule.total_length(grid, t) for t in list(range(0, 50)) + [1000, 10_000]]
    assert max(lengths) <= bound and lengths[-1] == lengths[-2] == 9 * l_f + 127  # 64+32+...+1
    pack = FramePackContext.from_dit(dit, schedule)
    history = torch.randn(1, 4, 10_000, 16, 16)
    assert pack.context(history, grid, dit).count + grid.tokens <= bound
    for mode in ("td", "tc"):  # a compressed tail adds a constant, so the length is flat as well
        name = mode + "_f16k4f4k2f1k1_g9"
        assert FramePackContext.from_dit(dit, name).context(history, grid, dit).count == parse_schedule(
            name
        ).context_length(grid, 21 + (mode == "tc"))


@pytest.mark.parametrize("name", ["td_f16k4f4k2f1k1_g9", "td_f512k16f64k8f8k2f1k1_g9", "tc_f16k4f2k2f1k1_g9"])
def test_paper_schedules_are_flat_once_full(name):
    schedule = parse_schedule(name)
    grid = SectionGrid(9, 60, 104)
    full = schedule.before.capacity + 1
    assert schedule.context_length(grid, full) == schedule.context_length(grid, 10_000)


def test_constant_history_gives_the_dit_token_through_every_kernel(dit):
    pack = FramePackContext.from_dit(dit, "td_f32k16f16k8f8k4f2k2f1k1_g9")
    history = torch.full((1, 4, 59, 12, 20), 0.7)  # 12x20 is not a multiple of most kernels: padded edges
    ctx = pack.context(history, SectionGrid(9, 12, 20), dit)
    expected = dit.patchify(torch.full((1, 4, 1, 2, 2), 0.7))[0, 0]
    assert torch.allclose(ctx.tokens[0], expected.expand_as(ctx.tokens[0]), atol=1e-4)  # float32 sums of 2048 taps


def test_untrained_kernel_token_is_the_dit_token_of_its_footprint_pooled_to_one_patch(dit):
    """FramePack's start (each element of the patch kernel repeated): the DiT's embedding of the pooled latent."""
    history = torch.randn(1, 4, 32, 32, 32)
    grid = SectionGrid(9, 32, 32)
    for name, factor in (("f2k2", (2, 2, 2)), ("f4k4", (4, 4, 4)), ("f16k8", (8, 8, 8))):
        ctx = FramePackContext.from_dit(dit, name).context(history, grid, dit)
        frames = history[:, :, -int(name[1 : name.index("k")]) :]
        expected = dit.patchify(F.avg_pool3d(frames, factor))
        assert torch.allclose(ctx.tokens, expected, atol=1e-5), name


def test_kernels_beyond_the_largest_pool_first_and_share_its_projection(dit):
    history = torch.randn(1, 4, 32, 32, 32)
    pack = FramePackContext.from_dit(dit, "f32k16")
    assert list(pack.projections) == ["k8h16w16"]
    ctx = pack.context(history, SectionGrid(9, 32, 32), dit)
    small = F.avg_pool3d(history, 2)
    expected = FramePackContext.from_dit(dit, "f16k8").context(small, SectionGrid(9, 16, 16), dit)
    assert torch.allclose(ctx.tokens, expected.tokens, atol=1e-5)
    assert ctx.extent.tolist() == [[16, 16, 16]] * 2 and ctx.positions[:, 0].tolist() == [-32.0, -16.0]


def test_sliding_window_is_the_degenerate_schedule(dit):
    history = torch.randn(2, 4, 11, 12, 20)
    grid = SectionGrid(9, 12, 20)
    window = SlidingWindow(5).context(history, grid, dit)
    packed = FramePackContext.from_dit(dit, "f5k1").context(history, grid, dit)
    assert torch.allclose(window.tokens, packed.tokens, atol=1e-5)
    assert torch.equal(window.positions, packed.positions)
    assert bool((packed.extent == 1).all())


def box_cells(p, e, grid_cells):
    """The cells of a box, a cell past the grid's last row / column counted as that edge cell (with repeats)."""
    _, hc, wc = grid_cells
    return [
        (p[0] + a, min(p[1] + b, hc - 1), min(p[2] + c, wc - 1))
        for a in range(e[0])
        for b in range(e[1])
        for c in range(e[2])
    ]


def brute_force_rope(embed, positions, extent, grid_cells):
    rows = []
    for p, e in zip(positions.tolist(), extent.tolist()):
        cells = box_cells(p, e, grid_cells)
        rows.append(embed(torch.tensor([cells], dtype=torch.float32))[0, 0].mean(0))
    return torch.stack(rows)


def test_pooled_rope_is_the_mean_of_phases_over_each_footprint_replicated_at_the_edges(dit):
    grid = SectionGrid(4, 10, 14)  # uneven: edge boxes reach past the grid, whose last row / column they repeat
    pack = FramePackContext.from_dit(dit, "tc_f4k4f2k2f1k1_g4")
    ctx = pack.context(torch.randn(1, 4, 12, 10, 14), grid, dit)
    assert int(ctx.extent.max()) > 1
    assert ctx.extent[:, 1:].unique().tolist() == [1, 2, 4]  # every box the kernel's full size
    pooled = box_rope(dit.rope_embedder, ctx.positions, ctx.extent, grid.cells)[0, :, 0]
    expected = brute_force_rope(dit.rope_embedder, ctx.positions, ctx.extent, grid.cells)
    assert torch.allclose(pooled, expected, atol=1e-5)
    inside = box_rope(dit.rope_embedder, ctx.positions, ctx.extent)[0, :, 0]  # no grid: nothing is clamped
    edge = (ctx.positions[:, 1:] + ctx.extent[:, 1:] > torch.tensor(grid.cells[1:])).any(-1)
    assert torch.allclose(inside[~edge], pooled[~edge], atol=1e-6) and not torch.allclose(inside[edge], pooled[edge])
    # boxes tile the packed history: every history cell is covered exactly once by the packed part
    cells = set()
    for p, e in zip(ctx.positions[:-4].long().tolist(), ctx.extent[:-4].tolist()):  # the last 4: tail summary
        box = set(box_cells(p, e, grid.cells))
        assert not cells & box
        cells |= box
    assert cells == {(t, h, w) for t in range(-7, 0) for h in range(5) for w in range(7)}


def test_tail_modes(dit):
    grid = SectionGrid(4, 8, 8)
    history = torch.randn(1, 4, 10, 8, 8)
    head = FramePackContext.from_dit(dit, "td_f2k2f1k1_g4").context(history, grid, dit)
    append = FramePackContext.from_dit(dit, "ta_f2k2f1k1_g4").context(history, grid, dit)
    compress = FramePackContext.from_dit(dit, "tc_f2k2f1k1_g4").context(history, grid, dit)
    assert append.count == head.count + 7 and compress.count == head.count + 4
    assert torch.allclose(append.tokens[:, : head.count], head.tokens)
    # append: each tail frame pooled to the k2 footprint (4x4) and projected to one token: the DiT token of the
    # frame pooled to one patch (2x2)
    tail = history[:, :, :7]
    pooled = F.adaptive_avg_pool3d(tail, (7, 2, 2))
    expected = torch.cat([dit.patchify(pooled[:, :, i : i + 1]) for i in range(6, -1, -1)], 1)
    assert torch.allclose(append.tokens[:, head.count :], expected, atol=1e-5)
    assert append.positions[head.count :, 0].tolist() == [-4.0, -5, -6, -7, -8, -9, -10]
    assert append.extent[head.count :].tolist() == [[1, 4, 4]] * 7
    # compress: the mean of the tail frames through the last kernel (k2: the DiT token of each 4x4 block pooled)
    mean = tail.mean(dim=2, keepdim=True)
    expected = dit.patchify(F.avg_pool3d(mean, (1, 2, 2)))
    assert torch.allclose(compress.tokens[:, head.count :], expected, atol=1e-5)
    # changing the oldest frame changes compress, not delete
    changed = history.clone()
    changed[:, :, 0] += 1
    assert torch.allclose(
        FramePackContext.from_dit(dit, "td_f2k2f1k1_g4").context(changed, grid, dit).tokens, head.tokens
    )
    assert not torch.allclose(
        FramePackContext.from_dit(dit, "tc_f2k2f1k1_g4").context(changed, grid, dit).tokens, compress.tokens
    )


def test_similarity_ordering_gives_the_best_slot_to_the_most_similar_frame(dit):
    grid = SectionGrid(4, 8, 8)
    history = torch.randn(1, 4, 30, 8, 8)
    estimate = history[:, :, 3:4] * 2.0  # same direction as the old frame at t = -27
    pack = FramePackContext.from_dit(dit, "td_f4k2f1k1_g4", ordering="similarity")
    ctx = pack.pack(grid, before=history, estimate=estimate)
    assert ctx.positions[:16, 0].unique().tolist() == [-27.0]  # the full-resolution k1 slot
    time_ctx = FramePackContext.from_dit(dit, "td_f4k2f1k1_g4").context(history, grid, dit)
    assert time_ctx.positions[:16, 0].unique().tolist() == [-1.0]
    # the hybrid with a heavy time weight falls back to time proximity
    hybrid = FramePackContext.from_dit(dit, "td_f4k2f1k1_g4", ordering="hybrid", lambda_time=1e3)
    assert torch.equal(hybrid.pack(grid, before=history, estimate=estimate).positions, time_ctx.positions)


def test_endpoint_and_inverted_schedules_use_frames_after_the_section(dit):
    grid = SectionGrid(4, 8, 8)
    before, after = torch.randn(1, 4, 1, 8, 8), torch.randn(1, 4, 12, 8, 8)
    inverted = FramePackContext.from_dit(dit, "f1k1_x_g4_f1k1f4k2f16k4_td")
    # random access: the first frame at t = -40, later sections from t = 20 on
    ctx = inverted.pack(grid, before=before, before_times=[-40], after=after, after_times=range(20, 32))
    assert ctx.count == inverted.context_length(grid, 1, 12) == 16 + 16 + 2 * 4 + 2 * 1  # 7 frames left for k4
    assert ctx.positions[:16, 0].unique().tolist() == [-40.0]
    assert ctx.positions[16:32, 0].unique().tolist() == [20.0]
    with pytest.raises(ValueError, match="not after the section"):
        inverted.pack(grid, after=after, after_times=range(2, 14))
    with pytest.raises(ValueError, match="distinct integers"):
        inverted.pack(grid, after=after, after_times=[20] * 12)


def test_a_vanilla_schedule_packs_frames_after_the_section_with_its_before_side_mirrored(dit):
    grid = SectionGrid(4, 8, 8)
    before, after = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 4, 3, 8, 8)
    pack = FramePackContext.from_dit(dit, "td_f2k2f1k1_g4")  # nothing after the g part
    # the frame nearest each side at full detail (16 cells), the next two frames as one k2 box (4 tokens)
    ctx = pack.context_both(before, after, grid, dit, after_times=[10, 11, 12])
    assert ctx.count == pack.context_length(grid, 3, 3) == 2 * (16 + 4)
    times = ctx.positions[:, 0]
    assert sorted(times[times >= 0].unique().tolist()) == [10.0, 11.0]  # k1 at 10, the k2 box from 11 on
    assert sorted(times[times < 0].unique().tolist()) == [-3.0, -1.0]
    alone = pack.context_both(None, after, grid, dit)  # directly after the section by default
    assert alone.count == 20 and alone.positions[:, 0].min() == grid.frames
    assert torch.equal(pack.context_both(before, None, grid, dit).tokens, pack.context(before, grid, dit).tokens)


def test_the_f1_preset_fills_every_slot_and_pins_the_start_frame(dit):
    """framepack_f1: the start frame at -20, the last 19 frames of the zero-padded history at -19..-1."""
    grid = SectionGrid(9, 10, 14)  # 5x7 cells
    pack = FramePackContext.from_dit(dit, "framepack_f1")
    assert list(pack.projections) == ["k1h2w2", "k4h8w8", "k2h4w4"]
    start = torch.randn(1, 4, 1, 10, 14)
    full = 35 + 35 + 3 * 4 + 4 * 2 * 2  # start slot, 1x, one 2x box, four 4x boxes (past the 5x7 grid)
    for frames in (1, 2, 20, 47):
        history = torch.cat([start, torch.randn(1, 4, frames - 1, 10, 14)], dim=2)
        ctx = pack.context(history, grid, dit)
        assert ctx.count == pack.context_length(grid, frames) == pack.tokens_for(grid, frames) == full
        assert sorted(ctx.positions[:, 0].unique().tolist()) == [-20.0, -19, -15, -11, -7, -3, -1]
        # the same tokens as a plain schedule packing the start frame, zeros and the history at those times
        padded = torch.cat([start, torch.zeros(1, 4, max(0, 19 - frames), 10, 14), history[:, :, -19:]], dim=2)
        plain = FramePackContext.from_dit(dit, "f1k1f16k4f2k2f1k1_g9").pack(grid, before=padded)
        assert torch.equal(ctx.tokens, plain.tokens) and torch.equal(ctx.positions, plain.positions)
    first = pack.context(start, grid, dit)  # section 0 of F1: the start frame twice, zeros in 2x and 4x
    bias_only = dit.patchify(torch.zeros(1, 4, 1, 2, 2))[0, 0]
    assert first.positions[:70, 0].unique().tolist() == [-20.0, -1.0]  # k1: start slot and 1x, in time order
    assert torch.allclose(first.tokens[0, :35], first.tokens[0, 35:70])
    assert torch.allclose(first.tokens[0, 70:], bias_only.expand(28, -1), atol=1e-6)
    assert pack.context_length(grid, 0) == 0
    with pytest.raises(ValueError, match="F1 looks back only"):
        pack.context_both(start, start, grid, dit)


def test_weights_round_trip_and_refuse_another_model(dit, tmp_path):
    pack = FramePackContext.from_dit(dit, "tc_f16k4f2k2f1k1_g9", ordering="hybrid", lambda_time=0.5)
    with torch.no_grad():
        for p in pack.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "pack.safetensors"
    pack.save(path)
    loaded = FramePackContext.load(path, dit=dit)
    assert str(loaded.schedule) == "tc_f16k4f2k2f1k1_g9" and loaded.ordering == "hybrid" and loaded.lambda_time == 0.5
    for (k, a), (_, b) in zip(pack.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="width"):
        FramePackContext.load(path, dit=ToyDiT(width=16, in_channels=4))


def test_projections_are_trainable(dit):
    pack = FramePackContext.from_dit(dit, "td_f4k2f1k1_g4")
    ctx = pack.pack(SectionGrid(4, 8, 8), before=torch.randn(1, 4, 6, 8, 8))
    ctx.tokens.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pack.parameters())


def test_clear_errors(dit):
    with pytest.raises(ValueError, match="multiple of the DiT patch"):
        FramePackContext.from_dit(dit, "f1k1h3w2")
    with pytest.raises(ValueError, match="frame ordering"):
        FramePackContext.from_dit(dit, "f1k1", ordering="random")
    pack = FramePackContext.from_dit(dit, "f1k1")
    with pytest.raises(ValueError, match="same width and height"):
        pack.context(torch.randn(1, 4, 2, 8, 8), SectionGrid(4, 8, 10), dit)
    with pytest.raises(ValueError, match="latent channels"):
        pack.context(torch.randn(1, 3, 2, 8, 8), SectionGrid(4, 8, 8), dit)
