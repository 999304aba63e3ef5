"""LoRA on the native tiny Wan DiT: hooks, merge/unmerge, and files the stock ComfyUI loader reads."""

import logging

import pytest
import torch

from histenc.lora import LoRA, load_lora, parse_targets, select_blocks
from histenc.weights import read_metadata, save_weights


def dit_inputs(dm, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, dm.patch_embedding.weight.shape[1], 2, 8, 8, generator=g)
    return x, torch.tensor([400.0]), torch.randn(1, 5, 4096, generator=g)


def randomise(lora, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.layers:
            layer.up.copy_(torch.randn(layer.up.shape, generator=g) * 0.05)


def run(dm, x, t, ctx):
    with torch.no_grad():
        return dm(x, t, ctx)


def test_selection_and_bad_settings():
    assert select_blocks("all", 4) == (0, 1, 2, 3)
    assert select_blocks("latter_half", 4) == (2, 3)
    assert select_blocks("3, 1", 4) == (1, 3)
    assert parse_targets("self_attn,ffn.0") == ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0")
    with pytest.raises(ValueError, match="block 7 does not exist"):
        select_blocks([7], 4)
    with pytest.raises(ValueError, match="target 'mlp'"):
        parse_targets("mlp")


def test_rank_and_alpha_refused(load_wan):
    dm = load_wan().get_model_object("diffusion_model")
    with pytest.raises(ValueError, match="rank is 0"):
        LoRA(dm, 0, 1.0)
    with pytest.raises(ValueError, match="alpha is -1"):
        LoRA(dm, 4, -1.0)


def test_fresh_lora_is_identity_and_merge_matches_hooks(load_wan):
    dm = load_wan().get_model_object("diffusion_model")
    x, t, ctx = dit_inputs(dm)
    stock = run(dm, x, t, ctx)
    lora = LoRA(dm, rank=4, alpha=2.0, targets="all", blocks="all", seed=3).attach()
    assert torch.equal(run(dm, x, t, ctx), stock)  # up starts at zero
    randomise(lora)
    hooked = run(dm, x, t, ctx)
    assert (hooked - stock).abs().max() > 1e-3
    lora.merge()
    merged = run(dm, x, t, ctx)
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-5)
    lora.unmerge().detach()
    torch.testing.assert_close(run(dm, x, t, ctx), stock, rtol=1e-5, atol=1e-6)


def test_latter_half_self_attention_only_touches_those_layers(load_wan):
    dm = load_wan().get_model_object("diffusion_model")
    lora = LoRA(dm, rank=2, alpha=2.0, targets="self_attn", blocks="latter_half")
    assert lora.names == [f"blocks.1.self_attn.{n}" for n in "qkvo"]
    before = {k: v.clone() for k, v in dm.state_dict().items()}
    randomise(lora)
    lora.merge()
    changed = {k for k, v in dm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.1.self_attn.{n}.weight" for n in "qkvo"}


def test_saved_file_loads_in_stock_comfy_without_warnings_and_matches(load_wan, tmp_path, caplog):
    import comfy.sd
    import comfy.utils

    model = load_wan()
    dm = model.get_model_object("diffusion_model")
    x, t, ctx = dit_inputs(dm)
    lora = LoRA(dm, rank=4, alpha=8.0, targets="self_attn,cross_attn,ffn", blocks="all", seed=5).attach()
    randomise(lora)
    hooked = run(dm, x, t, ctx)
    path = lora.save(tmp_path / "style.safetensors", training={"steps": 3, "lr": 1e-4})
    lora.detach()

    meta = read_metadata(path)
    assert (meta["family"], meta["width"], meta["rank"], meta["alpha"]) == ("wan", 128, 4, 8.0)
    assert meta["training"] == {"steps": 3, "lr": 1e-4} and "ffn.2" in meta["targets"]

    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path)), 1.0, 0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()], caplog.text
    assert len(patched.patches) == 2 * 10  # 2 blocks x (4 self + 4 cross + 2 ffn) weights
    patched.patch_model()
    try:
        stock_loaded = run(patched.get_model_object("diffusion_model"), x, t, ctx)
    finally:
        patched.unpatch_model()
    torch.testing.assert_close(stock_loaded, hooked, rtol=1e-4, atol=1e-5)

    again = load_lora(path, dm)  # and back into histenc, hooks attached
    torch.testing.assert_close(run(dm, x, t, ctx), hooked, rtol=1e-6, atol=1e-7)
    assert again.targets == lora.targets and again.alpha == 8.0
    again.detach()


def test_lora_for_another_width_is_refused_naming_both(load_wan, tmp_path):
    dm = load_wan().get_model_object("diffusion_model")
    tensors = {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 5120),
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 4),
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0),
    }
    save_weights(tmp_path / "big.safetensors", tensors, {"format": "histenc.lora", "version": 1, "width": 5120})
    with pytest.raises(ValueError, match="width 5120 but this model has width 128"):
        load_lora(tmp_path / "big.safetensors", dm)
    save_weights(tmp_path / "anon.safetensors", tensors, {"format": "other", "version": 1})
    with pytest.raises(ValueError, match="width 5120 but this model has width 128"):
        load_lora(tmp_path / "anon.safetensors", dm)


