"""The pack against FramePack's own model: the same random weights, the same inputs, the same numbers.

FramePack's ``HunyuanVideoTransformer3DModelPacked`` (../shared/refs/framepack) is built at toy size (2 heads of
128, 2 double and 2 single blocks, image projection and history embedders), saved sharded as FramePack publishes
it, and loaded through Load FramePack HunyuanVideo into ComfyUI's native model. The pack then runs the FramePack
Context (``framepack_f1``) with Apply FramePack Projections and the start image's SigLIP features; FramePack
runs its forward with F1's slots as its demo builds them for section k of a long video: the start frame at
index 0, the last 16 / 2 / 1 frames of the zero-padded history at 1-16 (4x), 17-18 (2x) and 19 (1x), the
section at 20-28. The latent is 10x14 (a 5x7 patch grid, so 2x and 4x boxes reach past both edges).
"""

from __future__ import annotations

import pytest
import torch

from histenc.dit.hunyuan import IMAGE_KEY, ImageTokens
from histenc.framepack.schedule import parse_schedule
from scripts.fixture_framepack_hunyuan import framepack_model, write_shards

H, W, T = 10, 14, 9  # latent height, width, section frames (F1's window)
SLOTS = (16, 2, 1)  # F1's 4x, 2x and 1x slots, oldest first
TOLERANCE = 1e-5  # fp32: max |pack - FramePack| / max |FramePack|
SIGMA, GUIDANCE = 0.7, 10.0


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return framepack_model(seed=5, heads=2, double=2, single=2)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "video": torch.randn(1, 16, 1 + 10 * T, H, W, generator=g),  # start frame + sections 0..9, model space
        "x": torch.randn(1, 16, T, H, W, generator=g),
        "text": torch.randn(1, 7, 4096, generator=g) * 0.5,
        "pooled": torch.randn(1, 768, generator=g),
        "image": torch.randn(1, 12, 1152, generator=g),
    }


@pytest.fixture(scope="module")
def loaded(pack, comfy, reference, tmp_path_factory):
    """(native MODEL, projections) through Load FramePack HunyuanVideo, from FramePack's sharded files."""
    import folder_paths
    from comfyui_histenc.histenc_nodes.framepack_hunyuan import LoadFramePackHunyuan

    folder = tmp_path_factory.mktemp("framepack")
    first = write_shards(reference, folder / "diffusion_models")
    saved = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(first.parent)], {".safetensors"})
    try:
        out = LoadFramePackHunyuan.execute(first.name, "default", "")
    finally:
        folder_paths.folder_names_and_paths["diffusion_models"] = saved
    return out.args[0], out.args[1]


def framepack_out(reference, inputs, section=None, pad=0):
    """FramePack's forward at batch size 1; ``section``: F1's slots for that section of ``inputs['video']``."""
    text = inputs["text"]
    mask = torch.ones(1, text.shape[1] + pad, dtype=torch.long)
    mask[:, text.shape[1] :] = 0
    text = torch.cat([text, text.new_zeros(1, pad, text.shape[2])], dim=1)
    kwargs = {}
    if section is not None:
        video = inputs["video"][:, :, : 1 + section * T]
        history = torch.cat([video.new_zeros(1, 16, sum(SLOTS), H, W), video], dim=2)
        x4, x2, x1 = history[:, :, -sum(SLOTS) :].split(SLOTS, dim=2)
        kwargs = dict(
            latent_indices=torch.arange(20, 20 + T)[None],
            clean_latents=torch.cat([video[:, :, :1], x1], dim=2),
            clean_latent_indices=torch.tensor([[0, 19]]),
            clean_latents_2x=x2,
            clean_latent_2x_indices=torch.tensor([[17, 18]]),
            clean_latents_4x=x4,
            clean_latent_4x_indices=torch.arange(1, 17)[None],
        )
    with torch.no_grad():
        return reference(
            inputs["x"],
            torch.tensor([SIGMA * 1000.0]),
            text,
            mask,
            inputs["pooled"],
            torch.tensor([GUIDANCE * 1000.0]),
            image_embeddings=inputs["image"],
            return_dict=False,
            **kwargs,
        )[0]


def pack_out(loaded, inputs, section=None, pad=0, image=True):
    """The native model with the pack's F1 context (history: the start frame and sections 0..k-1) and image."""
    from comfyui_histenc.histenc_nodes._common import attach_context
    from comfyui_histenc.histenc_nodes.framepack import FramePackContextNode
    from comfyui_histenc.histenc_nodes.framepack_hunyuan import ApplyFramePackProjections

    model, projections = loaded
    sources, history = [], None
    if section is not None:
        sources = FramePackContextNode.execute(model, parse_schedule("framepack_f1"), "time", 1.0, 30.0)[0]
        sources = ApplyFramePackProjections.execute(sources, projections)[0]
        history = inputs["video"][:, :, : 1 + section * T]
    m = attach_context(model, sources, history)
    options = m.model_options["transformer_options"]
    if image:
        options[IMAGE_KEY] = ImageTokens(inputs["image"])
    text, mask = inputs["text"], None
    if pad:
        text = torch.cat([text, text.new_zeros(1, pad, text.shape[2])], dim=1)
        mask = torch.ones(1, text.shape[1], dtype=torch.long)
        mask[:, -pad:] = 0
    m.patch_model()
    try:
        with torch.no_grad():
            dm = m.get_model_object("diffusion_model")
            return dm(
                inputs["x"],
                torch.tensor([SIGMA * 1000.0]),
                text,
                y=inputs["pooled"],
                guidance=torch.tensor([GUIDANCE]),
                attention_mask=mask,
                transformer_options=options,
            )
    finally:
        m.unpatch_model()


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("section", [None, 0, 1, 2, 10], ids=["no-context", "s0", "s1", "s2", "s10"])
def test_the_pack_computes_what_framepack_computes(reference, loaded, inputs, section):
    ours, theirs = pack_out(loaded, inputs, section), framepack_out(reference, inputs, section)
    assert ours.shape == theirs.shape and float(theirs.abs().max()) > 0.5
    assert relative(ours, theirs) <= TOLERANCE, relative(ours, theirs)


def test_padded_text_drops_its_padding_as_framepack_does(reference, loaded, inputs):
    """A prompt padded with a mask (FramePack pads to 512): the joint keeps the tokens the mask keeps."""
    ours, theirs = pack_out(loaded, inputs, 1, pad=5), framepack_out(reference, inputs, 1, pad=5)
    assert relative(ours, theirs) <= TOLERANCE, relative(ours, theirs)


def test_each_rule_matters(reference, loaded, inputs, monkeypatch):
    """Without the time origin, the edge rule or the image tokens the pack is far from FramePack, so the tests
    above see each of them."""
    from histenc.dit import hunyuan

    theirs = framepack_out(reference, inputs, 2)
    assert relative(pack_out(loaded, inputs, 2, image=False), theirs) > 1e-2
    plain = hunyuan.box_rope
    with monkeypatch.context() as m:
        m.setattr(hunyuan, "time_origin", lambda positions: 0.0)  # the section at t = 0, as before F1
        assert relative(pack_out(loaded, inputs, 2), theirs) > 1e-2
    with monkeypatch.context() as m:
        m.setattr(hunyuan, "box_rope", lambda embed, p, e, cells=None: plain(embed, p, e))  # no replicate edge
        assert relative(pack_out(loaded, inputs, 2), theirs) > 1e-3
