"""Crash-safe job state: atomic writes, settings refusal naming the key, checksums."""

from __future__ import annotations

import json

import pytest
import torch

from histenc.longvideo.resume import MANIFEST, JobState, canonical_settings, first_difference, settings_hash

SECTIONS = [{"seed": 1, "prompt": "a", "latent_frames": 2}, {"seed": 2, "prompt": "b", "latent_frames": 1}]


def test_save_load_round_trip_is_bit_exact(tmp_path):
    state = JobState.open(tmp_path, {"cfg": 5.0}, SECTIONS)
    x = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    state.save(0, x)
    again = JobState.open(tmp_path, {"cfg": 5.0}, SECTIONS)
    assert again.is_done(0) and not again.is_done(1)
    loaded = again.load(0)
    assert loaded.dtype == torch.float64 and torch.equal(loaded, x)


def test_changed_setting_refuses_naming_it(tmp_path):
    JobState.open(tmp_path, {"model": "wan2.1-1.3b", "cfg": 5.0, "steps": 20}, SECTIONS)
    with pytest.raises(ValueError, match=r"setting 'cfg' is 6.0 but the job in .* was started with 5.0"):
        JobState.open(tmp_path, {"model": "wan2.1-1.3b", "cfg": 6.0, "steps": 20}, SECTIONS)
    with pytest.raises(ValueError, match=r"setting 'sampler' is \"euler\" .* started with unset"):
        JobState.open(tmp_path, {"model": "wan2.1-1.3b", "cfg": 5.0, "steps": 20, "sampler": "euler"}, SECTIONS)
    with pytest.raises(ValueError, match=r"setting 'steps' is unset"):
        JobState.open(tmp_path, {"model": "wan2.1-1.3b", "cfg": 5.0}, SECTIONS)


def test_changed_sections_refuse_naming_the_section(tmp_path):
    JobState.open(tmp_path, {}, SECTIONS)
    changed = [SECTIONS[0], {**SECTIONS[1], "prompt": "c"}]
    with pytest.raises(ValueError, match="section 1 .* differs"):
        JobState.open(tmp_path, {}, changed)
    with pytest.raises(ValueError, match="section 2 .* differs"):
        JobState.open(tmp_path, {}, SECTIONS + [{"seed": 3, "prompt": "d", "latent_frames": 1}])


def test_tuples_and_lists_are_the_same_setting():
    assert canonical_settings({"size": (64, 64)}) == {"size": [64, 64]}
    assert settings_hash({"size": (64, 64), "a": 1}) == settings_hash({"a": 1, "size": [64, 64]})
    assert first_difference({"a": 1, "b": 2}, {"a": 1, "b": 3}) == "b"
    assert first_difference({"a": 1}, {"a": 1}) is None


def test_settings_that_json_cannot_hold_are_named():
    with pytest.raises(ValueError, match="setting 'model' is a Tensor"):
        canonical_settings({"model": torch.zeros(1)})
    with pytest.raises(ValueError, match="setting 'cfg' is a float"):
        canonical_settings({"cfg": float("nan")})


def test_tampered_or_truncated_section_is_not_done(tmp_path):
    state = JobState.open(tmp_path, {}, SECTIONS)
    state.save(0, torch.ones(1, 4, 2, 3, 3))
    path = tmp_path / state.sections[0]["file"]
    path.write_bytes(path.read_bytes()[:-7])
    again = JobState.open(tmp_path, {}, SECTIONS)
    assert not again.is_done(0)
    with pytest.raises(ValueError, match="no longer matches its checksum"):
        again.load(0)


def test_foreign_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="is not a long-video job manifest"):
        JobState.open(tmp_path, {}, SECTIONS)
    (tmp_path / MANIFEST).write_text("not json")
    with pytest.raises(ValueError, match="is not a long-video job manifest"):
        JobState.open(tmp_path, {}, SECTIONS)


def test_manifest_records_versions_seeds_prompts_and_status(tmp_path):
    state = JobState.open(tmp_path, {"cfg": 5.0}, SECTIONS)
    state.mark(1, "interrupted")
    state.save(0, torch.zeros(1, 4, 2, 3, 3))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["settings"] == {"cfg": 5.0} and manifest["settings_hash"] == settings_hash({"cfg": 5.0})
    assert set(manifest["versions"]) == {"histenc", "torch", "safetensors"}
    assert [(s["seed"], s["prompt"], s["status"]) for s in manifest["sections"]] == [
        (1, "a", "done"),
        (2, "b", "interrupted"),
    ]


def test_stale_temp_files_from_a_crash_are_removed(tmp_path):
    (tmp_path / ".section_0001.safetensors.123.tmp").write_bytes(b"half")
    JobState.open(tmp_path, {}, SECTIONS)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
