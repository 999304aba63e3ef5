"""A DiT layer's weight read back as numbers, whatever the loader stored, and refused in one sentence otherwise.

The synthetic cases build each storage the hosts use (plain, fp8, 0.3.75's fp8 with ``scale_weight``, ComfyUI-GGUF's
own ``GGMLTensor``); the slow cases load the real-width files through the hosts' loaders and read what the pack
reads: a LoRA merge into quantised weights is refused before any weight changes, and a patch embedding held in
GGUF blocks stops the history encoder and the FramePack projections in one sentence instead of starting them from
raw block bytes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histenc.dit.stored import check_writable, dequantised, stored_as
from scripts import fixtures_real as fr


def gguf_tensor(values: torch.Tensor, kind: str):
    """``values`` as ComfyUI-GGUF's GGMLTensor of GGUF type ``kind`` (F32 as they are, else quantised blocks)."""
    import gguf
    import sys

    from scripts import gguf_node

    gguf_node.import_node()
    GGMLTensor = sys.modules[gguf_node.MODULE + ".ops"].GGMLTensor
    qtype = gguf.GGMLQuantizationType[kind]
    rows = values.reshape(values.shape[0], -1).numpy()
    data = torch.from_numpy(gguf.quants.quantize(rows, qtype)) if kind != "F32" else values.clone()
    return GGMLTensor(data, tensor_type=qtype, tensor_shape=values.shape)


def one_sentence(err) -> bool:
    return str(err.value).count(". ") == 0 and str(err.value).endswith(".")


def test_plain_fp8_and_scaled_weights_read_back_as_what_the_layer_computes_with():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    for dtype in (torch.float32, torch.bfloat16, torch.float8_e4m3fn):
        layer = nn.Linear(4, 6).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(w.to(dtype))
        assert torch.equal(dequantised(layer, "blocks.0.ffn.0"), w.to(dtype).float())
        assert stored_as(layer) == str(dtype).split(".")[-1]
    scaled = nn.Linear(4, 6).to(torch.float8_e4m3fn)  # 0.3.75's scaled fp8 layer: weight = fp8 * scale_weight
    scaled.scale_weight = nn.Parameter(torch.tensor(0.25), requires_grad=False)
    assert torch.equal(dequantised(scaled, "x"), scaled.weight.float() * 0.25)
    assert stored_as(scaled) == "float8_e4m3fn with a per-tensor scale"
    assert torch.equal(dequantised(scaled, "x", "bias"), scaled.bias.float())  # the scale is the weight's

    odd = nn.Linear(4, 6)
    odd.register_buffer("weight_scale_2", torch.ones(1))
    with pytest.raises(
        ValueError, match=r"the DiT's patch_embedding\.weight is stored as float32, beside weight_scale_2"
    ):
        dequantised(odd, "patch_embedding")


def test_gguf_tensors_read_back_when_plain_and_are_refused_when_packed_in_blocks(comfy):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    plain = nn.Linear(64, 8)
    plain.weight = nn.Parameter(gguf_tensor(w, "F32"), requires_grad=False)
    assert stored_as(plain) == "GGUF F32" and torch.equal(dequantised(plain, "x"), w)
    packed = nn.Linear(64, 8)
    packed.weight = nn.Parameter(gguf_tensor(w, "Q8_0"), requires_grad=False)
    with pytest.raises(ValueError, match=r"blocks\.0\.ffn\.0\.weight is stored as GGUF Q8_0, packed blocks") as e:
        dequantised(packed, "blocks.0.ffn.0")
    assert one_sentence(e) and "use a GGUF file that keeps this layer in F16 or F32" in str(e.value)


def test_merging_is_allowed_only_into_wide_float_weights():
    check_writable(nn.Linear(4, 4).to(torch.bfloat16), "a")
    for layer in (nn.Linear(4, 4).to(torch.float8_e4m3fn), nn.Linear(4, 4)):
        if layer.weight.dtype == torch.float32:
            layer.scale_weight = nn.Parameter(torch.tensor(2.0), requires_grad=False)
        with pytest.raises(ValueError, match="which a merged LoRA would be rounded into") as e:
            check_writable(layer, "blocks.1.self_attn.q")
        assert one_sentence(e) and "keep the LoRA attached" in str(e.value)


