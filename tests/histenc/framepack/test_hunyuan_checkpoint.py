"""FramePack's diffusers-layout HunyuanVideo onto native HunyuanVideo: keys, numbers and FramePack's own starts.

The checkpoint is made by FramePack's model class (scripts/fixture_framepack_hunyuan.py). Whether the converted
model computes what FramePack's computes is test_framepack_reference.py: the whole forward against FramePack's
own, with and without context, on FramePack's sharded files.
"""

import importlib
import re

import pytest
import torch
import torch.nn.functional as F

from histenc.framepack.hunyuan_checkpoint import (
    PROJECTIONS,
    checkpoint_family,
    convert,
    copy_projections,
    image_projection,
    mapping_table,
    projections_pack,
    shard_paths,
    strip_prefix,
)
from histenc.framepack.packing import FramePackContext
from scripts.fixture_framepack_hunyuan import framepack_hunyuan_state_dict, framepack_model, framepack_model_class

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


def test_without_history_embedders_projections_start_as_framepack_starts_them():
    """FramePack's own ``initialize_weight_from_another_conv3d`` (each element of the patch kernel repeated)."""
    sd = framepack_hunyuan_state_dict(seed=1, clean_x_embedder=False, image_projection=False)
    assert checkpoint_family(sd) == "HunyuanVideo (diffusers)"
    out = convert(sd)
    module = importlib.import_module(framepack_model_class().__module__)
    theirs = module.HunyuanVideoPatchEmbedForCleanLatents(D)
    patch = torch.nn.Conv3d(16, D, (1, 2, 2), stride=(1, 2, 2))
    patch.load_state_dict({"weight": sd["x_embedder.proj.weight"], "bias": sd["x_embedder.proj.bias"]})
    theirs.initialize_weight_from_another_conv3d(patch)
    for name, (key, _) in PROJECTIONS.items():
        attr = name.rsplit(".", 1)[1]
        assert torch.equal(out.projections[f"projections.{key}.weight"], getattr(theirs, attr).weight)
        assert torch.equal(out.projections[f"projections.{key}.bias"], getattr(theirs, attr).bias)
    assert out.extras == {} and image_projection(out.extras) is None


def test_the_image_projection_is_framepacks(converted):
    theirs = framepack_model(seed=3).image_projection
    module = image_projection(converted.extras)
    x = torch.randn(1, 9, module.width, generator=torch.Generator().manual_seed(2))
    assert module.width == 1152
    with torch.no_grad():
        assert torch.equal(module(x), theirs(x))
    partial = {k: v for k, v in converted.extras.items() if "down" not in k}
    with pytest.raises(ValueError, match="image projection has \\['up.bias', 'up.weight'\\] but FramePack's"):
        image_projection(partial)


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


# ------------------------------------------------------------------------- the native model
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
