"""The training facade: LoRA attached only while training, cancel and resume, the files and their records."""

import pytest
import torch

from histenc.dit.wan import WanPatchifier
from histenc.encoder.io import load_encoder
from histenc.encoder.model import HistoryEncoder
from histenc.extension import ExtensionProjection
from histenc.train.extension import ExtensionSettings
from histenc.train.frame_query import Clip, FrameQuerySettings
from histenc.train.loop import CHECKPOINT_NAME, TrainSettings
from histenc.train.toy_dit import WanModel
from histenc.train.trainer import (
    ExtensionObjective,
    FrameQueryObjective,
    LoRASpec,
    Objective,
    PlainLoRAObjective,
    TrainingCancelled,
    run_training,
)
from histenc.weights import read_metadata

FQ = FrameQuerySettings(history_frames=6, query_frames=2)


def tiny_dit(layers=2):
    torch.manual_seed(0)
    return WanModel(dim=32, ffn_dim=64, num_heads=1, num_layers=layers, text_dim=8).requires_grad_(False)


def tiny_encoder(dit):
    torch.manual_seed(1)
    return HistoryEncoder.from_dit(
        WanPatchifier(dit, torch.device("cpu"), torch.float32), rate="4x4x2", hidden=[8, 16, 16, 16], heads=2
    )


def clips(frames=8):
    g = torch.Generator().manual_seed(2)
    return [Clip(torch.randn(1, 16, frames, 8, 8, generator=g), [(0.0, torch.randn(1, 3, 8, generator=g))])]


def dit_output(dit):
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 3, 8, generator=g)
    with torch.no_grad():
        return dit(x, torch.tensor([500.0]), c)


def hooked(dit) -> bool:
    return any(m._forward_hooks for m in dit.modules())


class Boom(Objective):
    """Fails inside training, after checking that the LoRA is live on the DiT."""

    def fit(self, dit, lora, settings, out_dir, **loop):
        assert lora is not None and hooked(dit)
        raise RuntimeError("the objective failed")


def test_the_lora_is_detached_even_when_the_objective_raises(tmp_path):
    dit = tiny_dit()
    before = dit_output(dit)
    with pytest.raises(RuntimeError, match="the objective failed"):
        run_training(
            dit,
            Boom(),
            LoRASpec(rank=2),
            TrainSettings(steps=2, lr=1e-3),
            tmp_path,
            lora_file=tmp_path / "lora.safetensors",
        )
    assert not hooked(dit)
    assert torch.equal(dit_output(dit), before)
    assert not (tmp_path / "lora.safetensors").exists()  # files are written only after a completed run


def test_cancel_stops_after_a_checkpoint_and_the_next_run_resumes_and_writes_the_files(tmp_path):
    dit = tiny_dit()
    encoder = tiny_encoder(dit)
    settings = TrainSettings(steps=4, lr=1e-3, checkpoint_every=10, extra={"objective": "frame_query"})
    files = dict(lora_file=tmp_path / "lora.safetensors", module_file=tmp_path / "encoder.safetensors")
    seen = []
    with pytest.raises(TrainingCancelled, match="cancelled after step 2 of 4; run it again"):
        run_training(
            dit,
            FrameQueryObjective(encoder, clips(), FQ),
            LoRASpec(rank=2),
            settings,
            tmp_path / "ckpt",
            progress=lambda *a: seen.append(a),
            cancelled=lambda: len(seen) == 2,
            **files,
        )
    assert [s[:2] for s in seen] == [(1, 4), (2, 4)] and all(isinstance(s[2], float) for s in seen)
    assert read_metadata(tmp_path / "ckpt" / CHECKPOINT_NAME)["step"] == 2
    assert not hooked(dit) and not files["lora_file"].exists()

    job = run_training(
        dit,
        FrameQueryObjective(encoder, clips(), FQ),
        LoRASpec(rank=2),
        settings,
        tmp_path / "ckpt",
        cancelled=lambda: False,
        **files,
    )
    assert (job.result.resumed_from, job.result.step) == (2, 4) and not hooked(dit)
    assert job.files == [files["module_file"], files["lora_file"]]
    assert read_metadata(files["lora_file"])["training"] == {**settings.identity(), "steps": 4}
    assert load_encoder(files["module_file"]).hr_out.weight.abs().sum() > 0
    lora = job.lora.comfy_state_dict()
    assert any(v.abs().sum() > 0 for k, v in lora.items() if k.endswith("lora_up.weight"))