# ------------------------------------------------------------------------------------------ real files
def load(name, dtype=None):
    import comfy.sd

    path = fr.ensure(name)
    if path.suffix == ".gguf":
        import sys

        from scripts import gguf_node

        gguf_node.import_node()
        nodes = sys.modules[gguf_node.MODULE + ".nodes"]
        get = nodes.folder_paths.get_full_path
        nodes.folder_paths.get_full_path = lambda kind, unet: str(path) if unet == name else get(kind, unet)
        try:
            return nodes.UnetLoaderGGUF().load_unet(name)[0]
        finally:
            nodes.folder_paths.get_full_path = get
    return comfy.sd.load_diffusion_model(str(path), model_options={} if dtype is None else {"dtype": dtype})


def file_weight(name: str, key: str) -> torch.Tensor:
    """fp8 * scale from the file itself (the scaled file's Linear weights), as float32."""
    from safetensors import safe_open

    with safe_open(str(fr.ensure(name)), "pt") as f:
        value = f.get_tensor(key + ".weight").float()
        if key + ".scale_weight" in f.keys():
            value = value * f.get_tensor(key + ".scale_weight").float()
    return value


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, dtype",
    [
        ("wan21_t2v_14b_fp8_scaled.safetensors", None),
        ("wan21_t2v_14b_fp8_e4m3fn.safetensors", torch.float8_e4m3fn),
        ("wan21_t2v_1.3b_Q8_0.gguf", None),
        ("wan21_t2v_1.3b_Q4_K.gguf", None),
    ],
)
def test_a_lora_merge_into_quantised_weights_is_refused_before_any_weight_changes(comfy, name, dtype):
    from histenc.lora import LoRA

    model = load(name, dtype)
    dm = model.get_model_object("diffusion_model")
    layer = dm.blocks[0].ffn[0]
    if name.endswith("scaled.safetensors"):  # 0.3.75 keeps fp8 + scale_weight, 0.33 its QuantizedTensor: both decode
        assert torch.equal(
            dequantised(layer, "blocks.0.ffn.0")[:64, :64], file_weight(name, "blocks.0.ffn.0")[:64, :64]
        )
    lora = LoRA(dm, 2, 2.0, "ffn", "0")
    with torch.no_grad():
        for part in lora.layers:
            part.up.fill_(0.1)
    before = {n: getattr(dm.get_submodule(n), "weight") for n in lora.names}
    copies = {n: torch.Tensor.as_subclass(t, torch.Tensor).clone() for n, t in before.items()}
    with pytest.raises(
        ValueError, match=r"the DiT's blocks\.0\.ffn\.0\.weight is stored as .*keep the LoRA attached"
    ) as e:
        lora.merge()
    assert one_sentence(e) and not lora.merged
    for n, t in before.items():
        assert dm.get_submodule(n).weight is t and torch.equal(torch.Tensor.as_subclass(t, torch.Tensor), copies[n])
    del model, dm, lora


@pytest.mark.slow
def test_a_patch_embedding_in_gguf_blocks_stops_the_encoder_and_framepack_in_one_sentence(comfy, pack):
    """The converters keep the 5-D patch embedding in F32 (the hosts cannot load it otherwise); a DiT whose patch
    embedding holds GGUF blocks anyway is refused by what reads it, never read as bytes."""
    from comfyui_histenc.histenc_nodes._common import model_dit

    from histenc.encoder.model import HistoryEncoder
    from histenc.framepack.packing import FramePackContext

    model = load("wan21_t2v_1.3b_Q8_0.gguf")
    dm = model.get_model_object("diffusion_model")
    weight, bias = model_dit(model).latent_patch_weights()  # F32 in the file: read as it is
    assert weight.shape == (1536, 16, 1, 2, 2) and torch.isfinite(weight).all()
    embed = dm.patch_embedding
    original = embed.weight
    embed.weight = nn.Parameter(gguf_tensor(original.detach().float(), "Q8_0"), requires_grad=False)
    try:
        for build in (
            lambda dit: HistoryEncoder.from_dit(dit, rate="2x2x2"),
            lambda dit: FramePackContext.from_dit(dit, "td_f2k2f1k1_g3"),
        ):
            with pytest.raises(ValueError, match=r"patch_embedding\.weight is stored as GGUF Q8_0") as e:
                build(model_dit(model))
            assert one_sentence(e)
    finally:
        embed.weight = original
