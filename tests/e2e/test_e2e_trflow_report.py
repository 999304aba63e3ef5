"""T-RFlow as the long-video sampler's SAMPLER, and the drift report, through the real host."""

import json
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_window.json"


def test_trflow_sampler_and_drift_report(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["7"]["inputs"].update(seconds=3.0, section_frames=2, steps=4)
    prompt["4"]["inputs"]["storyboard"] = "0:00 a lighthouse at dawn"
    prompt["20"] = {"class_type": "HistEncTRFlowSampler", "inputs": {"a": 0.3, "b": 0.7, "progress": "sigma"}}
    prompt["7"]["inputs"]["sampler"] = ["20", 0]
    prompt["21"] = {
        "class_type": "HistEncDecodeLongVideo",
        "inputs": {"vae": ["8", 0], "latent": ["7", 0], "chunk_frames": 4, "warmup_frames": 2},
    }
    prompt["22"] = {
        "class_type": "HistEncDriftReport",
        "inputs": {
            "images": ["21", 0],
            "fps": 16.0,
            "section_frames": 2,
            "section_unit": "latent frames",
            "width": 480,
            "panel_height": 90,
        },
    }
    prompt["23"] = {"class_type": "PreviewAny", "inputs": {"source": ["22", 1]}}
    for node in ("9", "10"):
        del prompt[node]  # the streamed mp4 is covered elsewhere
    entry = host.run(prompt, timeout=300)
    plots = entry["outputs"]["22"]["images"]
    assert len(plots) == 1 and (host.base / plots[0]["type"] / plots[0]["subfolder"] / plots[0]["filename"]).is_file()
    [table] = entry["outputs"]["23"]["text"]
    assert "drift" in table.lower() and "nan" not in table.lower()
    # one row per section of the 48 decoded frames: 2 latent frames are 5 video frames first, then 8 each
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    sections = [(int(r[0]), r[1]) for r in rows if r[0].isdigit()]
    assert sections == list(enumerate(["0-4", "5-12", "13-20", "21-28", "29-36", "37-44", "45-47"]))
    # 48 frames -> 13 latent frames in 7 sections of 2 (the last of 1); a 2-frame window of 2x2 cells: 8 tokens
    assert entry["outputs"]["11"]["text"] == [
        "7 of 7 sections done (13 of 13 latent frames), 0:03 of 0:03 of video, context up to 8 tokens per section."
    ]
