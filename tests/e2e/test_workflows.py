"""The shared workflows on a real host: each UI file is its API twin, each twin runs, the host lists them.

The twins name the real Wan files; ``substitute`` swaps in the tiny fixtures and scales seconds,
resolution and steps down so each runs in seconds on the CPU. Everything is checked against the
/object_info and the frontend of the host under test (0.3.75 or 0.33), whose frontend may queue a twin
under its own input names (``host_prompt``).
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from histenc.longvideo.section import start_frame_schedule
from histenc.longvideo.storyboard import Storyboard, format_time, schedule_sections
from scripts.host import output_files
from scripts.workflows import (
    FRONTEND_DISPLAY_INPUTS,
    NOTE_TYPES,
    WorkflowError,
    api_to_ui,
    default_value,
    host_prompt,
    node_info,
    note_text,
    slots,
    ui_to_api,
)
from tests.helpers import FRONTEND_READY, frame_count

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
NAMES = [p.stem for p in UI_FILES]
PACK_FOLDER = "comfyui-histenc"
TINY_WAN21_DIT = "histenc_tiny_wan21_t2v.safetensors"
TINY_WAN22_DIT = "histenc_tiny_wan22_ti2v.safetensors"
TINY_WAN21_I2V = "histenc_tiny_wan21_i2v.safetensors"
TINY_LOW_NOISE = "histenc_tiny_wan21_t2v_low_noise.safetensors"  # a second T2V checkpoint: the low-noise expert
TINY_WAN21_VAE = (
    "histenc_tiny_wan21_vae.safetensors"  # also stands in for HunyuanVideo's VAE: same 16-channel, x8 x4 geometry
)
TINY_HUNYUAN_DIT = "histenc_tiny_hunyuan_video.safetensors"
TINY_FRAMEPACK_HUNYUAN = "histenc_tiny_framepack_hunyuan.safetensors"
SECONDS, SECTION_FRAMES, SIZE, STEPS = 1.0, 2, 64, 2  # decoding costs seconds per latent frame on CPU
START_IMAGE = (96, 80)  # width, height: not SIZE, so the sampler resizes it and says so
# Context tokens of the longest-history section of each twin at these settings: 64 px is 8x8 latent pixels
# (x8 VAEs), 4x4 patch cells, 16 tokens per full-resolution frame; Wan 2.2's x16 VAE gives 2x2 cells, 4 tokens.
# The last section of a 1 s video at 16 fps has 4 history frames, at 24 fps 6, at 30 fps 8.
CONTEXT_TOKENS = {
    "wan21_t2v_storyboard_minute": 3 * 16,  # sliding window of 3 frames
    "wan21_t2v_storyboard_minute_trflow": 3 * 16,
    "wan21_t2v_storyboard_minute_kvcache": 1 * 16,  # window of 1; the KV cache adds cached keys, not tokens
    # FramePack td_f16k4f2k2f1k1: the newest frame 16, the 2 before in one k2 (2x4x4) box per 4x4 pixels: 4,
    # the one frame left in one k4 (4x8x8) box: 1
    "wan21_t2v_storyboard_minute_framepack": 16 + 4 + 1,
    # 4x4x2 encoder: a token per 2 frames x 8x8 pixels, so 4 / 2 = 2 tokens, plus a window of 2 frames
    "wan21_t2v_storyboard_minute_history_encoder": 4 // 2 + 2 * 16,
    "hunyuan_storyboard_history_encoder": 6 // 2 + 2 * 16,
    # F1 at 64 px (8x8 latent, 4x4 cells): the start slot and the 1x slot 16 tokens each, the 2x slot 2x2 boxes,
    # the 4x slot's 16 frames 4 boxes (zero latents fill what the video does not have yet)
    "hunyuan_framepack_f1_storyboard": 16 + 16 + 4 + 4,
    "wan22_ti2v_storyboard_start_image": 2 * 4,  # window of 2 frames
    "wan22_t2v_14b_two_experts_storyboard": 2 * 16,  # window of 2 frames, on both experts
    "wan21_i2v_14b_clip_vision_storyboard": 2 * 16,
}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def twin(name: str) -> dict:
    return load(WORKFLOWS / "api" / f"{name}.json")


@pytest.fixture(scope="module")
def object_info(host) -> dict:
    return host.get("/object_info")


def require_registered(types: set[str], object_info: dict) -> None:
    """A shipped workflow whose node types the host does not know is broken for every user: a failure."""
    missing = sorted(types - set(object_info))
    assert not missing, f"node types unknown to the host: {missing} (a feature module of histenc_nodes failed to load?)"


# --- (a) each UI file describes the same graph as its API twin --------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_converts_to_its_api_twin(name, object_info):
    ui = load(WORKFLOWS / f"{name}.json")
    require_registered({n["type"] for n in ui["nodes"]} - NOTE_TYPES, object_info)
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui_to_api(ui, object_info) == host_prompt(twin(name), object_info)


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_is_regenerated_from_its_twin_with_a_card_size_note(name, object_info):
    ui = load(WORKFLOWS / f"{name}.json")
    require_registered({n["type"] for n in ui["nodes"]} - NOTE_TYPES, object_info)
    notes = note_text(ui)
    assert notes and all(f"{gb} GB:" in notes for gb in (6, 8, 12))
    for setting in ("section_frames", "steps", "fp8_e4m3fn", "--lowvram"):
        assert setting in notes
    assert api_to_ui(twin(name), object_info, notes, name=name) == ui, "run scripts/workflows.py to regenerate"


def test_every_api_twin_survives_the_round_trip(object_info):
    """Test-only twins too: the seed control value and optional sockets land where the frontend puts them."""
    for path in sorted((WORKFLOWS / "api").glob("*.json")):
        api = load(path)
        require_registered({n["class_type"] for n in api.values()}, object_info)
        ui = api_to_ui(api, object_info, "note")
        assert ui_to_api(ui, object_info) == host_prompt(api, object_info), path.name
    ksampler = next(
        n
        for n in api_to_ui(load(WORKFLOWS / "api" / "demo_sliding_window.json"), object_info, "n")["nodes"]
        if n["type"] == "KSampler"
    )
    assert ksampler["widgets_values"] == [1, "fixed", 3, 3.0, "euler", "simple", 1.0]
    assert [i["name"] for i in ksampler["inputs"]] == ["model", "positive", "negative", "latent_image"]


def test_every_twin_means_the_same_on_this_host(object_info):
    """The host's frontend queues each twin value, under its own name or nested under a dynamic combo
    (0.33's ``format.codec`` for the twins' ``codec``); what it adds is a nested value or a default."""
    for path in sorted((WORKFLOWS / "api").glob("*.json")):
        api = load(path)
        for key, queued in host_prompt(api, object_info).items():
            given = api[key]["inputs"]
            for name, value in given.items():
                assert value in [v for k, v in queued["inputs"].items() if k.rsplit(".", 1)[-1] == name], (path, key)
            info = node_info(object_info, queued["class_type"], key)
            defaults = {s.name: default_value(s.spec) for s, _ in slots(info, lambda s: queued["inputs"][s.name])}
            for name, value in queued["inputs"].items():
                assert name in given or "." in name or value == defaults[name], (path.name, key, name)


def test_a_stock_frontend_template_converts_like_the_frontend_queues_it(host, object_info):
    """A workflow saved by ComfyUI's own frontend (its Wan template, as this host serves it) reads back with the
    right names."""
    ui = host.get("/templates/text_to_video_wan.json")
    api = ui_to_api(ui, object_info)
    sampler = next(n["inputs"] for n in api.values() if n["class_type"] == "KSampler")
    assert {k: v for k, v in sampler.items() if not isinstance(v, list)} == {
        "seed": 82628696717253,
        "steps": 30,
        "cfg": 6,
        "sampler_name": "uni_pc",
        "scheduler": "simple",
        "denoise": 1,
    }
    clip = next(n["inputs"] for n in api.values() if n["class_type"] == "CLIPLoader")
    assert clip == {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan", "device": "default"}


def test_a_changed_or_missing_widget_value_is_caught(object_info):
    name = "wan21_t2v_storyboard_minute"
    ui = load(WORKFLOWS / f"{name}.json")
    sampler = next(n for n in ui["nodes"] if n["type"] == "HistEncLongVideoSampler")
    edited = copy.deepcopy(ui)
    next(n for n in edited["nodes"] if n["id"] == sampler["id"])["widgets_values"][7] = (
        21  # steps, after the seed control
    )
    assert ui_to_api(edited, object_info)[str(sampler["id"])]["inputs"]["steps"] == 21
    assert ui_to_api(edited, object_info) != host_prompt(twin(name), object_info)
    values = next(n for n in edited["nodes"] if n["id"] == sampler["id"])["widgets_values"]
    values.pop()  # sampling_order is optional: a file saved before a host had it reads back at the default
    assert ui_to_api(edited, object_info)[str(sampler["id"])]["inputs"]["sampling_order"] == "forward"
    values.pop()  # job_name is required
    with pytest.raises(WorkflowError, match="has 12 widget values; input job_name has none"):
        ui_to_api(edited, object_info)


# --- (b) each twin runs on the host with the tiny fixtures -------------------------------------------


def _drop_dependents(api: dict, removed: set[str]) -> None:
    """Remove the nodes in ``removed`` and every node that links to a removed one."""
    while removed:
        for key in removed:
            api.pop(key, None)
        removed = {
            k
            for k, n in api.items()
            if any(isinstance(v, list) and len(v) == 2 and v[0] not in api for v in n["inputs"].values())
        }


def squeeze(storyboard: str, scale: float) -> str:
    """The storyboard with every time scaled, so a minute's prompts fit the short test video."""
    return "\n".join(f"{format_time(c.t * scale)} {c.prompt}" for c in Storyboard.parse(storyboard).cues)


