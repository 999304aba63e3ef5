"""A minute-long storyboard through the real host: frame count, prompt per section, resumable job, its kept state."""

import json
from pathlib import Path

from histenc.longvideo.storyboard import Storyboard, schedule_sections
from scripts.host import output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_window.json"


def test_minute_long_storyboard_video(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["7"]["inputs"].update(job_name="e2e_minute", keep_job_state=True)
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
    # 960 frames -> 1 + 959 / 4 rounded up = 241 latent frames: 15 sections of 16 and one of 1. 32 px is 4x4
    # latent pixels, 2x2 cells: the 2-frame window is 8 tokens
    assert len(expected) == 16 and schedule.latent_frames == 241
    # the kept state: 16 section files and the manifest, their size as the summary shows it
    folder = host.base / "output" / "histenc_jobs" / "e2e_minute"
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e3
    assert entry["outputs"]["11"]["text"] == [
        "16 of 16 sections done (241 of 241 latent frames), 1:00 of 1:00 of video, context up to 8 tokens per section. "
        f"Job state kept: {size:.1f} kB in output/histenc_jobs/e2e_minute."
    ]
