"""The video extension through the real host: train it with the node, then generate with it and the KV cache."""

import json
from pathlib import Path

from scripts.host import output_files
from tests.helpers import frame_count

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "wan21_t2v_storyboard_window.json"
NAME = "e2e_extension"


def training_prompt() -> dict:
    """Stage one on a 9-latent-frame LATENT (the stock empty video latent) for 3 steps."""
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "histenc_tiny_wan21_t2v.safetensors", "weight_dtype": "default"},
        },
        "2": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 32, "height": 32, "length": 33, "batch_size": 1},
        },
        "3": {"class_type": "HistEncTestConditioning", "inputs": {"text": "a lighthouse at dawn"}},
        "4": {
            "class_type": "HistEncFinetuneVideoExtension",
            "inputs": {
                "model": ["1", 0],
                "stage": "extension",
                "extension": "new (zero-initialised)",
                "latent": ["2", 0],
                "positive": ["3", 0],
                "steps": 3,
                "learning_rate": 1e-3,
                "lora_rank": 4,
                "lora_targets": "auto",
                "lora_blocks": "auto",
                "clip_frames": 4,
                "max_given": 1,
                "section_frames": 3,
                "given_frames": 1,
                "max_clips": 2,
                "seed": 0,
                "output_name": NAME,
                "checkpoint_every": 10,
                "gradient_checkpointing": False,
            },
        },
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}},
    }


def generation_prompt() -> dict:
    """The shipped window workflow at 2 s, with the trained LoRA, the extension and a KV cache chained on."""
    prompt = json.loads(WORKFLOW.read_text())
    prompt["12"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["1", 0], "lora_name": f"{NAME}.safetensors", "strength_model": 1.0},
    }
    prompt["2"]["inputs"]["model"] = ["12", 0]
    prompt["13"] = {
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
    prompt["14"] = {
        "class_type": "HistEncVideoExtension",
        "inputs": {"extension_name": f"{NAME}.safetensors", "add_to": ["13", 0]},
    }
    sampler = prompt["7"]["inputs"]
    sampler.update(seconds=2.0, section_frames=3, job_name=NAME, context=["14", 0])
    prompt["4"]["inputs"]["storyboard"] = "0:00 a lighthouse at dawn\n0:01 a storm rolls in"
    return prompt


def test_train_then_generate_with_the_extension(host):
    entry = host.run(training_prompt(), timeout=600)
    text = json.dumps(entry["outputs"]["5"])
    assert f"video_extensions/{NAME}.safetensors" in text
    assert (host.base / "models" / "video_extensions" / f"{NAME}.safetensors").is_file()
    assert (host.base / "models" / "loras" / f"{NAME}.safetensors").is_file()

    entry = host.run(generation_prompt(), timeout=600)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1 and frame_count(videos[0]) == 32  # 2 s at 16 fps
    assert "3 of 3 sections done" in json.dumps(entry["outputs"]["11"])
