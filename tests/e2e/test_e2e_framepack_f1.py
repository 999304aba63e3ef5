"""The shipped FramePack F1 workflow through a real host, on the tiny checkpoint FramePack's own class writes.

The twin runs as shipped apart from sizes and files: the tiny FramePack checkpoint, the test text encoder,
the tiny VAE, 1 s at 64x64 with 2-frame sections and 2 steps. ComfyUI's SigLIP loads only at full size
(27 layers: gigabytes of RAM and seconds per image on a CPU), so a test node on this host's own custom-node
folder stands in for CLIPVisionLoader + CLIPVisionEncode: a CLIP_VISION_OUTPUT of SigLIP's width and token
count made from the image. The in-process tests use ComfyUI's own Output class the same way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from safetensors.torch import load_file

from histenc.longvideo.section import start_frame_schedule
from histenc.longvideo.storyboard import Storyboard, format_time, schedule_sections
from scripts import host as hostlib
from scripts.fixture_framepack_hunyuan import NAME as TINY_FRAMEPACK
from tests.helpers import frame_count

TWIN = Path(__file__).resolve().parents[2] / "workflows" / "api" / "hunyuan_framepack_f1_storyboard.json"
TINY_VAE = "histenc_tiny_wan21_vae.safetensors"  # HunyuanVideo's VAE geometry: 16 channels, x8, x4
SECONDS, SECTION_FRAMES, SIZE, STEPS = 1.0, 2, 64, 2


def substitute(api: dict, input_dir: Path) -> dict:
    """The twin with the tiny files, the SigLIP stand-in and 1 s at 64x64 in 2-frame sections."""
    from PIL import Image

    api = copy.deepcopy(api)
    Image.new("RGB", (96, 80), (200, 120, 40)).save(input_dir / "histenc_f1_start.png")
    for key, node in list(api.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "HistEncLoadFramePackHunyuan":
            inputs.update(checkpoint=TINY_FRAMEPACK, weight_dtype="default")
        elif kind == "DualCLIPLoader":
            api[key] = {"class_type": "HistEncTestTextEncoder", "inputs": {}}
        elif kind == "VAELoader":
            inputs["vae_name"] = TINY_VAE
        elif kind == "LoadImage":
            inputs["image"] = "histenc_f1_start.png"
        elif kind in ("ImageScale", "HistEncFramePackSchedule"):
            inputs.update(width=SIZE, height=SIZE)
        elif kind == "CLIPVisionEncode":
            api[key] = {"class_type": "HistEncTestSigLIPEncode", "inputs": {"image": inputs["image"]}}
        elif kind == "HistEncStoryboard":
            scale = SECONDS / 30.0
            inputs["storyboard"] = "\n".join(
                f"{format_time(c.t * scale)} {c.prompt}" for c in Storyboard.parse(inputs["storyboard"]).cues
            )
        elif kind == "HistEncLongVideoSampler":
            inputs.update(seconds=SECONDS, section_frames=SECTION_FRAMES, width=SIZE, height=SIZE, steps=STEPS)
    for key in [k for k, n in api.items() if n["class_type"] == "CLIPVisionLoader"]:
        del api[key]
    schedule = next(n for n in api.values() if n["class_type"] == "HistEncFramePackSchedule")["inputs"]
    schedule["schedule"] = f"framepack_f1_g{SECTION_FRAMES}"
    return api


def by_type(api: dict, kind: str) -> str:
    return next(k for k, n in api.items() if n["class_type"] == kind)


def test_the_f1_workflow_runs_with_the_start_images_tokens(host):
    twin = json.loads(TWIN.read_text())
    assert by_type(twin, "FluxGuidance") and twin[by_type(twin, "FluxGuidance")]["inputs"]["guidance"] == 10.0
    api = substitute(twin, host.base / "input")
    sampler = by_type(api, "HistEncLongVideoSampler")
    summary = next(k for k, n in api.items() if n["class_type"] == "PreviewAny" and n["inputs"]["source"][0] == sampler)
    api["90"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": "latents/f1"}}
    entry = host.run(api, timeout=600)
    schedule = start_frame_schedule(schedule_sections(SECONDS, 30.0, SECTION_FRAMES))
    # 1 s at 30 fps: 30 frames, 9 latent frames: the start image, then four windows of 2. 64 px is 8x8 latent
    # pixels, 4x4 cells: F1's start slot and 1x 16 tokens each, the 2x slot 2x2 boxes, the 4x slot 4 boxes
    n, frames = len(schedule.sections), schedule.latent_frames
    assert (n, frames) == (5, 9)
    assert entry["outputs"][summary]["text"] == [
        f"{n} of {n} sections done ({frames} of {frames} latent frames), 0:01 of 0:01 of video, "
        "context up to 40 tokens per section."
    ]
    videos = [p for p in hostlib.output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1 and frame_count(videos[0]) == schedule.frames
    # the same job with another image for CLIP only: the start frame stays, the sampled frames change
    other = copy.deepcopy(api)
    other["91"] = {
        "class_type": "ImageInvert",
        "inputs": {"image": other[by_type(other, "HistEncTestSigLIPEncode")]["inputs"]["image"]},
    }
    other[by_type(other, "HistEncTestSigLIPEncode")]["inputs"]["image"] = ["91", 0]
    for kind in ("HistEncDecodeLongVideoToVideo", "SaveVideo"):
        del other[by_type(other, kind)]
    other["90"]["inputs"]["filename_prefix"] = "latents/f1_inverted"
    host.run(other, timeout=600)
    first, second = (
        load_file(str(next((host.base / "output" / "latents").glob(f"{p}_0*.latent"))))["latent_tensor"]
        for p in ("f1", "f1_inverted")
    )
    assert first.shape == (1, 16, 9, 8, 8) and (first[:, :, :1] == second[:, :, :1]).all()
    assert (first[:, :, 1:] - second[:, :, 1:]).abs().max() > 1e-4
