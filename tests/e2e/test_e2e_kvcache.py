"""The clip KV cache through the real host: registered node, stock first section, history changes the rest."""

import json
from pathlib import Path

import safetensors.torch
import torch

from scripts.host import output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_window.json"


def storyboard_workflow(job: str, kv_cache: bool) -> dict:
    """The shipped window workflow, shortened to 2 s in 3 sections of 3 latent frames, with the KV cache chained
    after the window."""
    prompt = json.loads(WORKFLOW.read_text())
    sampler = prompt["7"]["inputs"]
    sampler.update(seconds=2.0, section_frames=3, job_name=job, keep_job_state=True)
    prompt["4"]["inputs"]["storyboard"] = "0:00 a lighthouse at dawn\n0:01 a storm rolls in"
    if kv_cache:
        prompt["12"] = {
            "class_type": "HistEncClipKVCache",
            "inputs": {
                "max_clips": 2,
                "blocks": "latter half",
                "similarity": "text conditioning",
                "tolerance": 0.001,
                "keep_kv_on": "model device",
                "add_to": ["6", 0],
            },
        }
        sampler["context"] = ["12", 0]
    return prompt


def sections(host, job: str) -> list[torch.Tensor]:
    folder = host.base / "output" / "histenc_jobs" / job
    return [safetensors.torch.load_file(str(p))["latents"] for p in sorted(folder.glob("section_*.safetensors"))]


def test_kv_cache_workflow_through_the_host(host):
    with_kv = storyboard_workflow("e2e_kvcache", kv_cache=True)
    entry = host.run(with_kv, timeout=600)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1 and frame_count(videos[0]) == 32  # 2 s at 16 fps
    # 32 frames -> 9 latent frames in 3 sections; the 2-frame window at 2x2 cells is 8 tokens, the cache adds
    # cached keys to attention, not context tokens
    [text] = entry["outputs"]["11"]["text"]
    assert text.startswith(
        "3 of 3 sections done (9 of 9 latent frames), 0:02 of 0:02 of video, context up to 8 tokens per section. "
        "Job state kept: "
    )

    host.run(storyboard_workflow("e2e_kvcache_off", kv_cache=False), timeout=600)
    on, off = sections(host, "e2e_kvcache"), sections(host, "e2e_kvcache_off")
    assert len(on) == len(off) == 3
    assert torch.equal(on[0], off[0])  # nothing cached yet: the first section is the stock result
    assert all((a - b).abs().max() > 1e-5 for a, b in zip(on[1:], off[1:]))  # past clips reach attention
