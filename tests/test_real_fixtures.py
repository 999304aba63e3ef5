"""Real-size checkpoints (scripts/fixtures_real.py) through the hosts' stock loaders.

Each file must load as the model it stands for (class, width, heads, blocks, latent channels) with no key
missing or left over, the host must dequantise its quantised layers to fp8 * scale (GGUF: what the gguf
package decodes), and what the pack reads from the DiT (the patch embedding the history encoder and the
FramePack projections start from) must equal the file's dequantised values, never raw quantised storage.
The references are computed here from the files themselves. Loading the largest file (HunyuanVideo, 1.6 GB
of bf16) peaks near 3.3 GB of RAM; each test frees its model before the next one loads.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import struct

import pytest
import torch

from scripts import fixtures_real as fr

# name -> (model_options dtype for the stock loader, (class, width, heads, blocks, latent channels))
# Files load in the dtype a user's GPU keeps them in (on the CPU the host would upcast to fp32): the 5B as bf16,
# the fp8 file as fp8; the scaled file takes the host's default (its Linear weights stay fp8 whatever the load
# dtype). HunyuanVideo loads as fp8_e4m3fn, the Load Diffusion Model weight_dtype a 13B needs on a 12 GB card,
# which also keeps this test near 3.3 GB of RAM (as bf16: 4.1 GB).
SAFETENSORS = {
    "wan21_t2v_1.3b_bf16.safetensors": (None, ("WAN21", 1536, 12, 2, 16)),
    "wan21_t2v_14b_fp8_e4m3fn.safetensors": (torch.float8_e4m3fn, ("WAN21", 5120, 40, 2, 16)),
    "wan21_t2v_14b_fp8_scaled.safetensors": (None, ("WAN21", 5120, 40, 2, 16)),
    "wan22_ti2v_5b_bf16.safetensors": (torch.bfloat16, ("WAN22", 3072, 24, 2, 48)),
    "hunyuan_video_t2v_13b_bf16.safetensors": (torch.float8_e4m3fn, ("HunyuanVideo", 3072, 24, 2, 16)),
}
GGUF = {
    "wan21_t2v_1.3b_Q8_0.gguf": "Q8_0",
    "wan21_t2v_1.3b_Q5_0.gguf": "Q5_0",
    "wan21_t2v_1.3b_Q4_K.gguf": "Q4_K",
}
PATCH = {"wan": "patch_embedding.", "hunyuan_video": "img_in.proj."}
PARTS = ("weight", "bias")


def free():
    gc.collect()


def header(path) -> dict:
    """A safetensors file's header: key -> dtype, shape, offsets (no tensor read)."""
    with open(path, "rb") as f:
        return json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))


def dequantised(path, prefix: str, part: str = "weight") -> torch.Tensor:
    """``prefix + part`` from a safetensors file as float32, times ``prefix + scale_weight`` when the file has it."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        value = f.get_tensor(prefix + part).float()
        if part == "weight" and prefix + "scale_weight" in f.keys():
            value = value * f.get_tensor(prefix + "scale_weight").float()
    return value


def gguf_dequantised(path, name: str) -> tuple[torch.Tensor, str]:
    """A GGUF tensor decoded by the gguf package (float32, the model's shape), and its type's name."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == name)
    shape = tuple(int(v) for v in reversed(tensor.shape))
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    return torch.from_numpy(values.copy()), tensor.tensor_type.name


def host_weight(layer, columns: int = 8) -> torch.Tensor:
    """The first ``columns`` input columns of a Linear layer's weight as the host's own forward dequantises it.

    ``layer(e_i) - layer(0)`` is column i of the weight, cast and scaled by the host's ops (fp8 upcast and
    scale, quantized tensors, GGUF blocks), without reading any storage ourselves.
    """
    x = torch.zeros(columns + 1, layer.in_features)
    x[torch.arange(columns), torch.arange(columns)] = 1.0
    with torch.no_grad():
        out = layer(x).float()
    return (out[:columns] - out[columns:]).T


def check_detected(model, expect, info):
    cls, width, heads, blocks, channels = expect
    assert type(model.model).__name__ == cls
    assert (info.width, info.heads, info.blocks, info.latent_channels) == (width, heads, blocks, channels)


def no_key_trouble(caplog):
    bad = [r.getMessage() for r in caplog.records if "missing" in r.getMessage() or "left over" in r.getMessage()]
    assert not bad, bad[0][:300]


# ------------------------------------------------------------------------------------------ the files
def test_q4_k_packing_decodes_with_the_gguf_package():
    import gguf
    import numpy as np

    rows = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32) * 0.05
    rows[1, :32] = 0.0  # an all-zero sub-block
    rows[2] += 0.3  # sub-blocks with no negative value (their min is clamped to zero)
    packed = fr.q4_k_blocks(rows)
    assert packed.shape == (3, 2 * 144) and packed.dtype == np.uint8
    back = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q4_K)
    step = (rows.max() - min(rows.min(), 0.0)) / 15
    assert np.abs(back - rows).max() <= step and np.all(back[1, :32] == 0)