def test_records_and_which_files_an_objective_writes(tmp_path):
    dit = tiny_dit(layers=2)
    settings = TrainSettings(steps=1, lr=1e-3)
    long = clips(frames=8)
    causal = ExtensionSettings(stage="causal", section_frames=2, given_frames=1)
    job = run_training(
        dit,
        ExtensionObjective(None, long, causal),
        LoRASpec(rank=2, targets="self_attn.k", blocks="latter_half"),
        settings,
        tmp_path / "c",
        lora_file=tmp_path / "c.safetensors",
        module_file=tmp_path / "ext_c.safetensors",
        record=lambda result: {"mine": result.step},
    )
    assert job.module_file is None and not (tmp_path / "ext_c.safetensors").exists()  # no projection trained
    assert read_metadata(job.lora_file)["training"] == {"mine": 1}

    projection = ExtensionProjection(16, 32)
    stage = ExtensionSettings(clip_frames=4, max_given=1)
    job = run_training(
        dit,
        ExtensionObjective(projection, long, stage),
        LoRASpec(rank=2),
        settings,
        tmp_path / "e",
        module_file=tmp_path / "ext.safetensors",
    )
    assert job.lora_file is None and job.files == [tmp_path / "ext.safetensors"]  # no LoRA file asked for
    assert read_metadata(job.module_file)["training"] == {**settings.identity(), "steps": 1}
    assert next(projection.parameters()).device.type == "cpu"


def test_lora_spec_checks_and_resolves_its_layout():
    dit = tiny_dit(layers=4)
    with pytest.raises(ValueError, match="LoRA rank is 0"):
        LoRASpec(rank=0)
    with pytest.raises(ValueError, match="LoRA alpha is 0"):
        LoRASpec(rank=4, alpha=0)
    spec = LoRASpec(rank=4, targets="self_attn", blocks="latter_half")
    assert spec.layout(dit) == (("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o"), (2, 3))
    lora = spec.build(dit)
    assert (lora.alpha, lora.blocks) == (4.0, (2, 3))
    with pytest.raises(ValueError, match="give a LoRA rank of 1 or more"):
        PlainLoRAObjective(dataset=None).fit(dit, None, TrainSettings(steps=1, lr=1e-3), "unused")


def test_a_targeted_layer_the_forward_never_calls_stops_the_run_in_one_sentence(tmp_path):
    """A fused MLP that reads ffn[2].weight itself (as a host's inference kernel can) would leave its LoRA untrained."""
    dit = tiny_dit()
    for block in dit.blocks:
        ffn = block.ffn
        ffn.forward = lambda x, f=ffn: torch.nn.functional.linear(f[1](f[0](x)), f[2].weight, f[2].bias)
    run = dict(lora_file=tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match=r"targets include blocks\.0\.ffn\.2 and 1 more, .*drop those layers"):
        run_training(
            dit,
            FrameQueryObjective(tiny_encoder(dit), clips(), FQ),
            LoRASpec(rank=2, targets="ffn"),
            TrainSettings(steps=2, lr=1e-3),
            tmp_path / "ckpt",
            **run,
        )
    assert not hooked(dit) and not run["lora_file"].exists()
    for block in dit.blocks:
        del block.ffn.forward
    job = run_training(
        dit,
        FrameQueryObjective(tiny_encoder(dit), clips(), FQ),
        LoRASpec(rank=2, targets="ffn"),
        TrainSettings(steps=1, lr=1e-3),
        tmp_path / "ckpt2",
    )
    assert job.lora.unreached() == [] and all(layer.up.grad.abs().sum() > 0 for layer in job.lora.layers)
