"""Every context mode, Block Swap and the LoRA trainer on the real-width checkpoints, through the real server.

One ComfyUI server for the module, with the real-width files (scripts/fixtures_real.py) in its models folder and
ComfyUI-GGUF installed as a custom node. Per file, one prompt samples three sections at 32x32 with a sliding window,
a history encoder and a FramePack context chained (Wan: the clip KV cache and a video extension too) through Block
Swap, saves the encoder and the packing projections, and trains a LoRA for two steps. Every section's latents must
be finite, the trained LoRA finite and in the stock loader's keys, and what the pack read from the DiT (the patch
embedding that starts the encoder and the FramePack projections) must equal the file's dequantised, scaled values.
Files load one at a time: the server unloads every model and clears its caches before the next file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from histenc.weights import read_metadata
from scripts import fixtures_real as fr

pytestmark = [pytest.mark.slow, pytest.mark.real_widths]  # CI: on 0.3.75 only (.ci/run)

SIZE, SECONDS, FPS, SECTION = 32, 4.0, 8.0, 3  # 32 video frames -> 9 latent frames in 3 sections


@dataclass(frozen=True)
class Case:
    """A file as users load it: the stock loader (or ComfyUI-GGUF's) and the weight dtype picked in it."""

    name: str
    loader: str = "UNETLoader"
    weight_dtype: str = "default"

    @property
    def fixture(self) -> fr.Fixture:
        return fr.FIXTURES[self.name]

    @property
    def wan(self) -> bool:
        return self.fixture.family == "wan"

    @property
    def job(self) -> str:
        return "real_" + Path(self.name).stem.replace(".", "_")


CASES = [
    Case("wan21_t2v_1.3b_bf16.safetensors"),
    Case("wan21_t2v_14b_fp8_e4m3fn.safetensors", weight_dtype="fp8_e4m3fn"),
    Case("wan21_t2v_14b_fp8_scaled.safetensors"),
    Case("wan22_ti2v_5b_bf16.safetensors"),
    Case("hunyuan_video_t2v_13b_bf16.safetensors", weight_dtype="fp8_e4m3fn"),
    Case("wan21_t2v_1.3b_Q8_0.gguf", loader="UnetLoaderGGUF"),
    Case("wan21_t2v_1.3b_Q4_K.gguf", loader="UnetLoaderGGUF"),
]
LOAD_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn}


@pytest.fixture(scope="module")
def real_host(tmp_path_factory):
    """A server whose diffusion_models folder holds the real-width files, with ComfyUI-GGUF installed."""
    from scripts import gguf_node
    from scripts.host import Server, make_base

    base = make_base(tmp_path_factory.mktemp("real_widths"))
    gguf_node.link_into(base)
    for case in CASES:
        (base / "models" / "diffusion_models" / case.name).symlink_to(fr.ensure(case.name))
    server = Server(base).start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------ inputs
def write_extension(base: Path, case: Case) -> str:
    """A small random video-extension projection for this width, so the extension changes what the DiT sees."""
    from histenc.extension import ExtensionProjection, save_extension

    fx = case.fixture
    projection = ExtensionProjection(fx.latent_channels, fx.width)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in projection.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
    name = f"{case.job}.safetensors"
    save_extension(base / "models" / "video_extensions" / name, projection, "wan")
    return name