@pytest.mark.slow
def test_fixtures_are_reused_while_their_stamp_names_this_generator(comfy):
    path = fr.ensure("wan21_t2v_1.3b_bf16.safetensors")
    stamp = json.loads(fr.stamp_path(path).read_text())
    before = path.stat().st_mtime_ns
    assert fr.ensure(path.name) == path and path.stat().st_mtime_ns == before
    assert stamp["version"] == fr.VERSION and stamp["bytes"] == path.stat().st_size


@pytest.mark.slow
def test_every_file_has_this_hosts_key_layout(comfy):
    """The files may come from the other host; the keys each host's own modules have must be the same."""
    for name, fx in fr.FIXTURES.items():
        if fx.storage.startswith("Q"):
            continue
        layout = fr.wan_layout(fx) if fx.family == "wan" else fr.hunyuan_layout(fx)  # checked against this host
        head = header(fr.ensure(name))
        keys = {k for k in head if k not in ("__metadata__", "scaled_fp8") and not k.endswith(".scale_weight")}
        assert keys == set(layout), name
        assert all(tuple(head[k]["shape"]) == layout[k] for k in layout), name
        scaled = {k for k in head if k.endswith(".scale_weight")}
        if fx.storage == "fp8_scaled":
            assert scaled and all(head[k[: -len("scale_weight")] + "weight"]["dtype"] == "F8_E4M3" for k in scaled)
            assert head["scaled_fp8"] == {**head["scaled_fp8"], "dtype": "F8_E4M3", "shape": [2]}
        else:
            assert not scaled


# ------------------------------------------------------------------------------------------ stock loaders
@pytest.mark.slow
@pytest.mark.parametrize("name", list(SAFETENSORS))
def test_stock_loader_detects_the_model_and_the_pack_reads_dequantised_weights(comfy, pack, caplog, name):
    import comfy.sd
    from comfyui_histenc.histenc_nodes._common import model_dit, model_info, model_spec

    dtype, expect = SAFETENSORS[name]
    path = fr.ensure(name)
    fx = fr.FIXTURES[name]
    caplog.set_level(logging.INFO)
    model = comfy.sd.load_diffusion_model(str(path), model_options={} if dtype is None else {"dtype": dtype})
    try:
        info = model_info(model)
        check_detected(model, expect, info)
        no_key_trouble(caplog)

        # what the pack reads: the latent part of the patch embedding, against the file's own values, rounded to
        # the dtype the host stores each of them in where it is narrower (the DiT then computes with those)
        weight, bias = model_dit(model).latent_patch_weights()
        prefix = PATCH[info.family]
        dm = model.get_model_object("diffusion_model")
        embed = dm.patch_embedding if info.family == "wan" else dm.img_in.proj
        ref_w, ref_b = (dequantised(path, prefix, part).to(getattr(embed, part).dtype).float() for part in PARTS)
        ref_w = ref_w[:, : info.latent_channels]
        assert weight.dtype == torch.float32 and weight.shape == ref_w.shape
        assert torch.equal(weight, ref_w), f"{name}: the pack's patch weights differ from the file's values"
        assert torch.equal(bias, ref_b)

        # the host's own dequantisation of a quantised Linear layer equals fp8 * scale from the file
        if fx.storage.startswith("fp8"):
            layer = dm.blocks[0].ffn[0]
            ref = dequantised(path, "blocks.0.ffn.0.")[:, :8]
            assert torch.allclose(host_weight(layer), ref, rtol=1e-6, atol=1e-7 * float(ref.abs().max()))
            assert model_spec(model).weight_bytes == 1.0  # fp8 storage, not the dtype a quantized tensor reports
    finally:
        del model
        free()


