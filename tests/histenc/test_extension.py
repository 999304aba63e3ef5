"""Video-extension conditioning: task draws, masks and padding, zero-init projection leaves Wan unchanged."""

import pytest
import torch

from histenc.extension import (
    ExtendedPatchEmbedding,
    ExtensionProjection,
    ExtensionTask,
    condition_inputs,
    pad_condition,
    sample_task,
)


def test_given_frames_per_kind():
    assert ExtensionTask("first", 2).given(6).tolist() == [True, True, False, False, False, False]
    assert ExtensionTask("last", 1).given(4).tolist() == [False, False, False, True]
    assert ExtensionTask("first_last", 1).given(4).tolist() == [True, False, False, True]
    assert not ExtensionTask("none").given(3).any()
    with pytest.raises(ValueError, match="leaving none to generate"):
        ExtensionTask("first_last", 2).given(4)
    with pytest.raises(ValueError, match="kind 'middle'"):
        ExtensionTask("middle", 1)


def test_multi_task_draws_drop_about_one_in_ten():
    g = torch.Generator().manual_seed(0)
    draws = [sample_task(g, max_frames=3) for _ in range(4000)]
    dropped = sum(d.kind == "none" for d in draws) / len(draws)
    assert 0.08 < dropped < 0.12
    assert {d.kind for d in draws} == {"first", "last", "first_last", "none"}
    assert {d.frames for d in draws if d.kind != "none"} == {1, 2, 3}
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [sample_task(g1, 3) for _ in range(20)] == [sample_task(g2, 3) for _ in range(20)]


def test_condition_is_zero_off_the_given_frames():
    latents = torch.randn(2, 4, 5, 3, 3)
    cond, mask = condition_inputs(latents, ExtensionTask("last", 2))
    assert mask.shape == (2, 1, 5, 3, 3) and mask[:, :, 3:].eq(1).all() and mask[:, :, :3].eq(0).all()
    assert torch.equal(cond[:, :, 3:], latents[:, :, 3:]) and cond[:, :, :3].eq(0).all()
    frames = torch.randn(1, 4, 2, 3, 3)
    padded, m = pad_condition(frames, 6, at="first")
    assert (
        torch.equal(padded[:, :, :2], frames)
        and padded[:, :, 2:].eq(0).all()
        and m[0, 0, :, 0, 0].tolist() == [1, 1, 0, 0, 0, 0]
    )


def test_zero_init_projection_leaves_wan_output_unchanged(comfy, load_wan):
    import comfy.model_management

    model = load_wan("histenc_tiny_wan21_t2v.safetensors")
    dm = model.get_model_object("diffusion_model")
    g = torch.Generator().manual_seed(2)
    x, text, t = (
        torch.randn(2, 16, 3, 8, 8, generator=g),
        torch.randn(1, 6, 4096, generator=g),
        torch.tensor([500.0] * 2),
    )
    cond, mask = condition_inputs(torch.randn(1, 16, 3, 8, 8, generator=g), ExtensionTask("first", 1))
    projection = ExtensionProjection(16, dm.dim, tuple(dm.patch_size))

    def call(m):
        comfy.model_management.load_models_gpu([m])
        with torch.no_grad():
            return m.get_model_object("diffusion_model")(x, t, text.expand(2, -1, -1), transformer_options={})

    stock = call(model)
    extended = model.clone()
    extended.add_object_patch(
        "diffusion_model.patch_embedding", ExtendedPatchEmbedding(dm.patch_embedding, projection, cond, mask)
    )
    assert torch.equal(call(extended), stock)
    with torch.no_grad():  # once trained (non-zero), the given frames reach the DiT
        projection.proj.weight.normal_(generator=g)
    assert (call(extended) - stock).abs().max() > 1e-4
