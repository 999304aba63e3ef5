"""ModelInfo: the facts about a DiT, read once from the module (and the host's model class)."""

import pytest
import torch

from histenc.dit.info import ModelInfo, dit_family, dit_info
from histenc.train.toy_dit import WanModel


def wan(in_dim=16, out_dim=16):
    torch.manual_seed(0)
    return WanModel(
        dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=in_dim, out_dim=out_dim, text_dim=8, freq_dim=16
    )


def test_wan_t2v_i2v_and_ti2v_by_channels_and_the_hosts_class():
    t2v = dit_info(wan())
    assert (t2v.family, t2v.version, t2v.variant, t2v.width, t2v.blocks, t2v.heads) == (
        "wan",
        "wan2.1",
        "t2v",
        32,
        2,
        2,
    )
    assert (t2v.spatial_compression, t2v.temporal_compression, t2v.pixel_step, t2v.default_fps) == (8, 4, 16, 16.0)
    i2v = dit_info(wan(in_dim=36))
    assert i2v.variant == "i2v" and i2v.i2v and i2v.input_channels == 36 and i2v.latent_channels == 16
    ti2v = dit_info(wan(in_dim=48, out_dim=48), version="wan2.2", per_frame_timesteps=True)
    assert ti2v.variant == "ti2v" and ti2v.per_frame_timesteps and ti2v.spatial_compression == 16
    assert ti2v.pixel_step == 32 and ti2v.default_fps == 24.0


def test_unsupported_dit_and_bad_facts_are_one_sentence():
    with pytest.raises(ValueError, match="Linear, which has no context adapter"):
        dit_family(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="matches no Wan VAE"):
        dit_info(wan(in_dim=12, out_dim=12))
    with pytest.raises(ValueError, match="variant 'v2v' is not one of"):
        ModelInfo("wan", "wan2.1", "v2v", 32, 16, 16, 8, 4, (1, 2, 2), 2, 2, False)
    with pytest.raises(ValueError, match="fewer than the 16 latent channels"):
        ModelInfo("wan", "wan2.1", "t2v", 32, 16, 8, 8, 4, (1, 2, 2), 2, 2, False)
