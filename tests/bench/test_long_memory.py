"""The long-memory benchmark's machinery at its small setting: gates stop it, chunks resume exactly, the
returned-region scores are right on hand-made frames, and the whole pipeline writes the table for every mode."""

from __future__ import annotations

import json
import math
import re
import types

import pytest
import torch

from bench import long_memory
from bench.context_proof import training
from bench.long_memory_parts import generate, score, stages, verdict
from bench.long_memory_parts.setup import KV, MEMORY, MODES, SMALL, TRAINED, WINDOW, Video, make_data, make_dit
from histenc.weights import load_weights


def _open_gates(mp) -> None:
    mp.setattr(stages, "G1_TOLERANCE_DB", float("inf"))
    mp.setattr(stages, "G2_MIN_GAIN_DB", -float("inf"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted small run with the gates opened: (work folder, report text, return code)."""
    root = tmp_path_factory.mktemp("long_memory")
    with pytest.MonkeyPatch.context() as mp:
        _open_gates(mp)
        out = root / "report.txt"
        rc = long_memory.main(["--setting", "small", "--minutes", "5", "--work", str(root / "w"), "--out", str(out)])
    return root / "w", out.read_text(), rc


def test_a_failed_gate_is_reported_and_stops_everything_after_it(tmp_path):
    """The small base DiT trains 6 steps: G1 must fail, and nothing after it may run."""
    out = tmp_path / "report.txt"
    args = ["--setting", "small", "--minutes", "2", "--work", str(tmp_path / "w"), "--out", str(out)]
    assert long_memory.main(args) == 3
    text = out.read_text()
    assert "STOPPED: g1 failed: the base DiT's one-step x0 without context is" in text
    assert "VERDICT: STOPPED AT A GATE" in text and "Results:" not in text
    for later in ("runs", "eval", "weights", "frames", "g2.json"):
        assert not (tmp_path / "w" / later).exists(), later
    g1 = json.loads((tmp_path / "w" / "g1.json").read_text())
    assert g1["passed"] is False and g1["dit_onestep_psnr"] < g1["floor_psnr"] - stages.G1_TOLERANCE_DB
    assert long_memory.main(args) == 3  # the recorded failure stops it again, without retraining
    assert json.loads((tmp_path / "w" / "progress.json").read_text())["chunks"] == 2


def test_a_failed_second_gate_stops_the_other_modes(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "G1_TOLERANCE_DB", float("inf"))
    monkeypatch.setattr(stages, "G2_MIN_GAIN_DB", 1000.0)
    out = tmp_path / "report.txt"
    rc = long_memory.main(["--setting", "small", "--minutes", "5", "--work", str(tmp_path / "w"), "--out", str(out)])
    assert rc == 3 and "STOPPED: g2 failed: teacher-forced, the sliding window's one-step x0 is" in out.read_text()
    made = sorted(p.name for p in (tmp_path / "w" / "eval").iterdir())
    assert made == [f"no_context__floor_s{s}.json" for s in SMALL.seeds] + ["sliding_window_s0.json"]


def test_the_whole_small_pipeline_writes_the_table_with_every_mode(finished):
    work, text, rc = finished
    assert rc == 0 and "; finished" in text and "ITS NUMBERS RANK NOTHING" in text
    table = text.split("Results:")[1].split("Paired")[0]
    for mode in MODES:
        row = next(line for line in table.splitlines() if line.strip().startswith(mode))
        assert row.count("+-") == len(long_memory.report.COLUMNS), row
    assert "VERDICT: COMPLETE" in text
    assert all(f"{m} vs {WINDOW}: " in text or f"{m} BEATS" in text or f"{m} LOSES TO" in text for m in MEMORY)
    assert "modes not yet evaluated at every seed: none" in text
    plots = [work.parent / f"drift_small_{stages.slug(m)}.png" for m in MODES] + [work.parent / "frames_small.png"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in plots)
    bench = stages.Bench(SMALL, work)
    evals = bench.evals()
    returns = sum(len(v.returns) for v in bench.data.test)
    for mode in MODES:
        assert sorted(evals[mode]) == list(SMALL.seeds)
        one = evals[mode][0]
        assert len(one["psnr_returned"]) == len(one["ssim_returned_tf"]) == returns
        assert len(one["drift_psnr"]) == len(bench.data.test)
    dit = bench.base_dit()  # the saved tiny weights load, and every trained mode's seed-0 weights are there
    assert sum(p.numel() for p in dit.parameters()) > 0
    for mode in TRAINED:
        tensors, meta = load_weights(work / "weights" / f"{stages.slug(mode)}_s0.safetensors")
        assert meta["mode"] == mode and any(k.startswith("lora.") for k in tensors)
    with pytest.raises(SystemExit, match="--minutes is 11.0; use more than 0 and at most 10"):
        long_memory.main(["--minutes", "11"])


def test_a_run_in_many_chunks_gives_the_same_numbers_as_one_run(finished, tmp_path, monkeypatch, capsys):
    """A clock that ticks once per look cuts the run at the same places on any machine."""
    _open_gates(monkeypatch)
    clock = types.SimpleNamespace(now=0.0)

    def monotonic():
        clock.now += 1.0
        return clock.now

    fake = types.SimpleNamespace(monotonic=monotonic)
    monkeypatch.setattr(stages, "time", fake)
    monkeypatch.setattr(training, "time", fake)
    chunks = 0
    while not stages.Bench(SMALL, tmp_path, log=print).run(clock.now + 20):  # 13 stages look once each
        chunks += 1
        assert chunks < 200
    assert chunks >= 5
    log = capsys.readouterr().out
    assert re.search(r"seed 0: step \d+, running", log)  # a mode's training was cut and resumed
    one_run, split = stages.Bench(SMALL, finished[0]).evals(), stages.Bench(SMALL, tmp_path).evals()
    assert json.dumps(split, sort_keys=True) == json.dumps(one_run, sort_keys=True)
    for mode in TRAINED:
        name = f"weights/{stages.slug(mode)}_s0.safetensors"
        a, b = load_weights(finished[0] / name)[0], load_weights(tmp_path / name)[0]
        assert all(torch.equal(a[k], b[k]) for k in a)


def _hand_made() -> Video:
    """8x8 frames, background 0.2, a 2x2 red square at rows/cols 3-4 in frames 1-2, then again in 4-5."""
    pixels = torch.full((7, 8, 8, 3), 0.2)
    for t in (1, 2, 4, 5):
        pixels[t, 3:5, 3:5] = torch.tensor([0.9, 0.1, 0.1])
    return Video(torch.zeros(1), pixels, torch.zeros(7, 8), torch.zeros(7), 3, [(0, 4, 6)])


def test_the_returned_region_is_scored_right_on_a_hand_made_case():
    video = _hand_made()
    assert score.region(video.pixels, 4, 6) == (1, 7, 1, 7)  # the square, one pixel wider, grown to 6 a side
    same = score.score_video(video.pixels, video)
    assert same["psnr_returned"] == [math.inf] and same["ssim_returned"][0] == pytest.approx(1.0)
    assert same["psnr_frame"] == [math.inf] and same["drift_colour"] == [0.0]
    blanked = video.pixels.clone()
    blanked[4:6, 3:5, 3:5] = 0.2  # the returning square is not drawn
    got = score.score_video(blanked, video)
    # 4 of the 36 region pixels per frame are off by (0.7, 0.1, 0.1): MSE = 4/36 * (0.49 + 0.01 + 0.01) / 3
    assert got["psnr_returned"][0] == pytest.approx(-10 * math.log10(4 / 36 * 0.51 / 3), abs=1e-4)
    assert got["ssim_returned"][0] < 0.9 and got["psnr_frame"][0] < 40
    darker = video.pixels.clone()
    darker[6] *= 0.5  # the last generated frame darker: FramePack's drift contrast sees it
    assert score.score_video(darker, video)["drift_colour"][0] > 0.05
    with pytest.raises(ValueError, match="show nothing but the background"):
        score.region(video.pixels, 3, 4)


def test_the_kv_cache_picks_clips_by_cue_and_they_change_the_prediction():
    torch.manual_seed(0)
    data = make_data(SMALL)
    video, dit = data.test[0], make_dit(SMALL).requires_grad_(False)
    runner = generate.KVRunner(dit, SMALL)
    for s in range(video.prefix):
        runner.before(video.latents[:, :, :s], s, video.cues[s].view(1, 1, -1))
        runner.after(s, video.latents[:, :, s : s + 1], video.cues[s].view(1, 1, -1))
    s = video.returns[0][1]
    text = video.cues[s].view(1, 1, -1)
    runner.before(video.latents[:, :, :s], s, text)
    same_cue = [t for t in range(video.prefix) if torch.equal(video.cues[t], video.cues[s])]
    assert [c.start for c in runner.selection] == same_cue[: SMALL.kv_clips]  # the earliest clips of that object
    x = torch.randn(1, 16, 1, SMALL.size // 2, SMALL.size // 2)
    with_cache = runner.velocity(x, torch.tensor([500.0]), text)
    runner.view = None
    assert not torch.allclose(with_cache, runner.velocity(x, torch.tensor([500.0]), text))
    assert runner.cache.stats.recorded == video.prefix


def _evals(levels: dict[str, float], sd: float, seeds=(0, 1, 2)) -> dict:
    out = {}
    for name, level in levels.items():
        out[name] = {}
        for i, s in enumerate(seeds):
            v = level + sd * (i - 1)
            out[name][s] = {"psnr_returned": [v, v], "ssim_returned": [v / 100, v / 100]}
    return out


def test_the_verdict_needs_two_seed_sds_in_both_metrics_and_every_seed():
    levels = {WINDOW: 20.0, MEMORY[0]: 22.0, MEMORY[1]: 18.0, MEMORY[2]: 20.1}
    state, lines = verdict.verdict(_evals(levels, sd=0.2), (0, 1, 2))
    assert state == "COMPLETE"
    assert lines == [
        f"{MEMORY[0]} BEATS {WINDOW}",
        f"{MEMORY[1]} LOSES TO {WINDOW}",
        f"{MEMORY[2]} vs {WINDOW}: UNRESOLVED",
    ]
    assert verdict.verdict(_evals(levels, sd=1.5), (0, 1, 2))[1][0] == f"{MEMORY[0]} vs {WINDOW}: UNRESOLVED"
    partial = _evals(levels, 0.2)
    del partial[KV][2]
    state, lines = verdict.verdict(partial, (0, 1, 2))
    assert state == "INCOMPLETE" and lines[-1] == f"{KV} vs {WINDOW}: NOT MEASURED"
