"""A randomly initialised history encoder as the context mode of a storyboard run on the real host."""

import json
from pathlib import Path

from scripts.host import output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_window.json"


def test_storyboard_with_history_encoder_context(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["20"] = {
        "class_type": "HistEncInitHistoryEncoder",
        "inputs": {"model": ["2", 0], "rate": "2x2x2", "variant": "full", "seed": 0},
    }
    prompt["6"] = {"class_type": "HistEncHistoryEncoderContext", "inputs": {"encoder": ["20", 0], "window_frames": 1}}
    sampler = prompt["7"]["inputs"]
    sampler.update(seconds=6.0, section_frames=4)
    prompt["4"]["inputs"]["storyboard"] = "0:00 a lighthouse at dawn\n0:03 a storm rolls in"
    entry = host.run(prompt, timeout=600)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert frame_count(videos[0]) == 96
    # 6 s at 16 fps: 96 frames, 25 latent frames in 7 sections of 4, 4, 4, 4, 4, 4, 1. 32 px is 4x4 latent
    # pixels: one 2x2x2 encoder token per 2 frames (a 4x4-pixel box) and 2x2 cells per window frame, so the
    # last section (24 history frames) gets 24 / 2 + 4 = 16 tokens
    assert entry["outputs"]["11"]["text"] == [
        "7 of 7 sections done (25 of 25 latent frames), 0:06 of 0:06 of video, context up to 16 tokens per section."
    ]
