"""Tiny Wan checkpoints in the exact key layouts of the real ones, generated deterministically.

The modules are ComfyUI's own classes instantiated at toy sizes, so the state dict keys are the
ones the stock UNETLoader / VAELoader detect. ComfyUI's Wan detector infers dim, ffn, layers and
channels from the weights but fixes num_heads = dim // 128 and text_dim = 4096, hence dim 128.

    python scripts/fixtures.py OUT_DIR   # writes OUT_DIR/{diffusion_models,vae}/*.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.host import import_comfy  # noqa: E402

WAN_DIT = {
    # file name: (model_type, in_dim, out_dim)
    "histenc_tiny_wan21_t2v.safetensors": ("t2v", 16, 16),
    "histenc_tiny_wan21_i2v.safetensors": ("i2v", 36, 16),
    "histenc_tiny_wan22_ti2v.safetensors": ("t2v", 48, 48),
    # the T2V layout with other weights: a second checkpoint of one class (Wan 2.2 14B's low-noise expert)
    "histenc_tiny_wan21_t2v_low_noise.safetensors": ("t2v", 16, 16),
}
WAN21_VAE = "histenc_tiny_wan21_vae.safetensors"
HUNYUAN_DIT = "histenc_tiny_hunyuan_video.safetensors"


def _seeded_init(module, seed: int) -> None:
    """Small random weights: outputs stay finite through sampling, norms start at one."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("gamma") or (".norm" in name or name.startswith("norm")) and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif "modulation" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                fan_in = max(1, p[0].numel()) if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def wan_dit_state_dict(model_type: str, in_dim: int, out_dim: int, seed: int = 0) -> dict:
    import torch
    from comfy.ldm.wan.model import WanModel

    model = WanModel(
        model_type=model_type,
        patch_size=(1, 2, 2),
        in_dim=in_dim,
        dim=128,
        ffn_dim=256,
        freq_dim=256,
        text_dim=4096,
        out_dim=out_dim,
        num_heads=1,
        num_layers=2,
        qk_norm=True,
        cross_attn_norm=True,
        eps=1e-6,
        operations=torch.nn,
        dtype=torch.float32,
    )
    _seeded_init(model, seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def hunyuan_dit_state_dict(seed: int = 0) -> dict:
    """HunyuanVideo T2V at toy size. The detector fixes heads = hidden // 128 and RoPE axes (16, 56, 56),
    so hidden is 128 (one head); one double and one single block; CLIP-L pooled vector and guidance
    embeddings as in the real model (without vector_in the detector would call it HunyuanImage 2.1)."""
    import dataclasses

    import torch
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, HunyuanVideoParams

    params = dict(
        in_channels=16,
        out_channels=16,
        vec_in_dim=768,
        context_in_dim=4096,
        hidden_size=128,
        mlp_ratio=4.0,
        num_heads=1,
        depth=1,
        depth_single_blocks=1,
        axes_dim=[16, 56, 56],
        theta=256,
        patch_size=[1, 2, 2],
        qkv_bias=True,
        guidance_embed=True,
        byt5=False,
        meanflow=False,
        use_cond_type_embedding=False,
        vision_in_dim=None,
    )
    # a feature flag a newer host adds (0.33: meanflow_sum) is off, as in the real checkpoint
    params.update({f.name: False for f in dataclasses.fields(HunyuanVideoParams) if f.name not in params})
    model = HunyuanVideo(**params, operations=torch.nn, dtype=torch.float32)
    _seeded_init(model, seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def wan21_vae_state_dict(seed: int = 0) -> dict:
    from comfy.ldm.wan.vae import WanVAE

    # ComfyUI's VAE layers skip weight initialisation (they expect a checkpoint), so every tensor is
    # set here from the seed; otherwise the fixture would hold whatever memory it was given.
    vae = WanVAE(
        dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    )
    _seeded_init(vae, seed)
    return {k: v.contiguous() for k, v in vae.state_dict().items()}


def write_fixtures(models: Path, force: bool = False) -> dict[str, Path]:
    """Write every fixture under ``models`` (ComfyUI's models folder layout); return name -> path."""
    import_comfy()
    from safetensors.torch import save_file

    out = {}
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (models / "vae").mkdir(parents=True, exist_ok=True)
    for i, (name, (kind, in_dim, out_dim)) in enumerate(WAN_DIT.items()):
        path = models / "diffusion_models" / name
        if force or not path.is_file():
            save_file(wan_dit_state_dict(kind, in_dim, out_dim, seed=i), str(path), metadata={"histenc_fixture": "1"})
        out[name] = path
    path = models / "diffusion_models" / HUNYUAN_DIT
    if force or not path.is_file():
        save_file(hunyuan_dit_state_dict(seed=7), str(path), metadata={"histenc_fixture": "1"})
    out[HUNYUAN_DIT] = path
    from scripts.fixture_framepack_hunyuan import NAME as FRAMEPACK_HUNYUAN, write as write_framepack_hunyuan

    out[FRAMEPACK_HUNYUAN] = write_framepack_hunyuan(models, force=force)
    path = models / "vae" / WAN21_VAE
    if force or not path.is_file():
        save_file(wan21_vae_state_dict(), str(path), metadata={"histenc_fixture": "1"})
    out[WAN21_VAE] = path
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    for name, path in write_fixtures(target, force=True).items():
        print(path)
