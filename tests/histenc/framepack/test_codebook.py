import pytest
import torch

from histenc.context import SectionGrid
from histenc.framepack.codebook import DiscreteHistory, HistoryCodebook
from histenc.framepack.packing import FramePackContext
from tests.helpers import ToyDiT


def test_k1_on_a_constant_history_gives_the_constant_back():
    history = torch.full((1, 4, 3, 5, 6), 0.25)
    book = HistoryCodebook.fit(history, k=1)
    assert book.size == 1 and torch.allclose(book.entries, torch.full((1, 4), 0.25))
    assert torch.equal(book.quantize(history), torch.zeros(1, 3, 5, 6, dtype=torch.long))
    assert torch.allclose(book.apply(history), history)


def test_k1_on_any_history_is_one_colour_its_mean():
    history = torch.randn(2, 4, 3, 5, 6)
    out = HistoryCodebook.fit(history, k=1).apply(history)
    mean = history.mean(dim=(0, 2, 3, 4))
    assert torch.allclose(out, mean[None, :, None, None, None].expand_as(history), atol=1e-5)


def test_large_k_reproduces_a_history_of_few_colours_exactly():
    g = torch.Generator().manual_seed(0)
    palette = torch.randn(12, 4, generator=g) * 3
    history = palette[torch.randint(0, 12, (1, 3, 8, 8), generator=g)].movedim(-1, 1)
    book = HistoryCodebook.fit(history, k=12, seed=1)
    assert torch.allclose(book.apply(history), history, atol=1e-5)


def test_quantisation_error_shrinks_as_k_grows():
    history = torch.randn(1, 4, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    errors = [float((HistoryCodebook.fit(history, k=k).apply(history) - history).square().mean()) for k in (1, 16, 256)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] == pytest.approx(float(history.var(dim=(0, 2, 3, 4), unbiased=False).mean()), rel=1e-3)


def test_fit_is_reproducible_with_a_seed():
    history = torch.randn(1, 4, 2, 8, 8)
    a, b = HistoryCodebook.fit(history, k=8, seed=3), HistoryCodebook.fit(history, k=8, seed=3)
    assert torch.equal(a.entries, b.entries)


def test_save_load_and_channel_check(tmp_path):
    book = HistoryCodebook.fit(torch.randn(1, 4, 2, 8, 8), k=8)
    book.save(tmp_path / "book.safetensors")
    loaded = HistoryCodebook.load(tmp_path / "book.safetensors", channels=4)
    assert torch.equal(loaded.entries, book.entries)
    with pytest.raises(ValueError, match="channels"):
        HistoryCodebook.load(tmp_path / "book.safetensors", channels=16)
    with pytest.raises(ValueError, match="channels but the codebook"):
        book.apply(torch.randn(1, 3, 2, 8, 8))
    with pytest.raises(ValueError, match="cannot fit 300"):
        HistoryCodebook.fit(torch.randn(1, 4, 1, 8, 8), k=300)


def test_discrete_history_feeds_the_packer_quantised_frames():
    dit = ToyDiT(width=16, in_channels=4)
    history = torch.randn(1, 4, 6, 8, 8)
    book = HistoryCodebook.fit(history, k=4)
    pack = FramePackContext.from_dit(dit, "td_f4k2f1k1_g4+D")
    grid = SectionGrid(4, 8, 8)
    ctx = DiscreteHistory(pack, book).context(history, grid, dit)
    assert torch.allclose(ctx.tokens, pack.context(book.apply(history), grid, dit).tokens)
    assert not torch.allclose(ctx.tokens, pack.context(history, grid, dit).tokens)


def test_an_inverted_plus_d_schedule_packs_both_sides_discretised():
    """``+D`` quantises every frame the pack sees: the start image before the section and the sections made
    already after it, each at its true time; before, the frames after the section were dropped."""
    dit = ToyDiT(width=16, in_channels=4)
    pack = FramePackContext.from_dit(dit, "f1k1_x_g2_f1k1f2k2f1k1+D")
    codebook = HistoryCodebook.fit(torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(3)), k=4, seed=0)
    grid = SectionGrid(2, 8, 8)
    image = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    after = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(5))
    source = DiscreteHistory(pack, codebook)
    ctx = source.context_both(image, after, grid, dit, after_times=list(range(2, 8)), before_times=[-12])
    want = pack.context_both(codebook.apply(image), codebook.apply(after), grid, dit, list(range(2, 8)), [-12])
    assert torch.equal(ctx.tokens, want.tokens) and torch.equal(ctx.positions, want.positions)
    # the image at -12 (16 cells) and after the section f1k1 (16) + f2k2 (4) + f1k1 (16); the rest is dropped
    assert ctx.count == 16 + 16 + 4 + 16 and sorted(set(ctx.positions[:, 0].tolist())) == [-12.0, 2.0, 3.0, 5.0]
    first_step = source.context_both(image, None, grid, dit, before_times=[-12])  # only the image exists yet
    assert first_step.count == 16