def write_dataset(base: Path, case: Case) -> str:
    """A one-clip training cache in the server's input folder, latents in the model's channels and VAE scale."""
    from histenc.train.dataset import build_cache
    from histenc.train.procedural import generate, write_image_sequence

    fx = case.fixture
    spatial = 16 if fx.latent_channels == 48 else 8
    source = base / "input" / f"{case.job}_clips"
    write_image_sequence(generate(0, frames=20, size=SIZE, objects=1), source / "clip")
    g = torch.Generator().manual_seed(1)

    def encode_video(frames):
        t = (frames.shape[0] - 1) // 4 + 1
        return torch.randn(1, fx.latent_channels, t, SIZE // spatial, SIZE // spatial, generator=g)

    def encode_text(prompt):  # text tokens and a pooled vector (HunyuanVideo's CLIP-L: 768 wide)
        return torch.randn(1, 8, 4096, generator=g) * 0.5, torch.randn(1, 768, generator=g) * 0.5

    cache = base / "input" / f"{case.job}_cache"
    build_cache(source, cache, encode_video, encode_text, SIZE, SIZE, max_frames=5)
    return str(cache)


def prompt_for(case: Case, base: Path) -> dict:
    """Load, Block Swap, every context mode chained, the long-video sampler, the weight files, Train LoRA."""
    if case.loader == "UnetLoaderGGUF":
        loader = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": case.name}}
    else:
        loader = {"class_type": "UNETLoader", "inputs": {"unet_name": case.name, "weight_dtype": case.weight_dtype}}
    p = {
        "1": loader,
        "2": {
            "class_type": "HistEncBlockSwap",
            "inputs": {"model": ["1", 0], "blocks_to_swap": "1", "prefetch": False},
        },
        "3": {"class_type": "HistEncTestTextEncoder", "inputs": {}},
        "4": {
            "class_type": "HistEncStoryboard",
            "inputs": {
                "clip": ["3", 0],
                "storyboard": "0:00 a harbour at dawn\n0:02 fog rolls in",
                "global_prompt": "",
            },
        },
        "5": {"class_type": "HistEncTestConditioning", "inputs": {"text": "low quality"}},
        "6": {"class_type": "HistEncSlidingWindow", "inputs": {"frames": 1}},
        "7": {
            "class_type": "HistEncInitHistoryEncoder",
            "inputs": {"model": ["2", 0], "rate": "2x2x2", "variant": "full", "seed": 0},
        },
        "8": {
            "class_type": "HistEncHistoryEncoderContext",
            "inputs": {"encoder": ["7", 0], "window_frames": 1, "add_to": ["6", 0]},
        },
        "9": {
            "class_type": "HistEncFramePackSchedule",
            "inputs": {
                "schedule": f"td_f4k4f2k2f1k1_g{SECTION}",
                "width": SIZE,
                "height": SIZE,
                "history_seconds": SECONDS,
                "fps": FPS,
                "spatial_compression": 16 if case.fixture.latent_channels == 48 else 8,
            },
        },
        "10": {
            "class_type": "HistEncFramePackContext",
            "inputs": {
                "model": ["2", 0],
                "schedule": ["9", 0],
                "ordering": "time",
                "lambda_time": 1.0,
                "fps": FPS,
                "projections": "none",
                "add_to": ["8", 0],
            },
        },
        "11": {
            "class_type": "HistEncLongVideoSampler",
            "inputs": {
                "model": ["2", 0],
                "storyboard": ["4", 0],
                "negative": ["5", 0],
                "seconds": SECONDS,
                "fps": FPS,
                "section_frames": SECTION,
                "width": SIZE,
                "height": SIZE,
                "seed": 3,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "continuation_frames": 1,
                "job_name": case.job,
                "keep_job_state": True,  # the sections are read below
                "context": ["10", 0],
            },
        },
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["11", 1]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
        "14": {
            "class_type": "HistEncSaveHistoryEncoder",
            "inputs": {"encoder": ["7", 0], "model": ["2", 0], "filename": case.job},
        },
        "15": {"class_type": "HistEncSaveFramePackProjections", "inputs": {"context": ["10", 0], "filename": case.job}},
        "16": {
            "class_type": "HistEncTrainLoRA",
            "inputs": {
                "model": ["2", 0],
                "dataset": write_dataset(base, case),
                "steps": 2,
                "rank": 2,
                "alpha": 2.0,
                "learning_rate": 1e-3,
                "blocks": "all",
                "targets": "all",
                "seed": 0,
                "output_name": case.job,
                "checkpoint_every": 10,
                "timestep_shift": 3.0,
                "gradient_checkpointing": False,
            },
        },
        "17": {"class_type": "PreviewAny", "inputs": {"source": ["16", 2]}},
    }
    if case.wan:  # the clip KV cache and the video extension are Wan's (HunyuanVideo refuses them in one sentence)
        p["18"] = {
            "class_type": "HistEncClipKVCache",
            "inputs": {
                "max_clips": 2,
                "blocks": "all",
                "similarity": "text conditioning",
                "tolerance": 0.001,
                "keep_kv_on": "model device",
                "add_to": ["10", 0],
            },
        }
        p["19"] = {
            "class_type": "HistEncVideoExtension",
            "inputs": {"extension_name": write_extension(base, case), "add_to": ["18", 0]},
        }
        p["11"]["inputs"]["context"] = ["19", 0]
    return p


# ------------------------------------------------------------------------------------------ references
def reference_patch(case: Case, path: Path, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The file's patch-embedding weight (latent channels) and bias as float32, dequantised and scaled, rounded to
    the dtype the loader keeps them in: Wan builds its patch embedding in float32 whatever the weight dtype
    (comfy.ldm.wan.model), HunyuanVideo's ``img_in`` takes the one picked in the loader."""
    if path.suffix == ".gguf":
        import gguf

        reader = gguf.GGUFReader(str(path))
        out = []
        for part in ("weight", "bias"):
            t = next(t for t in reader.tensors if t.name == f"patch_embedding.{part}")
            shape = tuple(int(v) for v in reversed(t.shape))
            out.append(torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).copy()))
        weight, bias = out
    else:
        from safetensors import safe_open

        prefix = "patch_embedding." if case.wan else "img_in.proj."
        with safe_open(str(path), "pt") as f:
            weight, bias = f.get_tensor(prefix + "weight"), f.get_tensor(prefix + "bias")
            if prefix + "scale_weight" in f.keys():
                weight = weight.float() * f.get_tensor(prefix + "scale_weight").float()
        if dtype is not None and not case.wan:
            weight, bias = weight.to(dtype), bias.to(dtype)
    return weight.float()[:, : case.fixture.latent_channels], bias.float()