def substitute(api: dict, input_dir: Path) -> dict:
    """The twin with the tiny fixtures and a few seconds at 64x64.

    Wan 2.2 has no tiny VAE yet, so its twin runs latent-only: the VAE, the start image and the
    decode / save nodes are removed and the sampler's summary is the output.
    """
    api = copy.deepcopy(api)
    wan22 = any(n["class_type"] == "UNETLoader" and "wan2.2_ti2v" in n["inputs"]["unet_name"] for n in api.values())
    for key, node in list(api.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "UNETLoader":
            name = inputs["unet_name"]
            tiny = TINY_HUNYUAN_DIT if "hunyuan" in name else TINY_WAN22_DIT if wan22 else TINY_WAN21_DIT
            tiny = TINY_WAN21_I2V if "_i2v_" in name else TINY_LOW_NOISE if "low_noise" in name else tiny
            inputs.update(unet_name=tiny, weight_dtype="default")
        elif kind == "HistEncLoadFramePackHunyuan":
            inputs.update(checkpoint=TINY_FRAMEPACK_HUNYUAN, weight_dtype="default")
        elif kind in ("CLIPLoader", "DualCLIPLoader"):
            api[key] = {"class_type": "HistEncTestTextEncoder", "inputs": {}}
        elif kind == "VAELoader":
            inputs["vae_name"] = TINY_WAN21_VAE
        elif kind == "LoadImage":
            from PIL import Image

            Image.new("RGB", START_IMAGE, (200, 120, 40)).save(input_dir / "histenc_start.png")
            inputs["image"] = "histenc_start.png"
        elif kind == "HistEncStoryboard":
            inputs["storyboard"] = squeeze(inputs["storyboard"], SECONDS / 60.0)
        elif kind == "HistEncLongVideoSampler":
            inputs.update(seconds=SECONDS, section_frames=SECTION_FRAMES, width=SIZE, height=SIZE, steps=STEPS)
            if inputs.get("switch_step"):  # two experts: half the steps each, as the templates do
                inputs["switch_step"] = STEPS // 2
        elif kind == "ImageScale":
            inputs.update(width=SIZE, height=SIZE)
        elif kind == "CLIPVisionEncode":
            clip_h = "clip_vision_h" in api[inputs["clip_vision"][0]]["inputs"]["clip_name"]
            stand_in = "HistEncTestClipVisionHEncode" if clip_h else "HistEncTestSigLIPEncode"
            api[key] = {"class_type": stand_in, "inputs": {"image": inputs["image"]}}
        elif kind == "HistEncFramePackSchedule":
            inputs.update(
                schedule=inputs["schedule"].rsplit("_g", 1)[0] + f"_g{SECTION_FRAMES}",
                width=SIZE,
                height=SIZE,
                history_seconds=SECONDS,
            )
    for key in [k for k, n in api.items() if n["class_type"] == "CLIPVisionLoader"]:
        del api[key]
    if wan22:
        for node in api.values():
            if node["class_type"] == "HistEncLongVideoSampler":
                node["inputs"].pop("vae", None)
                node["inputs"].pop("start_image", None)
        _drop_dependents(api, {k for k, n in api.items() if n["class_type"] in ("VAELoader", "LoadImage")})
    return api


def expected_summary(name: str, api: dict, schedule) -> str:
    """The sampler's summary for the whole run, every number worked out from the twin's settings."""
    n, frames, video = len(schedule.sections), schedule.latent_frames, format_time(SECONDS)
    text = (
        f"{n} of {n} sections done ({frames} of {frames} latent frames), {video} of {video} of video, "
        f"context up to {CONTEXT_TOKENS[name]} tokens per section."
    )
    kinds = {node["class_type"] for node in api.values()}
    switch = next(n["inputs"].get("switch_step") for n in api.values() if n["class_type"] == "HistEncLongVideoSampler")
    if switch:
        text += f" Experts switched at step {switch} of {STEPS}."
    if "LoadImage" in kinds and "ImageScale" not in kinds:  # the sampler resizes the start image itself
        text += f" Note: start image is {START_IMAGE[0]}x{START_IMAGE[1]}; resized to {SIZE}x{SIZE}."
    return text


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_runs_on_the_host_with_tiny_fixtures(name, host, object_info):
    api = substitute(twin(name), host.base / "input")
    require_registered({n["class_type"] for n in api.values()}, object_info)
    entry = host.run(host_prompt(api, object_info), timeout=300)  # as this host's frontend queues it
    sampler_id, sampler = next((k, n) for k, n in api.items() if n["class_type"] == "HistEncLongVideoSampler")
    schedule = schedule_sections(SECONDS, sampler["inputs"]["fps"], SECTION_FRAMES)
    if "framepack_f1" in json.dumps(api):  # F1: the start image is latent frame 0, a section of its own
        schedule = start_frame_schedule(schedule)
    summary_id = next(
        k for k, n in api.items() if n["class_type"] == "PreviewAny" and n["inputs"]["source"] == [sampler_id, 1]
    )
    assert len(schedule.sections) > 1
    assert entry["outputs"][summary_id]["text"] == [expected_summary(name, api, schedule)]
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    if any(n["class_type"] == "SaveVideo" for n in api.values()):
        assert len(videos) == 1 and frame_count(videos[0]) == schedule.frames
    else:
        assert "wan22" in name and not videos  # latent-only: no tiny Wan 2.2 VAE


# --- (c) the host serves the UI files as templates ----------------------------------------------------


def test_host_lists_the_ui_workflows_as_templates(host):
    templates = host.get("/workflow_templates")
    assert sorted(templates.get(PACK_FOLDER, [])) == NAMES
    for name in NAMES:
        assert host.get(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json") == load(WORKFLOWS / f"{name}.json")


# --- (d) the real frontend loads each UI file and queues exactly its API twin ------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
FRONTEND_PROMPT = """async (workflow) => {
  const app = window.comfyAPI.app.app;
  await app.loadGraphData(workflow, true, true, null,
                          { showMissingModelsDialog: false, showMissingNodesDialog: false });
  const { workflow: saved, output } = await app.graphToPrompt();
  for (const node of Object.values(output)) delete node._meta;
  return { saved, output };
}"""


@pytest.fixture(scope="module")
def frontend(request):
    """ComfyUI's own frontend in headless Chromium, on the test host (skipped without a browser)."""
    if not Path(CHROMIUM).is_file() or importlib.util.find_spec("playwright") is None:
        pytest.skip(f"needs {CHROMIUM} and playwright in the venv (.ci/browser_deps.sh installs both).")
    host = request.getfixturevalue("host")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(host.url)
            page.wait_for_function(FRONTEND_READY, timeout=120_000)
            yield page
        finally:
            browser.close()


@pytest.mark.parametrize("name", NAMES)
def test_the_frontend_loads_the_ui_file_and_queues_its_twin(name, frontend, object_info):
    ui = load(WORKFLOWS / f"{name}.json")
    require_registered({n["type"] for n in ui["nodes"]} - NOTE_TYPES, object_info)
    result = frontend.evaluate(FRONTEND_PROMPT, ui)
    for node in result["output"].values():
        for display in FRONTEND_DISPLAY_INPUTS.get(node["class_type"], ()):
            node["inputs"].pop(display, None)  # 0.3.75's frontend sends PreviewAny's, 0.33's does not
    assert result["output"] == host_prompt(twin(name), object_info)
    # what the frontend saves reads back too (0.33's saves the widgets a dynamic combo adds)
    assert ui_to_api(result["saved"], object_info) == host_prompt(twin(name), object_info)
    assert note_text(result["saved"]) == note_text(ui)


def test_the_frontend_reads_other_save_video_choices_like_the_converter(frontend, object_info):
    """Not only the defaults: a twin saving H.264 in MP4 reaches the host's frontend with the codec in place (0.33
    nests it under the format and adds the codec's own encoding choice at its default)."""
    api = twin("wan21_t2v_storyboard_minute")
    save = next(n for n in api.values() if n["class_type"] == "SaveVideo")
    save["inputs"].update(format="mp4", codec="h264")
    ui = api_to_ui(api, object_info, "note")
    result = frontend.evaluate(FRONTEND_PROMPT, ui)
    for node in result["output"].values():
        for display in FRONTEND_DISPLAY_INPUTS.get(node["class_type"], ()):
            node["inputs"].pop(display, None)
    assert result["output"] == host_prompt(api, object_info) == ui_to_api(result["saved"], object_info)
    queued = next(n["inputs"] for n in result["output"].values() if n["class_type"] == "SaveVideo")
    assert queued.get("format.codec", queued["codec"]) == "h264" and queued["format"] == "mp4"
