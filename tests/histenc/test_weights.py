"""safetensors I/O with metadata, and history encoder / state files built on it."""

from __future__ import annotations

import os

import pytest
import torch

from histenc.context import SectionGrid
from histenc.encoder.model import HistoryEncoder
from histenc.encoder.io import load_encoder, load_state, save_encoder, save_state
from histenc.weights import load_weights, read_metadata, save_weights
from tests.helpers import ToyDiT

SMALL = dict(hidden=(8, 16, 32, 32), heads=4)
META = {"format": "test.thing", "version": 1, "width": 64, "rate": "4x4x2", "hidden": [8, 16], "flag": True}


def test_round_trip_keeps_tensors_and_typed_metadata(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).half()}
    path = save_weights(tmp_path / "w.safetensors", tensors, META)
    loaded, meta = load_weights(path, expect={"width": 64, "rate": "4x4x2"})
    assert meta == META
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    assert read_metadata(path)["hidden"] == [8, 16]


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "w.safetensors"
    save_weights(path, {"a": torch.ones(2)}, META)
    save_weights(path, {"a": torch.zeros(2)}, META)  # overwrite in place
    assert sorted(os.listdir(path.parent)) == ["w.safetensors"]
    assert torch.equal(load_weights(path)[0]["a"], torch.zeros(2))


def test_mismatch_names_both_values(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", {"a": torch.ones(1)}, META)
    with pytest.raises(ValueError, match="made for width 64 but this needs width 1536"):
        load_weights(path, expect={"width": 1536})
    with pytest.raises(ValueError, match="no 'family'"):
        load_weights(path, expect={"family": "wan"})


def test_corrupt_truncated_and_missing_files_are_one_sentence(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", {"a": torch.randn(64, 64)}, META)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_weights(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(garbage)
    with pytest.raises(ValueError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


def test_bad_metadata_and_tensors_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'format' and a 'version'"):
        save_weights(tmp_path / "w.safetensors", {"a": torch.ones(1)}, {"width": 3})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_weights(tmp_path / "w.safetensors", {"a": torch.ones(1)}, {**META, "bad": object()})
    with pytest.raises(ValueError, match="not a tensor"):
        save_weights(tmp_path / "w.safetensors", {"a": [1, 2]}, META)


def test_encoder_save_load_is_bit_identical(tmp_path):
    dit = ToyDiT(width=64)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x4", **SMALL)
    with torch.no_grad():
        enc.hr_out.weight.normal_(0, 0.05)
    path = save_encoder(tmp_path / "enc.safetensors", enc, family="wan21")
    meta = read_metadata(path)
    assert (meta["rate"], meta["width"], meta["variant"], meta["channels"], meta["family"]) == (
        "2x2x4",
        64,
        "full",
        16,
        "wan21",
    )
    back = load_encoder(path, dit=dit, family="wan21")
    a, b = enc.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    h = torch.randn(1, 16, 4, 16, 16)
    assert torch.equal(enc(h), back(h))


def test_encoder_refuses_the_wrong_width_and_family(tmp_path):
    path = save_encoder(tmp_path / "enc.safetensors", HistoryEncoder(width=64, **SMALL), family="wan21")
    with pytest.raises(ValueError, match="made for width 64 but this needs width 1536"):
        load_encoder(path, dit=ToyDiT(width=1536))
    with pytest.raises(ValueError, match="made for family 'wan21' but this needs family 'hunyuan'"):
        load_encoder(path, family="hunyuan")
    with pytest.raises(ValueError, match="made for format 'histenc.history_encoder' but"):
        load_state(path, HistoryEncoder(width=64, **SMALL))


def test_encoder_file_with_wrong_tensors_is_refused(tmp_path):
    enc = HistoryEncoder(width=64, **SMALL)
    meta = {"format": "histenc.history_encoder", "version": 1, **enc.config.to_meta()}
    path = save_weights(tmp_path / "enc.safetensors", {"lr_embed.weight": torch.zeros(1)}, meta)
    with pytest.raises(ValueError, match="does not match the encoder its metadata describes"):
        load_encoder(path)


def test_state_file_resumes_incremental_encoding(tmp_path):
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", **SMALL)
    with torch.no_grad():
        enc.hr_out.weight.normal_(0, 0.05)
    h = torch.randn(1, 16, 10, 16, 16)
    grid = SectionGrid(4, 16, 16)
    enc.context(h[:, :, :5], grid, dit)
    path = save_state(tmp_path / "state.safetensors", enc.state, enc)
    enc.reset()
    enc.state = load_state(path, enc)
    assert enc.state.committed == 4 and enc.state.pending_frames == 1
    torch.testing.assert_close(enc.context(h, grid, dit).tokens, enc(h), rtol=1e-5, atol=1e-5)
    other = HistoryEncoder(width=32, rate="4x4x2", **SMALL)
    with pytest.raises(ValueError, match="made for rate '2x2x2' but this needs rate '4x4x2'"):
        load_state(path, other)
