"""Encoder files: hand-edited or foreign metadata is refused in one sentence; the LR choice round-trips."""

from __future__ import annotations

import pytest
import torch

from histenc.context import SectionGrid
from histenc.encoder.io import load_encoder, load_state, save_encoder, save_state
from histenc.encoder.model import HistoryEncoder
from histenc.train.toy_dit import PixelLatents
from histenc.weights import load_weights, read_metadata, save_weights
from tests.helpers import ToyDiT

SMALL = dict(hidden=(8, 16, 32, 32), heads=4)


def edited(path, **changes):
    """Rewrite ``path`` with its metadata changed (None removes a key), as a hand edit would."""
    tensors, meta = load_weights(path)
    meta.update(changes)
    save_weights(path, tensors, {k: v for k, v in meta.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "field, value, sentence",
    [
        ("hidden", [], "encoder hidden is \\[\\]; use channel counts such as \\[64, 128, 256, 512\\]"),
        ("heads", 0, "encoder heads is 0; use a head count that divides 32, e.g. 8"),
        ("patch", "1x2x2", "encoder patch is '1x2x2'; use the DiT's patch"),
        ("width", None, "encoder metadata has no 'width'"),
    ],
)
def test_hand_edited_metadata_is_refused_naming_the_field_and_value(tmp_path, field, value, sentence):
    dit = ToyDiT(width=32)
    path = edited(save_encoder(tmp_path / "enc.safetensors", HistoryEncoder.from_dit(dit, **SMALL)), **{field: value})
    with pytest.raises(ValueError, match=f"^weights file enc.safetensors is not a usable history encoder: {sentence}"):
        load_encoder(path)
    with pytest.raises(ValueError, match=f"^weights file enc.safetensors is not a usable history encoder: {sentence}"):
        load_encoder(path, dit=dit)


def test_pixel_choice_is_stored_and_needs_a_newer_reader(tmp_path):
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", lr_input="pixels", **SMALL)
    path = save_encoder(tmp_path / "pix.safetensors", enc)
    meta = read_metadata(path)
    assert meta["lr_input"] == "pixels" and meta["version"] == 2  # a pack without the branch refuses it
    back = load_encoder(path, dit=dit)
    assert back.config == enc.config and back.codec is None
    with pytest.raises(ValueError, match="no VAE was given"):
        back.context(torch.randn(1, 16, 2, 8, 8), SectionGrid(2, 8, 8), dit)
    back.set_codec(PixelLatents(16))
    assert back.context(torch.randn(1, 16, 2, 8, 8), SectionGrid(2, 8, 8), dit).count == 4
    latent = save_encoder(tmp_path / "lat.safetensors", HistoryEncoder.from_dit(dit, **SMALL))
    assert read_metadata(latent)["version"] == 1  # every pack version reads latent-averaging files


def test_files_from_before_the_option_load_as_latent_averaging(tmp_path):
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", **SMALL)
    path = edited(save_encoder(tmp_path / "old.safetensors", enc), lr_input=None, version=1)
    assert "lr_input" not in read_metadata(path)
    back = load_encoder(path, dit=dit)
    assert back.config.lr_input == "latent"
    h = torch.randn(1, 16, 4, 8, 8)
    torch.testing.assert_close(back(h), enc(h))


def test_states_carry_the_choice_and_old_states_resume(tmp_path):
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", **SMALL)
    h = torch.randn(1, 16, 5, 8, 8)
    enc.context(h, SectionGrid(1, 8, 8), dit)
    path = edited(save_state(tmp_path / "state.safetensors", enc.state, enc), lr_input=None)
    assert load_state(path, enc).committed == 4  # written before the option: latent averaging
    pixels = HistoryEncoder.from_dit(dit, rate="2x2x2", lr_input="pixels", **SMALL)
    with pytest.raises(ValueError, match="was made for lr_input 'latent' but this needs lr_input 'pixels'"):
        load_state(path, pixels)