def free(server) -> None:
    """Unload every model and clear the server's caches after the running prompt (POST /free answers no body)."""
    import urllib.request

    body = json.dumps({"unload_models": True, "free_memory": True}).encode()
    request = urllib.request.Request(server.url + "/free", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30):
        pass


def sections(base: Path, job: str) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    folder = base / "output" / "histenc_jobs" / job
    return [load_file(str(p))["latents"] for p in sorted(folder.glob("section_*.safetensors"))]


# ------------------------------------------------------------------------------------------ the runs
@pytest.mark.parametrize("case", CASES, ids=[c.job for c in CASES])
def test_every_mode_block_swap_and_lora_training_run_on_the_real_widths(real_host, case):
    from safetensors import safe_open

    base = real_host.base
    try:
        entry = real_host.run(prompt_for(case, base), timeout=900)
    finally:
        free(real_host)
    out = entry["outputs"]
    assert out["12"]["text"][0].startswith("3 of 3 sections done (9 of 9 latent frames)"), out["12"]
    assert "block swap (1 blocks) is off" in out["13"]["text"][0]  # the CPU has no VRAM to save: passed through

    latents = sections(base, case.job)
    assert len(latents) == 3
    assert all(torch.isfinite(x).all() and x.std() > 0 for x in latents)

    # what the pack read from the DiT: the file's dequantised values, never raw quantised storage
    ref_w, ref_b = reference_patch(case, fr.FOLDER / case.name, LOAD_DTYPES[case.weight_dtype])
    with safe_open(str(base / "models" / "history_encoders" / f"{case.job}.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("lr_embed.weight"), ref_w), "history encoder patch weights"
        assert torch.equal(f.get_tensor("lr_embed.bias"), ref_b)
    with safe_open(str(base / "models" / "framepack_projections" / f"{case.job}.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("projections.k1h2w2.weight"), ref_w), "FramePack k1 projection"
        assert torch.equal(f.get_tensor("projections.k1h2w2.bias"), ref_b)

    # the trained LoRA: finite, in the keys ComfyUI's loader maps for this family, two steps recorded
    lora = base / "models" / "loras" / f"{case.job}.safetensors"
    assert out["17"]["text"] == [str(lora)]
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
        assert keys and all(torch.isfinite(f.get_tensor(k)).all() for k in keys)
        ups = [f.get_tensor(k) for k in keys if k.endswith("lora_up.weight")]
    assert ups and any(u.abs().max() > 0 for u in ups)  # up starts at zero: gradients reached the LoRA
    layer = "diffusion_model.blocks.0.self_attn.q" if case.wan else "diffusion_model.double_blocks.0.img_attn_qkv"
    assert f"{layer}.lora_down.weight" in keys
    assert "lora key not loaded" not in real_host.log.read_text()  # the node applied it with the stock loader
    training = read_metadata(lora)["training"]
    assert training["steps"] == 2 and math.isfinite(training["final_loss"])
