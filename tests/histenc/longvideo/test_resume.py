"""Crash-safe job state: atomic writes, settings refusal naming the key, checksums."""

from __future__ import annotations

import json

import pytest
import torch

from histenc.longvideo.resume import (
    MANIFEST,
    JobState,
    canonical_settings,
    describe_difference,
    finish_job_state,
    first_difference,
    human_size,
    settings_hash,
    stored_settings,
)

SECTIONS = [{"seed": 1, "prompt": "a", "latent_frames": 2}, {"seed": 2, "prompt": "b", "latent_frames": 1}]


def test_save_load_round_trip_is_bit_exact(tmp_path):
    state = JobState.open(tmp_path, {"cfg": 5.0}, SECTIONS)
    x = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    state.save(0, x)
    again = JobState.open(tmp_path, {"cfg": 5.0}, SECTIONS)
    assert again.is_done(0) and not again.is_done(1)
    loaded = again.load(0)
    assert loaded.dtype == torch.float64 and torch.equal(loaded, x)


def test_changed_setting_refuses_naming_the_job_the_setting_and_both_values(tmp_path):
    job = tmp_path / "my job"
    JobState.open(job, {"model": "wan2.1-1.3b", "cfg": 5.0, "steps": 20}, SECTIONS)
    with pytest.raises(ValueError) as refused:
        JobState.open(job, {"model": "wan2.1-1.3b", "cfg": 6.0, "steps": 20}, SECTIONS)
    assert str(refused.value) == (
        "job 'my job' was started with cfg = 5.0 but is queued with 6.0; queue it with the same settings to resume, "
        "or give a new job name to start over."
    )
    with pytest.raises(ValueError, match=r"^job 'my job' was started without sampler but is queued with sampler = "):
        JobState.open(job, {"model": "wan2.1-1.3b", "cfg": 5.0, "steps": 20, "sampler": "euler"}, SECTIONS)
    with pytest.raises(ValueError, match=r"^job 'my job' was started with steps = 20 but is queued without steps;"):
        JobState.open(job, {"model": "wan2.1-1.3b", "cfg": 5.0}, SECTIONS)
    with pytest.raises(ValueError, match=r"^job 'renamed' was started with cfg = 5.0"):
        JobState.open(job, {"model": "wan2.1-1.3b", "cfg": 6.0, "steps": 20}, SECTIONS, name="renamed")


def test_a_changed_number_is_named_before_the_lists_made_from_it(tmp_path):
    """seconds 60 -> 30 also shortens the prompt list: the refusal names seconds, not two long lists."""
    prompts = [f"a long prompt about a lighthouse at dawn, number {i}" for i in range(16)]
    JobState.open(tmp_path, {"prompts": prompts, "seconds": 60.0}, SECTIONS)
    with pytest.raises(ValueError, match=r"started with seconds = 60.0 but is queued with 30.0;"):
        JobState.open(tmp_path, {"prompts": prompts[:8], "seconds": 30.0}, SECTIONS)
    changed = prompts[:3] + ["a storm"] + prompts[4:]
    with pytest.raises(ValueError, match=r'with prompts\[3\] = "a long prompt .*" but is queued with "a storm";'):
        JobState.open(tmp_path, {"prompts": changed, "seconds": 60.0}, SECTIONS)
    other = tmp_path / "other"
    JobState.open(other, {"model sampling": {"class": "ModelSamplingDiscreteFlow", "shift": 8.0}}, SECTIONS)
    with pytest.raises(ValueError, match=r"started with model sampling.shift = 8.0 but is queued with 5.0;"):
        JobState.open(other, {"model sampling": {"class": "ModelSamplingDiscreteFlow", "shift": 5.0}}, SECTIONS)


def test_describe_difference_goes_one_level_into_lists():
    assert describe_difference("order", [[0, 3], [1], [2]], [[0, 2], [1], [3]]) == ("order[0]", [0, 3], [0, 2])
    assert describe_difference("prompts", ["a", "b"], ["a"]) == ("the number of items in prompts", 2, 1)
    assert describe_difference("model", {"shift": 8.0, "x": 1}, {"shift": 8.0, "x": 2}) == ("model.x", 1, 2)


def test_changed_sections_refuse_naming_the_section(tmp_path):
    JobState.open(tmp_path, {}, SECTIONS)
    changed = [SECTIONS[0], {**SECTIONS[1], "prompt": "c"}]
    with pytest.raises(ValueError, match=r'started with sections\[1\].prompt = "b" but is queued with "c";'):
        JobState.open(tmp_path, {}, changed)
    with pytest.raises(ValueError, match="started with the number of items in sections = 2 but is queued with 3;"):
        JobState.open(tmp_path, {}, SECTIONS + [{"seed": 3, "prompt": "d", "latent_frames": 1}])


def test_stored_settings_read_back_as_written(tmp_path):
    assert stored_settings(tmp_path) is None
    JobState.open(tmp_path, {"cfg": 5.0, "size": (64, 64)}, SECTIONS)
    assert stored_settings(tmp_path) == {"cfg": 5.0, "size": [64, 64]}


def test_tuples_and_lists_are_the_same_setting():
    assert canonical_settings({"size": (64, 64)}) == {"size": [64, 64]}
    assert settings_hash({"size": (64, 64), "a": 1}) == settings_hash({"a": 1, "size": [64, 64]})
    assert first_difference({"a": 1, "b": 2}, {"a": 1, "b": 3}) == "b"
    assert first_difference({"a": 1}, {"a": 1}) is None
    assert first_difference({"a": [1], "b": 2}, {"a": [2], "b": 3}) == "b"  # a plain value before a list


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
    with pytest.raises(ValueError, match="is not a long-video job manifest, so job '.*' cannot resume from it"):
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


def test_a_finished_job_state_is_removed_or_kept_with_its_size(tmp_path):
    kept, removed = tmp_path / "kept", tmp_path / "removed"
    for folder in (kept, removed):
        state = JobState.open(folder, {"cfg": 5.0}, SECTIONS)
        state.save(0, torch.zeros(1, 4, 2, 3, 3))
    size = sum(f.stat().st_size for f in kept.iterdir())
    assert size > 1000  # the manifest and one section
    assert finish_job_state(kept, True, "output/histenc_jobs/kept") == (
        f"Job state kept: {size / 1e3:.1f} kB in output/histenc_jobs/kept."
    )
    assert kept.is_dir()
    assert finish_job_state(removed, False).startswith("Job state removed: ") and not removed.exists()
    assert human_size(999) == "999 bytes" and human_size(96_200_000) == "96.2 MB" and human_size(4_400) == "4.4 kB"
