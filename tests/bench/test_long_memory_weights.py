"""The trained tiny weights the long-memory benchmark keeps (bench/results/long_memory/full: the base DiT and each
mode's seed-0 LoRA and source) load into fresh models and give back the committed numbers, and a context trained
on them beats none: weights the project's own script made, that later work and tests can build on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.long_memory_parts.generate import ContextRunner, run_video
from bench.long_memory_parts.score import score_video
from bench.long_memory_parts.setup import FULL, NO_CONTEXT, TRAINED, WINDOW
from bench.long_memory_parts.stages import WEIGHTS_FORMAT, Bench, slug
from histenc.weights import load_weights

WORK = Path(__file__).resolve().parents[2] / "bench" / "results" / "long_memory" / FULL.name
KEPT = [m for m in TRAINED if (WORK / "weights" / f"{slug(m)}_s0.safetensors").is_file()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The full setting's data and the committed base DiT (the bench reads the kept folder, writes nothing)."""
    assert (WORK / "base_dit.safetensors").is_file(), "the long-memory benchmark's base DiT is not committed"
    return Bench(FULL, WORK, log=lambda *_: None)


def committed(mode: str, key: str) -> list[float]:
    return json.loads((WORK / "eval" / f"{slug(mode)}_s0.json").read_text())[key]


def teacher_forced(bench: Bench, runner, index: int = 0) -> dict:
    video = bench.data.test[index]
    made = bench.data.codec.decode(run_video(runner, bench.cfg, video, index, 0, teacher_forced=True))
    return score_video(made, video, with_drift=False)


def trained_runner(bench: Bench, mode: str):
    trainer = bench.trainer(mode, 0)
    tensors, meta = load_weights(WORK / "weights" / f"{slug(mode)}_s0.safetensors", {"format": WEIGHTS_FORMAT})
    params = dict(trainer.named_parameters())
    assert set(tensors) == set(params) and meta["mode"] == mode
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    return bench.runner(trainer.eval(), mode)


def test_the_base_dit_alone_gives_back_its_committed_floor(bench):
    got = teacher_forced(bench, ContextRunner(bench.base_dit(), None, bench.cfg))
    assert got["psnr_frame"][0] == pytest.approx(committed(NO_CONTEXT, "psnr_frame_tf")[0], abs=1e-4)


@pytest.mark.parametrize("mode", KEPT)
def test_each_kept_mode_gives_back_its_committed_numbers(bench, mode):
    got = teacher_forced(bench, trained_runner(bench, mode))
    assert got["psnr_frame"][0] == pytest.approx(committed(mode, "psnr_frame_tf")[0], abs=1e-4)
    visits = len(got["psnr_returned"])
    assert got["psnr_returned"] == pytest.approx(committed(mode, "psnr_returned_tf")[:visits], abs=1e-4)


def test_a_trained_window_sees_what_no_context_cannot(bench):
    assert WINDOW in KEPT, "the sliding window's trained weights are not committed"
    window = teacher_forced(bench, trained_runner(bench, WINDOW))["psnr_frame"][0]
    floor = teacher_forced(bench, ContextRunner(bench.base_dit(), None, bench.cfg))["psnr_frame"][0]
    assert window > floor + 1.0, (window, floor)
