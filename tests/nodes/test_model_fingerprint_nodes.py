"""The model fingerprint a resumed job is checked against, and the LoRA shape check, on the stock loaders' MODELs."""

import pytest
import torch

T2V, OTHER_T2V = "histenc_tiny_wan21_t2v.safetensors", "histenc_tiny_wan21_t2v_low_noise.safetensors"


def lora(width: int = 128, rank: int = 4, blocks=(0, 1), seed: int = 0) -> dict:
    """A LoRA in the stock loader's keys on the q projection of ``blocks``, made for a DiT ``width`` wide."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in blocks:
        key = f"diffusion_model.blocks.{i}.self_attn.q"
        out[f"{key}.lora_up.weight"] = torch.randn(width, rank, generator=g) * 0.1
        out[f"{key}.lora_down.weight"] = torch.randn(rank, width, generator=g) * 0.1
        out[f"{key}.alpha"] = torch.tensor(float(rank))
    return out


def with_lora(model, strength: float = 1.0, **kw):
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, None, lora(**kw), strength, 0)[0]


def shifted(model, shift: float):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    return ModelSamplingSD3().patch(model, shift)[0]


def fingerprint(model):
    from comfyui_histenc.histenc_nodes._model_fingerprint import model_fingerprint

    return model_fingerprint(model)


def test_identical_models_have_one_fingerprint(pack, load_wan):
    a, b = fingerprint(load_wan(T2V)), fingerprint(load_wan(T2V))
    assert a == b and a["model"] == "WAN21"
    assert fingerprint(with_lora(load_wan(T2V), 0.5)) == fingerprint(with_lora(load_wan(T2V), 0.5))


def test_another_checkpoint_of_the_same_class_differs_in_its_weights(pack, load_wan):
    a, b = fingerprint(load_wan(T2V)), fingerprint(load_wan(OTHER_T2V))
    assert a["model"] == b["model"] and a["model weights"] != b["model weights"]
    assert {k for k in a if a[k] != b[k]} == {"model weights"}


def test_a_loaded_model_with_its_lora_merged_keeps_its_fingerprint(pack, load_wan):
    """ComfyUI patches the weights in place when it loads a MODEL; the fingerprint reads the unpatched ones."""
    import comfy.model_management

    model = with_lora(load_wan(T2V), 1.0)
    before = fingerprint(model)
    comfy.model_management.load_models_gpu([model])
    q = model.get_model_object("diffusion_model").blocks[0].self_attn.q.weight
    assert model.backup and not torch.equal(q, model.backup["diffusion_model.blocks.0.self_attn.q.weight"].weight)
    assert fingerprint(model) == before
    comfy.model_management.unload_all_models()


def test_shift_lora_strength_and_lora_file_are_recorded(pack, load_wan):
    base = load_wan(T2V)
    plain = fingerprint(base)
    assert fingerprint(shifted(base, 5.0))["model sampling"]["shift"] == 5.0
    assert fingerprint(shifted(base, 5.0))["model sampling"] != fingerprint(shifted(base, 8.0))["model sampling"]
    half, full = fingerprint(with_lora(base, 0.5)), fingerprint(with_lora(base, 1.0))
    assert plain["model patches"] == {"keys": 0, "strengths": [], "content": None}
    assert half["model patches"]["strengths"] == [[0.5, 1.0]] and full["model patches"]["strengths"] == [[1.0, 1.0]]
    other_file = fingerprint(with_lora(base, 1.0, seed=1))["model patches"]
    assert other_file["strengths"] == full["model patches"]["strengths"]
    assert other_file["content"] != full["model patches"]["content"]
    assert half["model weights"] == plain["model weights"]  # the LoRA is a patch, not other weights


def test_object_patches_are_recorded_by_name_and_block_swap_is_not(pack, load_wan):
    from comfyui_histenc.histenc_nodes.offload import attach_block_swap

    from histenc.memory.offload import RecordingTransfer

    base = load_wan(T2V)
    patched = base.clone()
    patched.add_object_patch("diffusion_model.head", torch.nn.Identity())
    assert fingerprint(patched)["model options"]["object patches"] == {"diffusion_model.head": "Identity"}
    swapped = attach_block_swap(base, 1, prefetch=True, transfer=RecordingTransfer())
    assert fingerprint(swapped) == fingerprint(base)  # block swap moves weights, it does not change them


def test_the_weights_fingerprint_reads_a_bounded_sample_of_each_tensor_at_real_width(pack, comfy, monkeypatch):
    """Every tensor of a width-5120 (Wan 14B) fp8-scaled DiT is hashed from at most three samples of its stored
    elements, so the cost does not grow with the weights (a few MB read for a 14 GB file at 40 blocks)."""
    from pathlib import Path

    import comfy.sd
    from comfyui_histenc.histenc_nodes import _model_fingerprint as fp

    path = Path(__file__).resolve().parents[2] / ".cache" / "fixtures_real" / "wan21_t2v_14b_fp8_scaled.safetensors"
    if not path.is_file():
        pytest.skip("make the real-width fixtures first: python3 scripts/fixtures_real.py")
    model = comfy.sd.load_diffusion_model(str(path))
    dm = model.get_model_object("diffusion_model")
    assert dm.dim == 5120
    read, original = [], fp.tensor_bytes
    monkeypatch.setattr(fp, "tensor_bytes", lambda tensor: read.append(original(tensor)) or read[-1])
    fp.weights_fingerprint(model)
    weights = fp.unpatched_weights(model)
    assert len(read) == len(weights)
    for data, tensor in zip(read, (weights[k] for k in sorted(weights))):
        parts = fp.stored(tensor)
        limit = sum(min(p.numel(), 3 * fp.SAMPLE_ELEMENTS) * p.element_size() for p in parts)
        assert len(data) == limit  # three samples of what is stored, never the whole tensor
    assert sum(t.numel() * t.element_size() for t in weights.values()) > 100 * sum(map(len, read))


def test_a_lora_made_for_another_width_is_one_sentence(pack, load_wan):
    from comfyui_histenc.histenc_nodes._model_fingerprint import check_lora_shapes

    model = load_wan(T2V)
    check_lora_shapes(with_lora(model, 1.0))  # made for this model: fine
    with pytest.raises(ValueError) as refused:
        check_lora_shapes(with_lora(model, 1.0, width=256), "model_low_noise")
    assert str(refused.value) == (
        "a LoRA on model_low_noise patches diffusion_model.blocks.0.self_attn.q.weight with a LoRA of shape "
        "[256, 256] but that weight is [128, 128] (the LoRA was made for another model or width), so ComfyUI would "
        "sample without it; load the LoRA made for this model, or remove it."
    )
