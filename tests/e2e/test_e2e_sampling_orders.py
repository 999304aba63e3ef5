"""A short storyboard through the real host with the FramePack context and the "endpoints first" order.

5 s at 16 fps is 21 latent frames: sections of 8, 8 and 5. Section 0 is made first, then section 2 seeing it
16 frames back through the pack, then section 1 fills the gap, seeing both and leading natively into section 2.
"""

import json
from pathlib import Path

from scripts.host import output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_framepack.json"


def test_endpoints_first_storyboard_with_framepack_context(host):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["4"]["inputs"]["storyboard"] = "0:00 a lighthouse at dawn\n0:04 a storm rolls in over the sea"
    prompt["6"]["inputs"].update(width=32, height=32)
    prompt["7"]["inputs"].update(seconds=5.0, width=32, height=32, job_name="e2e_endpoints", keep_job_state=True)
    prompt["7"]["inputs"]["sampling_order"] = "endpoints first"
    entry = host.run(prompt, timeout=900)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1
    assert frame_count(videos[0]) == 80  # 5 s at 16 fps
    # at 32x32 px a k1 frame is 4 tokens, k2 and k4 boxes 1 token each. The middle section packs section 0
    # before it (k1 4 + k2 1 + two k4 boxes 2 = 7) and section 2 after it (k1 4 + k2 1 + one k4 box 1 = 6);
    # Section 2 sees section 0 alone (7). In forward order no section would see more than 4 + 1 + 4 = 9.
    [text] = entry["outputs"]["11"]["text"]
    assert text.startswith(
        "3 of 3 sections done (21 of 21 latent frames), 0:05 of 0:05 of video, context up to 13 tokens per section. "
        "Sampling order: endpoints first. Job state kept: "
    )
    manifest = json.loads((host.base / "output" / "histenc_jobs" / "e2e_endpoints" / "manifest.json").read_text())
    assert manifest["settings"]["sampling_order"] == "endpoints first"
    assert manifest["settings"]["sampling order"] == [[0], [2], [1]]
