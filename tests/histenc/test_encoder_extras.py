"""Several encoders at once, a raw window beside them, and the zero-init cross-attention enhancer."""

from __future__ import annotations

import pytest
import torch

from histenc.context import SectionGrid
from histenc.dit import ContextPayload
from histenc.encoder import HistoryEncoder
from histenc.encoder_extras import CombinedContext, CrossAttentionEnhancer
from tests.helpers import ToyDiT

SMALL = dict(hidden=(8, 16, 32, 32), heads=4)


def test_two_encoders_and_a_window_concatenate_tokens_and_positions():
    dit = ToyDiT(width=32)
    a = HistoryEncoder.from_dit(dit, rate="4x4x2", **SMALL)
    b = HistoryEncoder.from_dit(dit, rate="2x2x8", **SMALL)
    combined = CombinedContext.encoders_with_window([a, b], window_frames=3)
    h = torch.randn(1, 16, 8, 16, 16)
    grid = SectionGrid(4, 16, 16)
    ctx = combined.context(h, grid, dit)
    na, nb, nw = 4 * 2 * 2, 1 * 4 * 4, 3 * 8 * 8
    assert ctx.tokens.shape == (1, na + nb + nw, 32)
    torch.testing.assert_close(ctx.tokens[:, :na], a(h))
    torch.testing.assert_close(ctx.tokens[:, na:na + nb], b(h))
    torch.testing.assert_close(ctx.tokens[:, na + nb:], dit.patchify(h[:, :, -3:]))
    assert ctx.extent[:na, 0].unique().tolist() == [2] and ctx.extent[na:na + nb, 0].unique().tolist() == [8]
    assert ctx.positions[na + nb:, 0].unique().tolist() == [-3.0, -2.0, -1.0]
    # The shared payload path accepts the combined source as one.
    assert ContextPayload([combined], h).resolve(dit, grid).count == na + nb + nw
    combined.reset()
    assert a.state is None and b.state is None


def test_enhancer_starts_as_zero_and_learns_something():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", **SMALL)
    h = torch.randn(2, 16, 4, 16, 16)
    feats = enc.features(h)
    assert feats.shape == (2, enc.config.tokens_for(4, 16, 16), 32)
    enhancer = CrossAttentionEnhancer.for_encoder(enc, blocks=3)
    hidden = torch.randn(2, 10, 32)
    assert torch.equal(enhancer.residual(1, hidden, feats), torch.zeros_like(hidden))
    with torch.no_grad():
        enhancer.layers[1].out.weight.normal_()
    moved = enhancer.residual(1, hidden, feats)
    assert moved.shape == hidden.shape and moved.abs().sum() > 0
    # A different history gives a different residual: the features are really read.
    other = enhancer.residual(1, hidden, enc.features(torch.randn(2, 16, 4, 16, 16)))
    assert not torch.allclose(moved, other)


def test_features_stay_in_step_with_incremental_tokens():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", **SMALL)
    h = torch.randn(1, 16, 8, 16, 16)
    enc.features(h[:, :, :4])
    grown = enc.features(h)
    enc.reset()
    torch.testing.assert_close(grown, enc.features(h), rtol=1e-5, atol=1e-5)


def test_enhancer_refuses_what_it_cannot_use():
    dit = ToyDiT(width=32)
    lr = HistoryEncoder.from_dit(dit, rate="2x2x2", variant="only_lr")
    with pytest.raises(ValueError, match="no HR features"):
        CrossAttentionEnhancer.for_encoder(lr, blocks=2)
    with pytest.raises(ValueError, match="has no HR branch"):
        lr.features(torch.randn(1, 16, 2, 16, 16))
    enhancer = CrossAttentionEnhancer(blocks=2, width=32, feature_dim=32, inner=32, heads=4)
    with pytest.raises(ValueError, match="hidden states 32 wide and features 32 wide, got 64 and 32"):
        enhancer.residual(0, torch.randn(1, 3, 64), torch.randn(1, 4, 32))
    with pytest.raises(ValueError, match="outside the enhancer's 2 blocks"):
        enhancer.residual(5, torch.randn(1, 3, 32), torch.randn(1, 4, 32))
