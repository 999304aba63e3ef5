"""FramePack's diffusers-layout HunyuanVideo onto native HunyuanVideo: keys, numbers, and block-level forwards.

The reference computations below follow FramePack's diffusers modules (AdaLayerNormZero chunks
(shift, scale, gate), AdaLayerNormContinuous (scale, shift), separate q/k/v) directly on the
FramePack-layout tensors; the native blocks run on the converted weights. Equal outputs show the
renaming, the fusion order and the modulation chunk order are right.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from histenc.framepack.hunyuan_checkpoint import (
    PROJECTIONS,
    checkpoint_family,
    convert,
    copy_projections,
    mapping_table,
    projections_pack,
    shard_paths,
    strip_prefix,
)
from histenc.framepack.packing import FramePackContext
from scripts.fixture_framepack_hunyuan import framepack_hunyuan_state_dict

D = 128


@pytest.fixture(scope="module")
def fp():
    return framepack_hunyuan_state_dict(seed=3)


@pytest.fixture(scope="module")
def converted(fp):
    return convert(fp)


@pytest.fixture(scope="module")
def native_model(comfy, converted):
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(dict(converted.native))
    return model.model.diffusion_model.float()


# ------------------------------------------------------------------------- keys and numbers
def test_every_key_is_accounted_for(fp, converted):
    table = mapping_table(double=1, single=1, refiner=2)
    assert set(converted.native) == {native for native, _, _ in table}
    sources = {s for _, srcs, _ in table for s in srcs}
    projection_keys = {f"{src}.{p}" for src in PROJECTIONS for p in ("weight", "bias")}
    assert sources | projection_keys | set(converted.extras) == set(fp)
    assert set(converted.extras) == {k for k in fp if k.startswith("image_projection.")}


def test_fused_slices_equal_the_original_projections(fp, converted):
    qkv = converted.native["double_blocks.0.img_attn.qkv.weight"]
    assert torch.equal(qkv[:D], fp["transformer_blocks.0.attn.to_q.weight"])
    assert torch.equal(qkv[D : 2 * D], fp["transformer_blocks.0.attn.to_k.weight"])
    assert torch.equal(
        converted.native["double_blocks.0.txt_attn.qkv.bias"][2 * D :], fp["transformer_blocks.0.attn.add_v_proj.bias"]
    )
    linear1 = converted.native["single_blocks.0.linear1.weight"]
    assert linear1.shape == (3 * D + 4 * D, D)
    assert torch.equal(linear1[3 * D :], fp["single_transformer_blocks.0.proj_mlp.weight"])
    assert torch.equal(
        converted.native["single_blocks.0.norm.key_norm.scale"], fp["single_transformer_blocks.0.attn.norm_k.weight"]
    )


def test_final_layer_modulation_halves_are_swapped(fp, converted):
    w = converted.native["final_layer.adaLN_modulation.1.weight"]
    assert torch.equal(w[:D], fp["norm_out.linear.weight"][D:])  # native shift = FramePack's second half
    assert torch.equal(w[D:], fp["norm_out.linear.weight"][:D])
    # the block modulations keep their order: (shift, scale, gate) in both layouts
    assert torch.equal(
        converted.native["double_blocks.0.img_mod.lin.weight"], fp["transformer_blocks.0.norm1.linear.weight"]
    )


def test_projections_load_into_a_framepack_context(fp, converted):
    pack = projections_pack(converted.projections)
    x = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for src, (key, size) in PROJECTIONS.items():
        assert pack.projections[key].kernel_size == size
        expected = F.conv3d(x[:, :, : size[0]], fp[src + ".weight"], fp[src + ".bias"], stride=size)
        assert torch.allclose(pack.projections[key](x[:, :, : size[0]]), expected, atol=1e-6)
    target = FramePackContext("f1k4f2k2f1k1_g2", D, 16, (1, 2, 2))
    copy_projections(target, pack)
    assert torch.equal(target.projections["k2h4w4"].weight, fp["clean_x_embedder.proj_2x.weight"])
    with pytest.raises(ValueError, match="uses kernel k8h16w16, which FramePack's projections lack"):
        copy_projections(FramePackContext("f1k8_g2", D, 16, (1, 2, 2)), pack)


def test_without_history_embedders_projections_tile_the_patch_embedding():
    sd = framepack_hunyuan_state_dict(seed=1, clean_x_embedder=False, image_projection=False)
    assert checkpoint_family(sd) == "HunyuanVideo (diffusers)"
    out = convert(sd)
    tiled = sd["x_embedder.proj.weight"].repeat(1, 1, 2, 2, 2) / 8  # FramePack's own initialisation
    assert torch.allclose(out.projections["projections.k2h4w4.weight"], tiled)
    assert out.extras == {}


# ------------------------------------------------------------------------- refusals
def test_unmapped_keys_are_listed_with_their_count(fp):
    sd = dict(fp)
    sd["transformer_blocks.0.attn.to_extra.weight"] = torch.zeros(1)
    sd["lora_unet_whatever.alpha"] = torch.zeros(1)
    with pytest.raises(
        ValueError,
        match=r"2 keys of fp\.safetensors have no place .*lora_unet_whatever\.alpha, "
        r"transformer_blocks\.0\.attn\.to_extra\.weight\)",
    ):
        convert(sd, name="fp.safetensors")


def test_half_of_a_fused_group_is_refused(fp):
    sd = {k: v for k, v in fp.items() if k != "single_transformer_blocks.0.attn.to_k.weight"}
    with pytest.raises(ValueError, match="not single_transformer_blocks.0.attn.to_k.weight, which is fused"):
        convert(sd)


@pytest.mark.parametrize(
    "keys, family",
    [
        (["patch_embedding.weight", "blocks.0.self_attn.q.weight"], "Wan 2.1 / 2.2 (native)"),
        (["img_in.proj.weight", "double_blocks.0.img_attn.qkv.weight"], "HunyuanVideo (native / original)"),
        (["img_in.weight", "double_blocks.0.img_attn.qkv.weight"], "Flux (native)"),
    ],
)
def test_wrong_family_is_refused_naming_the_family(keys, family):
    with pytest.raises(ValueError, match=re.escape(f"wan.safetensors holds a {family} model, not FramePack's")):
        convert({k: torch.zeros(1) for k in keys}, name="wan.safetensors")


def test_wrapper_prefix_and_shards(fp):
    assert set(strip_prefix({"model.diffusion_model." + k: v for k, v in fp.items()})) == set(fp)
    assert shard_paths("/m/fp-00002-of-00003.safetensors") == [f"/m/fp-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert shard_paths("/m/fp.safetensors") == ["/m/fp.safetensors"]


# ------------------------------------------------------------------------- forwards against FramePack's semantics
def _lin(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def _ln(x):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def _rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def _attend(q, k, v):  # one head
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]


def _ff(sd, name, x, act):
    return _lin(sd, name + ".net.2", act(_lin(sd, name + ".net.0.proj", x)))


def _gelu(x):
    return F.gelu(x, approximate="tanh")


def _identity_pe(model, tokens):
    return model.pe_embedder(torch.zeros(1, tokens, 3))  # position 0 everywhere: rotation by zero


def test_double_block_matches_framepack(fp, native_model):
    g = torch.Generator().manual_seed(5)
    img, txt, temb = (
        torch.randn(1, 6, D, generator=g),
        torch.randn(1, 4, D, generator=g),
        torch.randn(1, D, generator=g),
    )
    p = "transformer_blocks.0."
    sh, sc, gt, sh2, sc2, gt2 = _lin(fp, p + "norm1.linear", F.silu(temb))[:, None].chunk(6, -1)
    csh, csc, cgt, csh2, csc2, cgt2 = _lin(fp, p + "norm1_context.linear", F.silu(temb))[:, None].chunk(6, -1)
    ni, nt = _ln(img) * (1 + sc) + sh, _ln(txt) * (1 + csc) + csh
    q = torch.cat(
        [
            _rms(_lin(fp, p + "attn.to_q", ni), fp[p + "attn.norm_q.weight"]),
            _rms(_lin(fp, p + "attn.add_q_proj", nt), fp[p + "attn.norm_added_q.weight"]),
        ],
        1,
    )
    k = torch.cat(
        [
            _rms(_lin(fp, p + "attn.to_k", ni), fp[p + "attn.norm_k.weight"]),
            _rms(_lin(fp, p + "attn.add_k_proj", nt), fp[p + "attn.norm_added_k.weight"]),
        ],
        1,
    )
    v = torch.cat([_lin(fp, p + "attn.to_v", ni), _lin(fp, p + "attn.add_v_proj", nt)], 1)
    a = _attend(q, k, v)
    ref_img = img + _lin(fp, p + "attn.to_out.0", a[:, :6]) * gt
    ref_txt = txt + _lin(fp, p + "attn.to_add_out", a[:, 6:]) * cgt
    ref_img = ref_img + gt2 * _ff(fp, p + "ff", _ln(ref_img) * (1 + sc2) + sh2, _gelu)
    ref_txt = ref_txt + cgt2 * _ff(fp, p + "ff_context", _ln(ref_txt) * (1 + csc2) + csh2, _gelu)
    with torch.no_grad():
        out_img, out_txt = native_model.double_blocks[0](
            img=img.clone(), txt=txt.clone(), vec=temb, pe=_identity_pe(native_model, 10)
        )
    assert torch.allclose(out_img, ref_img, atol=1e-4) and torch.allclose(out_txt, ref_txt, atol=1e-4)


def test_single_block_and_final_layer_match_framepack(fp, native_model):
    g = torch.Generator().manual_seed(6)
    x, temb = torch.randn(1, 7, D, generator=g), torch.randn(1, D, generator=g)
    p = "single_transformer_blocks.0."
    shift, scale, gate = _lin(fp, p + "norm.linear", F.silu(temb))[:, None].chunk(3, -1)
    nx = _ln(x) * (1 + scale) + shift
    a = _attend(
        _rms(_lin(fp, p + "attn.to_q", nx), fp[p + "attn.norm_q.weight"]),
        _rms(_lin(fp, p + "attn.to_k", nx), fp[p + "attn.norm_k.weight"]),
        _lin(fp, p + "attn.to_v", nx),
    )
    ref = x + gate * _lin(fp, p + "proj_out", torch.cat([a, _gelu(_lin(fp, p + "proj_mlp", nx))], -1))
    scale_out, shift_out = _lin(fp, "norm_out.linear", F.silu(temb))[:, None].chunk(2, -1)  # FramePack's order
    ref_final = _lin(fp, "proj_out", _ln(x) * (1 + scale_out) + shift_out)
    with torch.no_grad():
        out = native_model.single_blocks[0](x.clone(), vec=temb, pe=_identity_pe(native_model, 7))
        final = native_model.final_layer(x, temb)
    assert torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(final, ref_final, atol=1e-4)


def test_token_refiner_block_matches_framepack(fp, native_model):
    g = torch.Generator().manual_seed(7)
    x, temb = torch.randn(1, 5, D, generator=g), torch.randn(1, D, generator=g)
    p = "context_embedder.token_refiner.refiner_blocks.1."
    ln_affine = lambda y, n: F.layer_norm(y, (D,), fp[p + n + ".weight"], fp[p + n + ".bias"], eps=1e-6)  # noqa: E731
    nx = ln_affine(x, "norm1")
    attn = _lin(
        fp,
        p + "attn.to_out.0",
        _attend(_lin(fp, p + "attn.to_q", nx), _lin(fp, p + "attn.to_k", nx), _lin(fp, p + "attn.to_v", nx)),
    )
    gate_msa, gate_mlp = _lin(fp, p + "norm_out.linear", F.silu(temb))[:, None].chunk(2, -1)
    ref = x + attn * gate_msa
    ref = ref + _ff(fp, p + "ff", ln_affine(ref, "norm2"), F.silu) * gate_mlp
    with torch.no_grad():
        out = native_model.txt_in.individual_token_refiner.blocks[1](x.clone(), temb, None)
    assert torch.allclose(out, ref, atol=1e-4)


def test_converted_model_is_detected_and_runs(comfy, converted, native_model):
    assert type(native_model).__name__ == "HunyuanVideo" and native_model.params.guidance_embed
    assert native_model.params.vec_in_dim == 768 and native_model.params.depth == 1
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    with torch.no_grad():
        out = native_model(
            x,
            torch.tensor([0.5]),
            torch.randn(1, 5, 4096, generator=g),
            y=torch.randn(1, 768, generator=g),
            guidance=torch.tensor([6.0]),
        )
    assert out.shape == x.shape and torch.isfinite(out).all()
