"""Frame-query pretraining: Omega, masking, the plain-torch Wan DiT, and the direction of the learning proof."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from histenc.train.frame_query import Clip, FrameQuerySettings, mask_history, query_batch, sample_query, section_freqs
from histenc.train.toy_dit import PixelLatents, WanModel
from tests.helpers import ToyDiT

REPO = Path(__file__).resolve().parents[3]


def test_omega_is_random_every_step_and_covers_the_whole_history():
    g = torch.Generator().manual_seed(0)
    draws = [tuple(sample_query(16, 2, g).tolist()) for _ in range(200)]
    assert len(set(draws)) > 50  # never a fixed set of positions
    seen = {i for d in draws for i in d}
    assert seen == set(range(16))
    assert all(len(set(d)) == 2 and list(d) == sorted(d) for d in draws)


def test_mask_keeps_omega_clean_and_noises_the_rest_at_logit_normal_levels():
    g = torch.Generator().manual_seed(1)
    history = torch.randn(1, 4, 400, 2, 2)
    omega = torch.tensor([3, 77, 200])
    masked, levels = mask_history(history, omega, g, mean=0.2, std=1.0)
    assert torch.equal(masked[:, :, omega], history[:, :, omega])
    others = torch.ones(400, dtype=torch.bool)
    others[omega] = False
    assert (levels[omega] == 0).all() and (levels[others] > 0).all()
    logits = torch.logit(levels[others])
    assert abs(float(logits.mean()) - 0.2) < 0.15 and abs(float(logits.std()) - 1.0) < 0.15
    assert not torch.allclose(masked[:, :, others], history[:, :, others])


def test_query_batch_places_queries_at_their_history_times():
    latents = torch.arange(20, dtype=torch.float32).view(1, 1, 20, 1, 1).expand(1, 16, 20, 2, 2).contiguous()
    clip = Clip(latents, [(0.0, torch.zeros(1, 1, 8))])
    fq = FrameQuerySettings(history_frames=8, query_frames=3)
    batch = query_batch([clip], fq, torch.Generator().manual_seed(2), "cpu")
    times = batch["times"]
    assert times.shape == (3,) and (times < 0).all() and (times >= -8).all()
    # x_t + t * target = noise and x_t - (1 - t) * target... check x0 = the queried history frames
    t = float(batch["timestep"]) / 1000
    x0 = batch["x_t"] - t * batch["target"]
    frames = x0[0, 0, :, 0, 0]
    assert torch.allclose(frames[1:] - frames[:-1], times[1:] - times[:-1], atol=1e-4)


def test_plain_wan_matches_comfyui_wan_on_the_tiny_fixture(comfy, fixture_models):
    import comfy.sd
    import comfy.utils

    path = fixture_models / "diffusion_models" / "histenc_tiny_wan21_t2v.safetensors"
    native = comfy.sd.load_diffusion_model(str(path)).get_model_object("diffusion_model")
    toy = WanModel(dim=128, ffn_dim=256, num_heads=1, num_layers=2)
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in comfy.utils.load_torch_file(str(path)).items()}
    toy.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 5, 4096, generator=g)
    with torch.no_grad():
        a, b = native(x, torch.tensor([400.0]), c), toy(x, torch.tensor([400.0]), c)
    assert torch.allclose(a.float(), b, atol=1e-4)
    # section_freqs at times 0..T-1 is exactly the stock RoPE of the section
    assert torch.allclose(section_freqs(toy, [0, 1, 2], 8, 8, "cpu"), toy.rope_encode(3, 8, 8))


def test_pixel_latents_round_trip():
    m = PixelLatents(16, seed=0)
    frames = torch.rand(3, 8, 6, 3)
    z = m.encode(frames)
    assert z.shape == (1, 16, 3, 4, 3)
    assert torch.allclose(m.decode(z), frames, atol=1e-5)


def test_short_clip_is_refused_in_one_sentence():
    from histenc.encoder.model import HistoryEncoder
    from histenc.dit.wan import WanPatchifier
    from histenc.train.frame_query import pretrain_history_encoder
    from histenc.train.loop import TrainSettings

    dit = WanModel(dim=32, ffn_dim=64, num_heads=1, num_layers=1, text_dim=8)
    enc = HistoryEncoder.from_dit(WanPatchifier(dit, torch.device("cpu"), torch.float32), hidden=(8, 8, 8, 8), heads=2)
    clip = Clip(torch.zeros(1, 16, 2, 4, 4), [(0.0, torch.zeros(1, 1, 8))])
    with pytest.raises(ValueError, match="has 2 latent frames but frame-query pretraining needs at least 3"):
        pretrain_history_encoder(
            dit,
            enc,
            [clip],
            TrainSettings(steps=1, lr=1e-3),
            "/nonexistent",
            FrameQuerySettings(history_frames=4, query_frames=2),
        )


def test_pretraining_beats_the_untrained_encoder_on_held_out_videos():
    """The measured direction. The large-patchifier comparison is reported by the bench script, not asserted:
    in these short CPU runs the baseline is level with or ahead of the proposed encoder."""
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("frame_query_proof", REPO / "bench" / "frame_query_proof.py")
    proof = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = proof  # dataclasses look their module up there
    spec.loader.exec_module(proof)
    rows = proof.run(proof.QUICK, log=lambda *_: None, variants=("full",))
    assert rows["pretrained full"]["psnr"] > rows["untrained full"]["psnr"] + proof.MARGIN_DB
    assert rows["pretrained full"]["ssim"] > rows["untrained full"]["ssim"]


def test_trainable_copy_of_an_encoder_made_under_inference_mode():
    """The copy trains (plain tensors, same values); the original keeps its values and state; the VAE is shared."""
    from histenc.context import SectionGrid
    from histenc.encoder.model import HistoryEncoder
    from histenc.train.frame_query import trainable_copy

    dit = ToyDiT(width=32)
    with torch.inference_mode():
        enc = HistoryEncoder.from_dit(dit, rate="2x2x2", lr_input="pixels", hidden=(8, 8, 8, 8), heads=2)
        vae = PixelLatents(16, seed=3)
        enc.set_codec(vae)
        history = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        enc.context(history, SectionGrid(2, 8, 8, dit.patch), dit)
    assert enc.state is not None and all(p.is_inference() for p in enc.parameters())
    copy = trainable_copy(enc)
    assert copy.codec is vae and copy.state is None and enc.state is not None
    for (name, a), b in zip(enc.named_parameters(), copy.parameters()):
        assert not b.is_inference() and torch.equal(a, b), name
    before = enc.hr_out.weight.clone()
    copy.hr_out.weight.requires_grad_(True)
    copy.hr_out.weight.sum().backward()
    with torch.no_grad():
        copy.hr_out.weight.add_(1.0)
    assert torch.equal(enc.hr_out.weight, before)  # the graph's encoder is not the one that trained
