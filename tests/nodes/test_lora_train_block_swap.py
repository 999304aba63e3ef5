"""Train LoRA on a Block Swap MODEL (the HunyuanVideo 13B on a 12 GB card): the swap holds during training.

The node loads the training clone without a full load, asks ComfyUI to keep the swapped blocks' weights off the
device (on a GPU: its lowvram casting per layer) and turns gradient checkpointing on, so the per-call copies of the
offloaded weights are not kept for backward. On the CPU nothing is offloaded, so the run must train exactly the
LoRA an unswapped run with checkpointing trains.
"""

import pytest
import torch

from histenc.train.dataset import build_cache
from histenc.train.procedural import generate, write_image_sequence

HUNYUAN = "histenc_tiny_hunyuan_video.safetensors"


@pytest.fixture
def folders(comfy, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(tmp_path / "models" / name)])
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    return tmp_path


def dataset(root) -> str:
    write_image_sequence(generate(0, frames=20, size=32, objects=1), root / "input" / "clips" / "clip")
    g = torch.Generator().manual_seed(0)
    cache = root / "input" / "cache"
    build_cache(
        root / "input" / "clips",
        cache,
        lambda frames: torch.randn(1, 16, 2, 4, 4, generator=g),
        lambda prompt: (torch.randn(1, 6, 4096, generator=g), torch.randn(1, 768, generator=g)),
        32,
        32,
        max_frames=5,
    )
    return str(cache)


def train(model, data, name, checkpointing=False):
    from comfyui_histenc.histenc_nodes.lora_train import TrainLoRA
    from safetensors.torch import load_file

    out = TrainLoRA.execute(model, data, 3, 2, 2.0, 1e-2, "all", "all", 0, name, 10, 3.0, checkpointing)
    return load_file(out.args[2])


def test_a_block_swap_model_trains_with_checkpointing_and_the_same_lora(pack, load_wan, folders, monkeypatch):
    from comfyui_histenc.histenc_nodes.offload import attach_block_swap
    from histenc.train import lora_finetune

    data = dataset(folders)
    model = load_wan(HUNYUAN)
    calls = []
    real = lora_finetune.checkpoint_modules
    monkeypatch.setattr(lora_finetune, "checkpoint_modules", lambda blocks: calls.append(len(blocks)) or real(blocks))

    swapped = train(attach_block_swap(model, 1), data, "swapped")
    assert calls == [2]  # the one double and the one single block, checkpointed although the node asked for none
    reference = train(model, data, "reference", checkpointing=True)
    assert swapped.keys() == reference.keys() and all(torch.equal(swapped[k], reference[k]) for k in swapped)
