"""Files written before the sub-package move still load with the new code, with the same values.

tests/data/before_house was made by its make.py with the flat layout of 6539dcb (see its README):
a history encoder, FramePack projections, a history codebook, a LoRA, a video extension and a long-video
job stopped after two of three sections. Each loads here through the new modules, and the tensors
match the checksums taken when they were saved; outputs on stored inputs match the old code's.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from histenc.context import SectionGrid
from histenc.encoder.io import load_encoder
from histenc.extension import load_extension
from histenc.framepack.codebook import DiscreteHistory, HistoryCodebook
from histenc.framepack.packing import FramePackContext
from histenc.longvideo.loop import SectionLoop, section_seed
from histenc.longvideo.resume import JobState
from histenc.longvideo.storyboard import Storyboard, schedule_sections
from histenc.lora import load_lora
from histenc.train.toy_dit import WanModel
from histenc.weights import read_metadata

DATA = Path(__file__).resolve().parents[1] / "data" / "before_house"
_spec = importlib.util.spec_from_file_location("before_house_make", DATA / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)  # torch-only helpers; make.make() itself needs the old checkout

RECORD = json.loads((DATA / "checksums.json").read_text())
EXPECTED = load_file(str(DATA / "expected.safetensors"))


def same_tensors(found: dict[str, torch.Tensor], file: str) -> None:
    assert make.checksums(found) == RECORD["tensors"][file], f"{file} loads with other values than were saved"


def test_the_data_is_what_the_old_code_wrote():
    """A regenerated (or edited) file would make the tests below compare the new code with itself."""
    files = {
        str(p.relative_to(DATA)): make.file_sha(p)
        for p in DATA.rglob("*")
        if p.is_file() and p.suffix in (".safetensors", ".json") and p.name != "checksums.json"
    }
    assert files == RECORD["files"]
    assert "6539dcb" in RECORD["made_by"]


def test_history_encoder_file():
    dit = make.Patchifier()
    encoder = load_encoder(DATA / "history_encoder.safetensors", dit=dit, family=make.FAMILY)
    same_tensors(encoder.state_dict(), "history_encoder.safetensors")
    assert encoder.config.tokens_for(6, 8, 8) == EXPECTED["encoder.tokens"].shape[1] == 3 * 2 * 2
    with torch.no_grad():
        torch.testing.assert_close(encoder(EXPECTED["input.history"]), EXPECTED["encoder.tokens"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="made for family 'wan2.1' but this needs family 'hunyuan'"):
        load_encoder(DATA / "history_encoder.safetensors", family="hunyuan")


@pytest.mark.parametrize("discrete", [False, True], ids=["projections", "codebook"])
def test_framepack_projections_and_codebook_files(discrete):
    dit, grid = make.Patchifier(), SectionGrid(*make.GRID)
    pack = FramePackContext.load(DATA / "framepack_projections.safetensors", dit=dit)
    same_tensors(pack.state_dict(), "framepack_projections.safetensors")
    assert str(pack.schedule) == make.SCHEDULE
    book = HistoryCodebook.load(DATA / "history_codebook.safetensors", channels=make.CHANNELS)
    same_tensors({"entries": book.entries}, "history_codebook.safetensors")
    history = EXPECTED["input.history"]
    assert torch.equal(book.quantize(history), EXPECTED["codebook.indices"])
    name, source = ("discrete", DiscreteHistory(pack, book)) if discrete else ("framepack", pack)
    with torch.no_grad():
        ctx = source.context(history, grid, dit)
    assert torch.equal(ctx.positions, EXPECTED[f"{name}.positions"])
    assert torch.equal(ctx.extent_or_ones(), EXPECTED[f"{name}.extent"])
    torch.testing.assert_close(ctx.tokens, EXPECTED[f"{name}.tokens"], rtol=1e-5, atol=1e-6)


def test_lora_file():
    torch.manual_seed(0)
    dit = WanModel(**make.TOY_DIT)
    lora = load_lora(DATA / "lora.safetensors", dit, attach=False)
    same_tensors(lora.comfy_state_dict(), "lora.safetensors")
    assert (lora.rank, lora.alpha, lora.blocks) == (make.LORA["rank"], make.LORA["alpha"], (0, 1))
    assert read_metadata(DATA / "lora.safetensors")["training"] == {"steps": 3, "lr": 1e-4}
    deltas = {k.removeprefix("lora.delta."): v for k, v in EXPECTED.items() if k.startswith("lora.delta.")}
    assert sorted(deltas) == sorted(lora.names)
    for name, layer in zip(lora.names, lora.layers):
        torch.testing.assert_close(layer.delta_weight().detach(), deltas[name], rtol=1e-6, atol=1e-7)


def test_video_extension_file():
    projection = load_extension(DATA / "video_extension.safetensors")  # sizes from the file
    same_tensors(projection.state_dict(), "video_extension.safetensors")
    assert tuple(projection.proj.kernel_size) == make.PATCH and projection.proj.out_channels == make.WIDTH
    with torch.no_grad():
        out = projection(EXPECTED["input.condition"], EXPECTED["input.mask"])
    torch.testing.assert_close(out, EXPECTED["extension.out"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="width"):
        load_extension(DATA / "video_extension.safetensors", width=2 * make.WIDTH)


def job_sections():
    board = Storyboard.parse(make.JOB_STORYBOARD)
    return board.assign(schedule_sections(make.JOB_SECONDS, make.JOB_FPS, make.JOB_SECTION_FRAMES))


def test_job_folder_opens_with_its_finished_sections_done(tmp_path):
    folder = shutil.copytree(DATA / "job", tmp_path / "job")
    sections = job_sections()
    settings = {
        **make.JOB_SETTINGS,
        "seed": make.JOB_SEED,
        "steps": 1,
        "sampling order": [[i] for i in range(len(sections))],
        "history limit": None,
    }
    described = [
        {"seed": section_seed(make.JOB_SEED, i), "prompt": p.prompt, "latent_frames": p.section.latent_frames}
        for i, p in enumerate(sections)
    ]
    state = JobState.open(folder, settings, described)
    assert [state.is_done(i) for i in range(len(sections))] == [True] * make.JOB_DONE + [False]
    for i in range(make.JOB_DONE):
        assert torch.equal(state.load(i), EXPECTED[f"job.section.{i}"])
    with pytest.raises(ValueError, match="job 'job' was started with cfg = 1.0 but is queued with 2.0"):
        JobState.open(folder, {**settings, "cfg": 2.0}, described)


def test_job_folder_resumes_where_the_old_code_stopped(tmp_path):
    folder = shutil.copytree(DATA / "job", tmp_path / "job")
    made = []

    def sample(index, task, history, seed):
        made.append(index)
        return make.sample_section(index, task, history, seed)

    result = SectionLoop(job_sections(), sample, seed=make.JOB_SEED, settings=make.JOB_SETTINGS, folder=folder).run()
    assert made == [2] and result.resumed_sections == make.JOB_DONE
    assert torch.equal(result.latents, EXPECTED["job.video"])  # the new section continues the old ones
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["status"] for s in manifest["sections"]] == ["done"] * 3
