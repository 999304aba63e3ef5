"""HunyuanVideo LoRA training through the real host, applied with the stock LoraLoaderModelOnly.

The tiny HunyuanVideo is trained for a few steps by Train LoRA (Block Swap in front, a Video Dataset cached with
the tiny VAE and the test text encoder, which gives a pooled vector as HunyuanVideo's CLIP-L does). The saved file
is applied by ComfyUI's own LoraLoaderModelOnly and one KSampler step is compared with the same step in this
process on the base model with the file merged into its weights by hand (W += alpha / rank * up @ down, the file's
released-checkpoint names mapped to the module's): the LoRA changes the output, by what the merge predicts.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from scripts.host import output_files

HUNYUAN = "histenc_tiny_hunyuan_video.safetensors"
NAME = "e2e_hunyuan_lora"
PROMPT = "a harbour at dawn"
# the released checkpoint's layer names -> ComfyUI's HunyuanVideo modules (written out here, not imported)
MODULE_NAMES = {
    "img_attn_qkv": "img_attn.qkv",
    "img_attn_proj": "img_attn.proj",
    "txt_attn_qkv": "txt_attn.qkv",
    "txt_attn_proj": "txt_attn.proj",
    "img_mlp.fc1": "img_mlp.0",
    "img_mlp.fc2": "img_mlp.2",
    "txt_mlp.fc1": "txt_mlp.0",
    "txt_mlp.fc2": "txt_mlp.2",
    "img_mod.linear": "img_mod.lin",
    "txt_mod.linear": "txt_mod.lin",
    "modulation.linear": "modulation.lin",
    "linear1": "linear1",
    "linear2": "linear2",
}


def training_prompt() -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": HUNYUAN, "weight_dtype": "default"}},
        "2": {
            "class_type": "HistEncBlockSwap",
            "inputs": {"model": ["1", 0], "blocks_to_swap": "1", "prefetch": False},
        },
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "histenc_tiny_wan21_vae.safetensors"}},
        "4": {"class_type": "HistEncTestTextEncoder", "inputs": {}},
        "5": {
            "class_type": "HistEncVideoDataset",
            "inputs": {
                "folder": f"{NAME}_clips",
                "vae": ["3", 0],
                "clip": ["4", 0],
                "width": 32,
                "height": 32,
                "max_frames": 5,
                "frame_stride": 1,
                "default_caption": PROMPT,
                "cache_folder": NAME,
            },
        },
        "6": {
            "class_type": "HistEncTrainLoRA",
            "inputs": {
                "model": ["2", 0],
                "dataset": ["5", 0],
                "steps": 4,
                "rank": 4,
                "alpha": 8.0,
                "learning_rate": 3e-2,
                "blocks": "all",
                "targets": "all",
                "seed": 0,
                "output_name": NAME,
                "checkpoint_every": 10,
                "timestep_shift": 3.0,
                "gradient_checkpointing": True,
            },
        },
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 2]}},
    }


def step_prompt(with_lora: bool) -> dict:
    """One KSampler step from seeded noise on a 32x32, 5-frame latent; its result saved as a .latent file."""
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": HUNYUAN, "weight_dtype": "default"}},
        "2": {"class_type": "HistEncTestConditioning", "inputs": {"text": PROMPT}},
        "3": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1},
        },
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 11,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": f"{NAME}_{with_lora}"}},
    }
    if with_lora:
        prompt["8"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["1", 0], "lora_name": f"{NAME}.safetensors", "strength_model": 1.0},
        }
        prompt["4"]["inputs"]["model"] = ["8", 0]
    return prompt


def saved_latent(host, entry) -> torch.Tensor:
    (path,) = [p for p in output_files(entry, host.base) if p.suffix == ".latent"]
    return load_file(str(path))["latent_tensor"]


def merged_by_hand(model, lora: dict) -> None:
    """Add alpha / rank * up @ down to each weight the file names (what ComfyUI's loader applies at strength 1)."""
    dm = model.get_model_object("diffusion_model")
    layers = {k[len("diffusion_model.") : -len(".alpha")] for k in lora if k.endswith(".alpha")}
    with torch.no_grad():
        for layer in layers:
            block, index, name = layer.split(".", 2)
            module = dm.get_submodule(f"{block}.{index}.{MODULE_NAMES[name]}")
            up, down = (
                lora[f"diffusion_model.{layer}.lora_up.weight"],
                lora[f"diffusion_model.{layer}.lora_down.weight"],
            )
            scale = float(lora[f"diffusion_model.{layer}.alpha"]) / down.shape[0]
            module.weight += scale * (up.float() @ down.float())
    assert len(layers) == 10 + 3  # every layer of the one double and the one single block


def local_step(model, embed_text) -> torch.Tensor:
    """The same KSampler step in this process (ComfyUI's own sampling code, the same seed and conditioning)."""
    import comfy.sample

    latent = torch.zeros(1, 16, 2, 4, 4)
    cond = embed_text(PROMPT)
    positive = [[cond, {"pooled_output": cond.mean(dim=1)}]]
    noise = comfy.sample.prepare_noise(latent, 11)
    return comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, positive, latent, seed=11)


def test_hunyuan_lora_trains_saves_and_the_stock_loader_applies_it(host, comfy, fixture_models, test_nodes):
    import comfy.sd

    from histenc.train.procedural import generate, write_image_sequence

    write_image_sequence(generate(0, frames=20, size=32, objects=1), host.base / "input" / f"{NAME}_clips" / "clip")
    entry = host.run(training_prompt(), timeout=600)
    lora_file = host.base / "models" / "loras" / f"{NAME}.safetensors"
    assert entry["outputs"]["7"]["text"] == [str(lora_file)]
    lora = load_file(str(lora_file))
    assert all(torch.isfinite(v).all() for v in lora.values())
    assert "diffusion_model.double_blocks.0.img_attn_qkv.lora_up.weight" in lora  # the released checkpoint's names

    base = saved_latent(host, host.run(step_prompt(False), timeout=300))
    patched = saved_latent(host, host.run(step_prompt(True), timeout=300))
    model = comfy.sd.load_diffusion_model(str(fixture_models / "diffusion_models" / HUNYUAN))
    assert torch.allclose(local_step(model, test_nodes.embed_text), base, rtol=1e-4, atol=1e-5)  # same step here
    merged_by_hand(model, lora)
    predicted = local_step(model, test_nodes.embed_text)
    change = (patched - base).abs().max()
    assert change > 1e-3, "the LoRA changed nothing"
    assert (patched - predicted).abs().max() <= 1e-3 * change, json.dumps(float(change))