# --- HunyuanVideo ---------------------------------------------------------------------------------
TINY_HUNYUAN = "histenc_tiny_hunyuan_video.safetensors"


def hunyuan_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    return x, torch.tensor([400.0]), torch.randn(1, 5, 4096, generator=g), torch.randn(1, 768, generator=g)


def run_hunyuan(dm, x, t, ctx, y):
    with torch.no_grad():
        return dm(x, t, ctx, y=y, guidance=torch.tensor([6.0]))


def test_hunyuan_targets_blocks_and_file_keys(load_wan):
    from histenc.lora import HUNYUAN, layout_of

    dm = load_wan(TINY_HUNYUAN).get_model_object("diffusion_model")  # one double and one single block
    assert layout_of(dm) is HUNYUAN
    lora = LoRA(dm, rank=2, alpha=2.0, targets="img_attn,single", blocks="all")
    assert lora.names == [
        "double_blocks.0.img_attn.qkv",
        "double_blocks.0.img_attn.proj",
        "single_blocks.0.linear1",
        "single_blocks.0.linear2",
    ]
    assert LoRA(dm, 2, 2.0, "all", "latter_half").names == [
        f"single_blocks.0.{t}" for t in HUNYUAN.blocks["single_blocks"]
    ]
    every = LoRA(dm, 2, 2.0, "all", "all")
    keys = set(every.comfy_state_dict())
    # the released checkpoint's names, which ComfyUI's HunyuanVideo key map translates back
    for name in ("double_blocks.0.img_attn_qkv", "double_blocks.0.txt_mlp.fc2", "double_blocks.0.img_mod.linear"):
        assert f"diffusion_model.{name}.lora_up.weight" in keys
    assert "diffusion_model.single_blocks.0.modulation.linear.alpha" in keys
    assert all(HUNYUAN.module_name(HUNYUAN.file_key(n)) == n for n in every.names)
    with pytest.raises(ValueError, match="target 'self_attn' is not one of this hunyuan_video model's"):
        LoRA(dm, 2, 2.0, "self_attn")
    with pytest.raises(ValueError, match="none of the chosen blocks"):
        LoRA(dm, 2, 2.0, "img_attn", "1")  # block 1 is the single block, which has no img_attn


def test_hunyuan_lora_loads_in_stock_comfy_and_matches_the_hooks_and_a_merge(load_wan, tmp_path, caplog):
    import comfy.sd
    import comfy.utils

    model = load_wan(TINY_HUNYUAN)
    dm = model.get_model_object("diffusion_model")
    x, t, ctx, y = hunyuan_inputs()
    stock = run_hunyuan(dm, x, t, ctx, y)
    lora = LoRA(dm, rank=3, alpha=6.0, targets="all", blocks="all", seed=2).attach()
    randomise(lora)
    hooked = run_hunyuan(dm, x, t, ctx, y)
    assert (hooked - stock).abs().max() > 1e-3
    path = lora.save(tmp_path / "hy.safetensors")
    lora.detach()
    assert read_metadata(path)["family"] == "hunyuan_video"

    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path)), 1.0, 0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()], caplog.text
    assert sorted(patched.patches) == sorted(f"diffusion_model.{n}.weight" for n in lora.names)
    patched.patch_model()
    try:
        torch.testing.assert_close(run_hunyuan(patched.get_model_object("diffusion_model"), x, t, ctx, y), hooked)
    finally:
        patched.unpatch_model()

    again = load_lora(path, dm, attach=False)  # back into histenc: same layers, merged by hand = the hooks
    assert again.names == lora.names and again.alpha == 6.0
    again.merge()
    torch.testing.assert_close(run_hunyuan(dm, x, t, ctx, y), hooked, rtol=1e-4, atol=1e-5)
    again.unmerge()
    torch.testing.assert_close(run_hunyuan(dm, x, t, ctx, y), stock, rtol=1e-5, atol=1e-6)


def test_auto_targets_are_each_familys_attention_and_mlp():
    from histenc.lora import HUNYUAN, WAN

    assert parse_targets("auto", WAN) == parse_targets("self_attn,cross_attn,ffn", WAN)
    hunyuan = parse_targets("auto", HUNYUAN)
    assert hunyuan == parse_targets("img_attn,txt_attn,img_mlp,txt_mlp,single", HUNYUAN)
    assert "img_mod.lin" not in hunyuan and "linear1" in hunyuan  # modulation stays out unless asked for
    with pytest.raises(ValueError, match="use 'auto', groups"):
        parse_targets("self_attn", HUNYUAN)
