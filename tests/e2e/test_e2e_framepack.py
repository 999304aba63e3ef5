"""A storyboard through the real host with the FramePack context instead of a sliding window.

10 s at 16 fps is 41 latent frames: more than the schedule's 19 packed frames, so the tail is
deleted and the bound is what the DiT sees (the minute-long run is covered by test_long_video).
"""

import json
from pathlib import Path

import pytest

from scripts.host import HostError, output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_framepack.json"
SCHEDULE = "td_f16k4f2k2f1k1_g8"  # the twin's schedule


def test_storyboard_with_framepack_context(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["7"]["inputs"].update(job_name="e2e_framepack", seconds=10.0, keep_job_state=True)
    prompt["4"]["inputs"]["storyboard"] = "0:00 a lighthouse at dawn\n0:05 a storm rolls in over the sea"
    entry = host.run(prompt, timeout=900)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1
    assert frame_count(videos[0]) == 160  # 10 s at 16 fps
    # 64x64 px -> 8x8 latent: 16 frames / k4 = 4 tokens, 2 frames / k2 = 4 tokens, 1 frame / k1 = 16 tokens
    assert f"{SCHEDULE}: 24 context tokens" in json.dumps(entry["outputs"]["13"])
    # 41 latent frames in sections of 8 (the last of 1); no section sees more than the schedule's bound above
    [text] = entry["outputs"]["11"]["text"]
    assert text.startswith(
        "6 of 6 sections done (41 of 41 latent frames), 0:10 of 0:10 of video, context up to 24 tokens per section. "
        "Job state kept: "
    )
    manifest = json.loads((host.base / "output" / "histenc_jobs" / "e2e_framepack" / "manifest.json").read_text())
    [context] = manifest["settings"]["context"]  # what a resumed job is checked against
    assert (context["type"], context["schedule"], context["ordering"]) == ("FramePackContext", SCHEDULE, "hybrid")


def test_a_bad_schedule_is_refused_before_queueing(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["6"]["inputs"]["schedule"] = "td_f16k4f2q2_g8"
    with pytest.raises(HostError) as refused:
        host.queue(prompt)
    assert "at position 10 expected 'k' starting a kernel" in str(refused.value)
