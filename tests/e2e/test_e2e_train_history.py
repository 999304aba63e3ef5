"""Pretrain History Encoder through the real server, as a user queues it: ComfyUI runs every node under
torch.inference_mode, so New History Encoder's encoder holds inference tensors; the node trains a copy of it on a
tiny cached dataset, writes the encoder and the LoRA, reports a finite loss and removes its resumable state."""

import csv
import math
import re

from histenc.train.procedural import generate, write_image_sequence

NAME = "e2e_pretrain"


def graph(folder: str) -> dict:
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "histenc_tiny_wan21_t2v.safetensors", "weight_dtype": "default"},
        },
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "histenc_tiny_wan21_vae.safetensors"}},
        "3": {"class_type": "HistEncTestTextEncoder", "inputs": {}},
        "4": {
            "class_type": "HistEncVideoDataset",
            "inputs": {
                "folder": folder,
                "vae": ["2", 0],
                "clip": ["3", 0],
                "width": 64,
                "height": 64,
                "max_frames": 17,
                "frame_stride": 1,
                "default_caption": "",
                "cache_folder": "",
            },
        },
        "5": {
            "class_type": "HistEncInitHistoryEncoder",
            "inputs": {"model": ["1", 0], "rate": "4x4x2", "variant": "full", "seed": 0},
        },
        "6": {
            "class_type": "HistEncPretrainHistoryEncoder",
            "inputs": {
                "model": ["1", 0],
                "encoder": ["5", 0],
                "dataset": ["4", 0],
                "steps": 3,
                "learning_rate": 1e-3,
                "lora_rank": 4,
                "seed": 0,
                "output_name": NAME,
                "checkpoint_every": 10,
                "gradient_checkpointing": False,
                "history_frames": 4,
                "query_frames": 2,
            },
        },
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 3]}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    }


def test_new_history_encoder_then_pretrain_runs_from_the_server(host):
    write_image_sequence(generate(0, frames=20, size=64, objects=1), host.base / "input" / "e2e_train" / "clip")
    entry = host.run(graph("e2e_train"), timeout=600)

    summary = entry["outputs"]["6"]["text"][0]
    loss = float(re.match(r"trained 3 steps, last loss (\S+)\n", summary).group(1))
    assert math.isfinite(loss), summary
    rows = list(csv.DictReader(open(host.base / "output" / "histenc_training" / NAME / "loss.csv")))
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    encoder = host.base / "models" / "history_encoders" / f"{NAME}.safetensors"
    assert entry["outputs"]["7"]["text"] == [str(encoder)] and encoder.is_file()
    assert (host.base / "models" / "loras" / f"{NAME}.safetensors").is_file()
    assert "training checkpoint removed (" in summary
    assert not (host.base / "output" / "histenc_training" / NAME / "checkpoint.safetensors").exists()
    report = entry["outputs"]["8"]["text"][0]
    assert report.startswith("1 clip(s) encoded") and f"{host.base / 'models' / 'histenc_datasets'}" in report
