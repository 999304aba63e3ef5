"""A randomly initialised history encoder as the context mode of a storyboard run on the real host."""

import json
from pathlib import Path

from scripts.host import output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_window.json"


def test_storyboard_with_history_encoder_context(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["20"] = {"class_type": "HistEncInitHistoryEncoder", "inputs": {"model": ["2", 0], "rate": "2x2x2", "variant": "full", "seed": 0}}
    prompt["6"] = {"class_type": "HistEncHistoryEncoderContext", "inputs": {"encoder": ["20", 0], "window_frames": 1}}
    sampler = prompt["7"]["inputs"]
    sampler.update(seconds=6.0, section_frames=4)
    prompt["4"]["inputs"]["storyboard"] = "0:00 a lighthouse at dawn\n0:03 a storm rolls in"
    entry = host.run(prompt, timeout=600)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert frame_count(videos[0]) == 96
    summary = json.dumps(entry["outputs"]["11"])
    assert "sections done" in summary and "context up to" in summary
