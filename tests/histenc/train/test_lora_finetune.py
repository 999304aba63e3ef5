"""Plain LoRA finetunes on ComfyUI's native HunyuanVideo (tiny): its conditioning, block swap, bad datasets."""

import pytest
import torch

from histenc.lora import LoRA
from histenc.memory.offload import BlockSwap, RecordingTransfer, model_blocks
from histenc.train.dataset import CachedDataset, build_cache
from histenc.train.lora_finetune import HUNYUAN_GUIDANCE, finetune_lora
from histenc.train.loop import TrainSettings
from histenc.train.procedural import generate, write_image_sequence

HUNYUAN = "histenc_tiny_hunyuan_video.safetensors"


def cached(tmp_path, channels=16, pooled=True, name="data") -> CachedDataset:
    """One 5-frame clip at 32x32 as seeded latents [1, C, 2, 4, 4] with text (and a CLIP-L-sized pooled vector)."""
    write_image_sequence(generate(0, frames=20, size=32, objects=1), tmp_path / name / "clip")
    g = torch.Generator().manual_seed(0)

    def text(prompt):
        cond = torch.randn(1, 6, 4096, generator=g)
        return (cond, torch.randn(1, 768, generator=g)) if pooled else cond

    build_cache(
        tmp_path / name,
        tmp_path / f"{name}_cache",
        lambda frames: torch.randn(1, channels, 2, 4, 4, generator=g),
        text,
        32,
        32,
        max_frames=5,
    )
    return CachedDataset(tmp_path / f"{name}_cache")


@pytest.fixture(autouse=True)
def host_training(pack):
    """ComfyUI's training switch on, as the training nodes set it (0.33 takes its autograd-friendly rotary path)."""
    from comfyui_histenc.histenc_nodes._common import host_training

    with host_training():
        yield


def test_hunyuan_trains_on_the_pooled_vector_and_the_embedded_guidance(load_wan, tmp_path, monkeypatch):
    dm = load_wan(HUNYUAN).get_model_object("diffusion_model")
    data = cached(tmp_path)
    seen = []
    real = type(dm).forward

    def spy(self, x, timestep, context, y=None, guidance=None, **kwargs):
        seen.append((y, guidance))
        return real(self, x, timestep, context, y=y, guidance=guidance, **kwargs)

    monkeypatch.setattr(type(dm), "forward", spy)
    lora = LoRA(dm, 2, 2.0, "all", "all")
    result = finetune_lora(dm, lora, data, TrainSettings(steps=2, lr=1e-3), tmp_path / "run")
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    y, guidance = seen[0]
    assert torch.equal(y.cpu(), data[0]["pooled"].reshape(1, -1)) and guidance.tolist() == [HUNYUAN_GUIDANCE]
    assert any(layer.up.abs().max() > 0 for layer in lora.layers)  # it trained


@pytest.mark.parametrize("swap, checkpointing", [([0, 1], False), ([1], True)], ids=["all_swapped", "with_checkpoints"])
def test_block_swap_during_training_gives_the_same_losses_and_lora(load_wan, tmp_path, swap, checkpointing):
    """Blocks swapped through a recording transfer (parked weights are NaN until fetched) against no swap: the
    double block and the single block (with the other one under gradient checkpointing)."""
    settings = TrainSettings(steps=2, lr=1e-2, seed=3)

    def train(swapped: list[int], name: str):
        dm = load_wan(HUNYUAN).get_model_object("diffusion_model")
        lora = LoRA(dm, 2, 2.0, "all", "all", seed=1)
        transfer = RecordingTransfer()
        engine = BlockSwap(model_blocks(dm), transfer, swap=swapped, prefetch=True) if swapped else None
        data = cached(tmp_path, name=name)
        result = finetune_lora(
            dm, lora, data, settings, tmp_path / name, gradient_checkpointing=checkpointing, block_swap=engine
        )
        assert not any(torch.isnan(t).any() for t in dm.state_dict().values())  # every weight came home
        assert not any("forward" in m.__dict__ for m in dm.modules())  # every wrapper came off
        return result.losses, [p.detach().clone() for p in lora.parameters()], transfer

    plain, plain_lora, _ = train([], "plain")
    swapped, swapped_lora, transfer = train(swap, "swapped")
    assert plain == swapped and all(torch.equal(a, b) for a, b in zip(plain_lora, swapped_lora))
    fetched = [tag for kind, tag in transfer.log if kind == "fetch"]
    assert all(fetched.count(i) == 2 * 2 for i in swap)  # per step: once in forward, once again in backward


def test_hunyuan_dataset_without_a_pooled_vector_is_refused_in_one_sentence(load_wan, tmp_path):
    dm = load_wan(HUNYUAN).get_model_object("diffusion_model")
    data = cached(tmp_path, pooled=False)
    with pytest.raises(ValueError, match="no pooled text vector.*HunyuanVideo's text encoder") as e:
        finetune_lora(dm, LoRA(dm, 2, 2.0), data, TrainSettings(steps=1, lr=1e-3), tmp_path / "run")
    assert str(e.value).count(".") == 1
