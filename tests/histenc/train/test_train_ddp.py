"""``python -m histenc.train`` under torchrun: 2 CPU ranks (gloo) stay in sync while seeing different data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[3]


def tiny_config(out: Path, objective: str = "frame_query", steps: int = 3) -> dict:
    return {
        "objective": objective,
        "out_dir": str(out),
        "steps": steps,
        "lr": 1e-3,
        "checkpoint_every": 2,
        "model": {"kind": "toy", "dim": 32, "ffn_dim": 64, "num_heads": 1, "num_layers": 1, "text_dim": 8},
        "data": {"kind": "procedural", "videos": 2, "frames": 48, "size": 16},
        "context": {"kind": "encoder", "rate": "4x4x2", "hidden": [8, 16, 16, 16], "heads": 2},
        "lora": {"rank": 2},
        "frame_query": {"history_frames": 8, "query_frames": 2},
        "autoregressive": {"section_frames": 2, "max_history": 8},
    }


def run_train(config: dict, tmp_path: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    path = tmp_path / f"{config['objective']}_{nproc}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "histenc.train", str(path)]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "histenc.train",
            str(path),
        ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def losses(folder: Path) -> list[float]:
    with open(folder / "loss.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    proc = run_train(tiny_config(out), tmp_path, nproc=2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for name in ("history_encoder.safetensors", "lora.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(out / "rank1" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs between ranks"
    # each rank trained on its own batches (different losses), yet the weights agree: DDP averaged the gradients
    assert losses(out) != losses(out / "rank1")
    # and they did train: the zero-initialised LoRA up-projections and HR output moved
    lora = load_file(str(out / "lora.safetensors"))
    assert any(lora[k].abs().sum() > 0 for k in lora if k.endswith("lora_up.weight"))
    enc = load_file(str(out / "history_encoder.safetensors"))
    assert enc["hr_out.weight"].abs().sum() > 0


def test_single_process_autoregressive_run_resumes(tmp_path):
    out = tmp_path / "ar"
    first = run_train(tiny_config(out, "autoregressive", steps=2), tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    longer = run_train(tiny_config(out, "autoregressive", steps=3), tmp_path)
    assert longer.returncode == 0, longer.stderr[-4000:]
    assert "resumed from 2" in longer.stdout
    assert len(losses(out)) == 3


def test_bad_config_is_one_sentence(tmp_path):
    config = tiny_config(tmp_path / "bad")
    config["lr"] = 0
    proc = run_train(config, tmp_path)
    assert proc.returncode == 1
    assert "learning rate is 0" in proc.stderr and "Traceback" not in proc.stderr


def test_extension_objective_runs_both_stages_from_the_cli(tmp_path):
    config = tiny_config(tmp_path / "ext", "extension", steps=2)
    config["model"]["num_layers"] = 2
    config["extension"] = {"clip_frames": 4, "max_given": 1}
    proc = run_train(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    projection = load_file(str(tmp_path / "ext" / "extension.safetensors"))
    assert projection["proj.weight"].shape == (32, 17, 1, 2, 2) and projection["proj.weight"].abs().sum() > 0
    assert any(".cross_attn." in k for k in load_file(str(tmp_path / "ext" / "lora.safetensors")))

    causal = tiny_config(tmp_path / "causal", "extension", steps=2)
    causal["model"]["num_layers"] = 2
    causal["extension"] = {
        "stage": "causal",
        "section_frames": 2,
        "given_frames": 1,
        "weights": str(tmp_path / "ext" / "extension.safetensors"),
    }
    proc = run_train(causal, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    keys = load_file(str(tmp_path / "causal" / "lora.safetensors")).keys()
    assert {k.split(".")[2] for k in keys} == {"1"}  # the latter half of 2 blocks
    assert {".".join(k.split(".")[3:5]) for k in keys} == {"self_attn.k", "self_attn.v"}
    assert not (tmp_path / "causal" / "extension.safetensors").exists()  # the causal stage keeps it fixed
