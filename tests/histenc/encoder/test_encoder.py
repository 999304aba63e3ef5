"""History encoder: shapes per rate and width, incremental == full, zero-init == LR, positions, bad input."""

from __future__ import annotations

import pytest
import torch

from histenc.context import SectionGrid
from histenc.encoder.model import EncoderConfig, HistoryEncoder
from histenc.encoder.layers import CausalConv3d, parse_rate, stride_plan
from histenc.encoder.state import EncoderState
from tests.helpers import ToyDiT

RATES = ["4x4x2", "2x2x2", "2x2x1", "2x2x4", "2x2x8"]
SMALL = dict(hidden=(8, 16, 32, 32), heads=4)  # same structure, narrow channels: fast on 2 cores


def history(frames=8, height=16, width=16, channels=16, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, frames, height, width, generator=g)


def trained_like(enc: HistoryEncoder, seed=1) -> HistoryEncoder:
    """Give the zero-initialised residual output real weights so the HR branch matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        enc.hr_out.weight.copy_(torch.randn(enc.hr_out.weight.shape, generator=g) * 0.05)
        enc.hr_out.bias.copy_(torch.randn(enc.hr_out.bias.shape, generator=g) * 0.05)
    return enc


def test_parse_rate_and_stride_plan_put_time_first():
    assert parse_rate("4x4x2") == (4, 4, 2)
    assert parse_rate((2, 2, 8)) == (2, 2, 8)
    plan = stride_plan(8, 4, 4)
    assert plan == [(2, 1, 1)] * 3 + [(1, 2, 2)] * 2
    with pytest.raises(ValueError, match="powers of two"):
        parse_rate("3x3x2")
    with pytest.raises(ValueError, match="HxWxT"):
        parse_rate("4 by 4")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("width", [32, 96])
def test_token_shapes_match_formula_at_every_rate(rate, width):
    dit = ToyDiT(width=width)
    enc = HistoryEncoder.from_dit(dit, rate=rate, **({} if width == 32 else SMALL))
    h = history(frames=8, height=16, width=24)
    grid = SectionGrid(4, 16, 24)
    ctx = enc.context(h, grid, dit)
    rh, rw, rt = parse_rate(rate)
    expected = (8 // rt) * (16 // (2 * rh)) * (24 // (2 * rw))
    assert ctx.tokens.shape == (1, expected, width)
    assert enc.config.tokens_for(8, 16, 24) == expected
    assert ctx.positions.shape == (expected, 3) and ctx.extent.shape == (expected, 3)
    assert float(ctx.positions[:, 0].max()) < 0  # all history tokens sit before the section


def test_real_width_runs():
    dit = ToyDiT(width=1536)
    enc = HistoryEncoder.from_dit(dit, rate="4x4x2")
    out = enc(history(frames=2, height=8, width=8))
    assert out.shape == (1, 1, 1536)


def test_token_count_for_20s_480p():
    cfg = EncoderConfig(width=1536, rate="4x4x2")
    # 20 s at 24 fps = 120 latent frames of 104x60; 60 rows pad to 64 -> 8 token rows (7.5 unpadded).
    assert cfg.tokens_for(120, 60, 104) == 60 * 8 * 13
    assert cfg.token_grid(120, 60, 104) == (60, 8, 13)


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x1", "2x2x8"])
def test_untrained_encoder_equals_lr_branch(rate):
    dit = ToyDiT(width=48)
    h = history(frames=8)
    full = HistoryEncoder.from_dit(dit, rate=rate, variant="full")
    only_lr = HistoryEncoder.from_dit(dit, rate=rate, variant="only_lr")
    assert torch.equal(full(h), only_lr(h))
    assert not torch.equal(trained_like(full)(h), only_lr(h))


def test_lr_branch_is_the_dit_patch_embedding_of_the_pooled_history():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", variant="only_lr")
    h = history(frames=4)
    pooled = torch.nn.functional.avg_pool3d(h, (2, 2, 2))
    torch.testing.assert_close(enc(h), dit.patchify(pooled), rtol=0, atol=1e-6)


def test_large_patchifier_starts_equal_to_lr_branch_with_the_same_token_count():
    dit = ToyDiT(width=32)
    h = history(frames=8)
    big = HistoryEncoder.from_dit(dit, rate="4x4x2", variant="large_patchifier")
    lr = HistoryEncoder.from_dit(dit, rate="4x4x2", variant="only_lr")
    assert big.large_embed.kernel_size == (2, 8, 8)
    torch.testing.assert_close(big(h), lr(h), rtol=1e-5, atol=1e-5)


def test_without_lr_has_no_lr_projection_and_nonzero_tokens():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", variant="without_lr")
    assert not hasattr(enc, "lr_embed")
    assert enc(history(frames=4)).abs().sum() > 0


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x1", "2x2x4"])
def test_incremental_equals_full_reencode(rate):
    dit = ToyDiT(width=32)
    enc = trained_like(HistoryEncoder.from_dit(dit, rate=rate, **SMALL))
    enc.chunk_groups = 0  # the reference pass encodes everything in one go
    h = history(frames=16, height=16, width=24)
    full = enc(h)
    group = enc.config.box[0]
    section = max(group, 4)
    grid = SectionGrid(section, 16, 24)
    enc.chunk_groups = 8
    for k in range(1, 16 // section + 1):
        ctx = enc.context(h[:, :, : section * k], grid, dit)
        torch.testing.assert_close(ctx.tokens, full[:, : ctx.count], rtol=1e-5, atol=1e-5)
    assert enc.state.committed == 16
    torch.testing.assert_close(ctx.tokens, full, rtol=1e-5, atol=1e-5)


def test_unaligned_sections_match_full_encode_and_reuse_state():
    dit = ToyDiT(width=32)
    enc = trained_like(HistoryEncoder.from_dit(dit, rate="2x2x4", **SMALL))
    h = history(frames=21)
    grid = SectionGrid(5, 16, 16)
    for frames in (5, 9, 13, 21):
        ctx = enc.context(h[:, :, :frames], grid, dit)
        torch.testing.assert_close(ctx.tokens, enc(h[:, :, :frames]), rtol=1e-5, atol=1e-5)
    assert enc.state.committed == 20 and enc.state.pending_frames == 1


def test_changed_history_restarts_the_state():
    dit = ToyDiT(width=32)
    enc = trained_like(HistoryEncoder.from_dit(dit, rate="2x2x2", **SMALL))
    h = history(frames=8)
    enc.context(h[:, :, :4], SectionGrid(4, 16, 16), dit)
    other = h.clone()
    other[:, :, 3] += 1.0  # the last frame the state committed differs
    ctx = enc.context(other, SectionGrid(4, 16, 16), dit)
    torch.testing.assert_close(ctx.tokens, enc(other), rtol=1e-5, atol=1e-5)


def test_causal_conv_streams_exactly():
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, stride=(2, 1, 1))
    x = torch.randn(1, 3, 8, 6, 6)
    whole, _ = conv(x)
    a, cache = conv(x[:, :, :4])
    b, _ = conv(x[:, :, 4:], cache)
    torch.testing.assert_close(torch.cat([a, b], 2), whole, rtol=1e-6, atol=1e-6)


def test_state_round_trips_through_a_dict_and_resumes():
    dit = ToyDiT(width=32)
    enc = trained_like(HistoryEncoder.from_dit(dit, rate="2x2x2", **SMALL))
    h = history(frames=12)
    grid = SectionGrid(4, 16, 16)
    enc.context(h[:, :, :7], grid, dit)
    data = enc.state.to_dict()
    assert all(isinstance(v, torch.Tensor) and v.is_contiguous() for v in data.values())
    fresh = HistoryEncoder(enc.config)
    fresh.load_state_dict(enc.state_dict())
    fresh.state = EncoderState.from_dict(data)
    assert fresh.state.committed == 6 and fresh.state.pending_frames == 1
    ctx = fresh.context(h, grid, dit)
    torch.testing.assert_close(ctx.tokens, enc(h), rtol=1e-5, atol=1e-5)


def test_state_does_not_grow_with_the_history():
    dit = ToyDiT(width=64)
    enc = HistoryEncoder.from_dit(dit, rate="4x4x2", **SMALL)
    h = history(frames=32, height=32, width=32)
    grid = SectionGrid(4, 32, 32)
    enc.context(h[:, :, :8], grid, dit)
    early = enc.state.nbytes(include_tokens=False)
    enc.context(h, grid, dit)
    assert enc.state.nbytes(include_tokens=False) == early
    assert enc.state.nbytes(include_tokens=True) > early


def test_positions_rule_last_frame_at_minus_one_and_shift_as_history_grows():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="4x4x2")
    pos, ext = enc.token_boxes(6, 12, 16)  # 3 groups of 2 frames; 12 rows pad to 16 -> 2 token rows
    assert pos[:, 0].unique().tolist() == [-6.0, -4.0, -2.0]
    assert pos[:, 1].unique().tolist() == [0.0, 4.0]
    assert ext[:, 1].unique().tolist() == [2, 4]  # the padded row covers only its 2 real cells
    assert ext[:, 2].unique().tolist() == [4]
    pos_later, _ = enc.token_boxes(10, 12, 16)
    assert pos_later[:, 0].min() == -10.0 and (pos_later[:, 0] + 2).max() == 0.0
    pos_odd, ext_odd = enc.token_boxes(5, 16, 16)  # the provisional last group covers one real frame
    assert pos_odd[-1, 0] == -1.0 and ext_odd[-1, 0] == 1


def test_spatial_padding_pads_and_strict_mode_refuses():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="4x4x2")
    ctx = enc.context(history(frames=4, height=12, width=16), SectionGrid(4, 12, 16), dit)
    assert ctx.count == 2 * 2 * 2
    strict = HistoryEncoder.from_dit(dit, rate="4x4x2", spatial_pad=False)
    with pytest.raises(ValueError, match="not divisible by rate x patch = 8x8"):
        strict.context(history(frames=4, height=12, width=16), SectionGrid(4, 12, 16), dit)


def test_bad_inputs_are_one_sentence_each():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x4")
    grid = SectionGrid(4, 16, 16)
    with pytest.raises(ValueError, match="^history has 0 latent frames; .* give it at least 1"):
        enc.context(history(frames=0), grid, dit)
    with pytest.raises(ValueError, match="has 4 latent channels but the model expects 16"):
        enc.context(history(frames=4, channels=4), grid, dit)
    with pytest.raises(ValueError, match="the section is 24x16"):
        enc.context(history(frames=4), SectionGrid(4, 16, 24), dit)
    with pytest.raises(ValueError, match="outputs 32-wide tokens but the model's DiT is 64 wide"):
        enc.context(history(frames=4), grid, ToyDiT(width=64))
    with pytest.raises(ValueError, match="unknown"):
        EncoderConfig(width=32, variant="huge")


@pytest.mark.parametrize("rate, section", [("4x4x2", 1), ("2x2x4", 1), ("2x2x4", 3), ("2x2x8", 5)])
def test_sections_shorter_than_the_time_stride_are_encoded_and_stay_exact(rate, section):
    """A 1-frame first section before a 4x4x2 encoder: a provisional group, replaced when the group completes."""
    dit = ToyDiT(width=32)
    enc = trained_like(HistoryEncoder.from_dit(dit, rate=rate, **SMALL))
    h = history(frames=4 * section + 1)
    grid = SectionGrid(section, 16, 16)
    for frames in range(section, h.shape[2] + 1, section):
        ctx = enc.context(h[:, :, :frames], grid, dit)
        torch.testing.assert_close(ctx.tokens, enc(h[:, :, :frames]), rtol=1e-5, atol=1e-5)
        assert ctx.count == enc.tokens_for(grid, frames)
        assert float((ctx.positions[:, 0] + ctx.extent[:, 0]).max()) == 0  # the newest box touches the section
    first = enc.context(h[:, :, :1], grid, dit) if section == 1 else None
    if first is not None:  # one frame is one provisional box covering exactly that frame
        assert first.positions[:, 0].unique().tolist() == [-1.0] and first.extent[:, 0].unique().tolist() == [1]


@pytest.mark.parametrize(
    "field, value, sentence",
    [
        ("hidden", [], "^encoder hidden is \\[\\]; use channel counts such as \\[64, 128, 256, 512\\]\\.$"),
        ("hidden", [64, 0], "^encoder hidden is \\[64, 0\\]; use channel counts"),
        ("hidden", "abc", "^encoder hidden is 'abc'; use channel counts"),
        ("heads", 0, "^encoder heads is 0; use a head count that divides 512, e.g. 8\\.$"),
        ("heads", 7, "^encoder heads is 7 but the last hidden width 512 does not divide by it; use a divisor"),
        ("heads", "8", "^encoder heads is '8'; use a head count"),
        ("patch", [1, 2], "^encoder patch is \\[1, 2\\]; use the DiT's patch"),
        ("width", 0, "^encoder width is 0; use the DiT's width"),
        ("spatial_pad", "yes", "^encoder spatial_pad is 'yes'; use true or false\\.$"),
        ("lr_input", "vae", "^encoder lr_input 'vae' is unknown; use 'latent' or 'pixels'\\.$"),
    ],
)
def test_every_config_field_is_refused_in_one_sentence_naming_it(field, value, sentence):
    meta = {**EncoderConfig(width=64).to_meta(), field: value}
    with pytest.raises(ValueError, match=sentence):
        EncoderConfig.from_meta(meta)


def test_pixel_input_needs_a_low_resolution_branch():
    with pytest.raises(ValueError, match="lr_input 'pixels' needs a low-resolution branch but variant 'without_lr'"):
        EncoderConfig(width=32, variant="without_lr", lr_input="pixels")
    assert EncoderConfig(width=32, variant="only_lr", heads=3).heads == 3  # no HR branch: heads are unused