@pytest.fixture(scope="module")
def gguf_loader(comfy):
    """ComfyUI-GGUF's own UnetLoaderGGUF, imported from the unpacked node, reading our files by name."""
    from scripts import gguf_node

    gguf_node.import_node()
    import sys

    nodes = sys.modules[gguf_node.MODULE + ".nodes"]
    get = nodes.folder_paths.get_full_path

    def load(name):
        path = fr.ensure(name)
        nodes.folder_paths.get_full_path = lambda kind, unet: str(path) if unet == name else get(kind, unet)
        try:
            return nodes.UnetLoaderGGUF().load_unet(name)[0], path
        finally:
            nodes.folder_paths.get_full_path = get

    return load


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GGUF))
def test_gguf_loader_detects_the_model_and_the_pack_reads_dequantised_weights(pack, caplog, gguf_loader, name):
    from comfyui_histenc.histenc_nodes._common import model_dit, model_info, model_spec

    caplog.set_level(logging.INFO)
    model, path = gguf_loader(name)
    try:
        info = model_info(model)
        check_detected(model, ("WAN21", 1536, 12, 2, 16), info)
        no_key_trouble(caplog)

        weight, bias = model_dit(model).latent_patch_weights()
        ref_w, kind = gguf_dequantised(path, "patch_embedding.weight")
        assert kind == "F32"  # the 5-D patch embedding is never quantised: the converter sets it aside
        assert torch.equal(weight, ref_w[:, :16]) and torch.equal(
            bias, gguf_dequantised(path, "patch_embedding.bias")[0]
        )

        # the quantised blocks: ComfyUI-GGUF's torch decoder against the gguf package's
        ref, kind = gguf_dequantised(path, "blocks.0.ffn.0.weight")
        assert kind == GGUF[name]
        dm = model.get_model_object("diffusion_model")
        got = host_weight(dm.blocks[0].ffn[0])
        assert torch.allclose(got, ref[:, :8], rtol=1e-3, atol=1e-3 * float(ref.abs().max()))

        # the planner counts storage bytes: a quantised weight's bytes per element, not its raw uint8 element size
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
        assert model_spec(model).weight_bytes == pytest.approx(size / block)
        reader = gguf.GGUFReader(str(path))
        stored = sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("blocks.0."))
        assert model_spec(model).block == stored
    finally:
        del model
        free()


def test_comfyui_gguf_is_unpacked_once_and_links_into_a_host(tmp_path):
    from scripts import gguf_node
    from scripts.host import make_base

    folder = gguf_node.unpack()
    assert (folder / "nodes.py").is_file() and (folder / "LICENSE").is_file()
    assert gguf_node.unpack() == folder  # the stamp says it is there: not unpacked again
    base = make_base(tmp_path / "base")
    link = gguf_node.link_into(base)
    assert link.is_symlink() and link.resolve() == folder.resolve() and gguf_node.link_into(base) == link


def test_the_expected_models_are_the_generators_own():
    for name, (_, expect) in SAFETENSORS.items():
        fx = fr.FIXTURES[name]
        assert (fx.model_class, fx.width, fx.heads, fx.blocks, fx.latent_channels) == expect, name
    for name, kind in GGUF.items():
        assert fr.FIXTURES[name].storage == kind and fr.FIXTURES[name].source in SAFETENSORS


@pytest.mark.slow
def test_the_largest_fixture_fits_one_test(comfy):
    """A 2-block file at real width: the largest stays near 1.6 GB, so one test loads it within about 4 GB."""
    sizes = {name: fr.ensure(name).stat().st_size for name in fr.FIXTURES}
    assert max(sizes.values()) < 1.7 * 2**30, sizes
    assert math.isclose(sizes["hunyuan_video_t2v_13b_bf16.safetensors"] / 2**30, 1.57, abs_tol=0.05)
