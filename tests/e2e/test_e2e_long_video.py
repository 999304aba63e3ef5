"""A minute-long storyboard through the real host: frame count, prompt per section, resumable job."""

import json
from pathlib import Path

from histenc.longvideo.storyboard import Storyboard, schedule_sections
from scripts.host import output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_window.json"


def test_minute_long_storyboard_video(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["7"]["inputs"]["job_name"] = "e2e_minute"
    entry = host.run(prompt, timeout=900)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1
    assert frame_count(videos[0]) == 960  # 60 s at 16 fps

    manifest = json.loads((host.base / "output" / "histenc_jobs" / "e2e_minute" / "manifest.json").read_text())
    inputs = prompt["7"]["inputs"]
    schedule = schedule_sections(inputs["seconds"], inputs["fps"], inputs["section_frames"])
    board = Storyboard.parse(prompt["4"]["inputs"]["storyboard"], global_prompt=prompt["4"]["inputs"]["global_prompt"])
    expected = [p.prompt for p in board.assign(schedule)]
    assert [s["prompt"] for s in manifest["sections"]] == expected
    assert expected[0].startswith("cinematic, 35mm, a lighthouse") and "gulls" in expected[-1]
    summary = json.dumps(entry["outputs"]["11"])
    assert f"{len(expected)} of {len(expected)} sections done" in summary
