"""The low-resolution branch's two inputs: latent averaging and the paper's pixel downsample -> VAE encode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from histenc.context import SectionGrid
from histenc.encoder.lowres import PixelCodec, latent_lowres, pixel_lowres
from histenc.encoder.model import HistoryEncoder
from histenc.train.toy_dit import PixelLatents
from tests.helpers import ToyDiT

SMALL = dict(hidden=(8, 16, 32, 32), heads=4)


def history(frames=8, height=16, width=16, seed=0):
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


def pixel_encoder(dit, rate="2x2x2", variant="full", trained=True, **kwargs):
    enc = HistoryEncoder.from_dit(dit, rate=rate, variant=variant, lr_input="pixels", **SMALL, **kwargs)
    enc.set_codec(PixelLatents(16, seed=3))
    if trained and enc.config.uses_hr:  # the learned branch starts at zero; give it weights so it takes part
        with torch.no_grad():
            enc.hr_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return enc


class Counting:
    """PixelLatents that counts the groups it decodes (incremental encoding must not decode a group twice)."""

    def __init__(self):
        self.inner, self.decoded = PixelLatents(16, seed=3), 0

    def decode(self, latents):
        self.decoded += 1
        return self.inner.decode(latents)

    def encode(self, frames):
        return self.inner.encode(frames)


def test_pixel_branch_is_decode_pixel_downsample_encode():
    codec = PixelLatents(16, seed=3)
    x = codec.encode(torch.rand(4, 32, 32, 3))  # latents the map can give (16 channels hold 12 pixel values)
    got = pixel_lowres(x, (2, 2, 2), "area", codec)
    frames = codec.decode(x)  # [4, 32, 32, 3]
    groups = frames.view(2, 2, 32, 32, 3).mean(1).permute(0, 3, 1, 2)  # time: mean of each group's frames
    small = F.avg_pool2d(groups, 2).permute(0, 2, 3, 1)  # space: 2x2 pixel blocks
    torch.testing.assert_close(got, codec.encode(small), rtol=1e-5, atol=1e-5)
    newest = pixel_lowres(x, (2, 2, 2), "pick", codec)  # pick: the newest frame of each group
    torch.testing.assert_close(newest[:, :, 1], pixel_lowres(x[:, :, 3:4], (2, 2, 1), "area", codec)[:, :, 0])
    # at rate 1 an invertible VAE gives the latents back; latent averaging agrees only there
    torch.testing.assert_close(pixel_lowres(x, (1, 1, 1), "area", codec), x, rtol=1e-5, atol=1e-5)
    assert (got - latent_lowres(x, (2, 2, 2), "area")).abs().max() > 0.1


def test_pixels_keep_the_layout_inside_a_token_that_latent_averaging_mixes():
    """Left and right halves of every 8x8-pixel box differ: pixels keep it, averaged latents blur it away."""
    codec = PixelLatents(16, seed=3)
    frames = torch.zeros(2, 32, 32, 3)
    frames[:, :, 0::8] = frames[:, :, 1::8] = frames[:, :, 2::8] = frames[:, :, 3::8] = 1.0
    x = codec.encode(frames)
    small = codec.decode(pixel_lowres(x, (4, 4, 2), "area", codec))  # an 8x8 image of the 32x32 frames
    pixel_err = (small.repeat_interleave(4, 1).repeat_interleave(4, 2) - frames[:1]).abs().mean()
    coarse = latent_lowres(x, (4, 4, 2), "area")  # 4x4 latent cells, each the average over its box
    latent_err = (codec.decode(coarse.repeat_interleave(4, 3).repeat_interleave(4, 4)) - frames[:1]).abs().mean()
    assert float(pixel_err) < 1e-5 and float(latent_err) > 0.49, (float(pixel_err), float(latent_err))


@pytest.mark.parametrize("rate, section", [("2x2x2", 1), ("4x4x2", 3), ("2x2x4", 4)])
@pytest.mark.parametrize("variant", ["full", "only_lr"])
def test_pixel_branch_incremental_equals_full(rate, section, variant):
    dit = ToyDiT(width=32)
    enc = pixel_encoder(dit, rate, variant)
    h = history(frames=12, height=16, width=24)
    lengths = range(section, 13, section)
    full = [enc(h[:, :, :frames]) for frames in lengths]  # stateless full passes
    codec = Counting()
    enc.set_codec(codec)
    grid = SectionGrid(section, 16, 24)
    for frames, want in zip(lengths, full):
        torch.testing.assert_close(enc.context(h[:, :, :frames], grid, dit).tokens, want, rtol=1e-5, atol=1e-5)
    group = enc.config.box[0]
    provisional = sum(1 for frames in lengths if frames % group)
    assert codec.decoded == 12 // group + provisional  # every finished group decoded once, never again


def test_untrained_pixel_encoder_is_the_dit_patch_embedding_of_the_vae_lowres_history():
    dit = ToyDiT(width=32)
    enc = pixel_encoder(dit, "2x2x2", "full", trained=False)
    h = history(frames=4)
    torch.testing.assert_close(enc(h), dit.patchify(pixel_lowres(h, (2, 2, 2), "area", enc.codec)), atol=1e-5, rtol=0)


def test_pixel_branch_refuses_without_a_vae_and_with_a_wrong_one():
    dit = ToyDiT(width=32)
    enc = HistoryEncoder.from_dit(dit, rate="2x2x2", lr_input="pixels", **SMALL)
    with pytest.raises(ValueError, match="^this history encoder's low-resolution branch reads pixels .* no VAE was"):
        enc.context(history(frames=2), SectionGrid(2, 16, 16), dit)
    with pytest.raises(ValueError, match="must have decode\\(latents\\) and encode\\(frames\\), got int"):
        enc.set_codec(3)
    enc.set_codec(PixelLatents(12, seed=0))  # a VAE with 12 latent channels, not the model's 16
    with pytest.raises(ValueError, match="^the VAE could not decode the model's 16-channel latents \\(einsum"):
        enc.context(history(frames=2), SectionGrid(2, 16, 16), dit)


def test_changing_the_vae_drops_the_cached_tokens():
    dit = ToyDiT(width=32)
    enc = pixel_encoder(dit, "2x2x2")
    h = history(frames=4)
    enc.context(h, SectionGrid(2, 16, 16), dit)
    enc.set_codec(PixelLatents(16, seed=4))
    assert enc.state is None
    torch.testing.assert_close(enc.context(h, SectionGrid(2, 16, 16), dit).tokens, enc(h), rtol=1e-5, atol=1e-5)


def test_pixel_codec_is_a_protocol_the_fixed_latent_map_meets():
    assert isinstance(PixelLatents(16), PixelCodec) and isinstance(Counting(), PixelCodec)
    assert not isinstance(object(), PixelCodec)
