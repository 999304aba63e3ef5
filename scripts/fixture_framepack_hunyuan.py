"""A tiny FramePack HunyuanVideo checkpoint in FramePack's own diffusers key layout, generated deterministically.

The keys follow the module tree of FramePack's HunyuanVideoTransformer3DModelPacked (x_embedder,
context_embedder token refiner, time_text_embed, transformer_blocks, single_transformer_blocks,
norm_out, proj_out, clean_x_embedder, image_projection), written out here module by module and
independently of the converter's mapping table, so a test that converts this file checks the table.
Sizes match the tiny native fixture: hidden 128 (one head of 128), one double and one single block,
two refiner blocks, text width 4096, pooled CLIP width 768, guidance embedding, 16 latent channels.

    python scripts/fixture_framepack_hunyuan.py OUT_DIR   # writes OUT_DIR/diffusion_models/<NAME>
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

NAME = "histenc_tiny_framepack_hunyuan.safetensors"
HIDDEN, HEAD_DIM, LATENT, TEXT, POOLED, SIGLIP, MLP_RATIO = 128, 128, 16, 4096, 768, 1152, 4


class _Builder:
    """Collects (key, tensor) pairs with seeded values: weights ~ 1/sqrt(fan_in), norms near one."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def _rand(self, *shape, scale=1.0):
        return torch.randn(shape, generator=self.g) * scale

    def linear(self, name, out_f, in_f, scale=None):
        self.sd[f"{name}.weight"] = self._rand(out_f, in_f, scale=scale or in_f**-0.5)
        self.sd[f"{name}.bias"] = self._rand(out_f, scale=0.02)

    def conv3d(self, name, out_c, in_c, kernel):
        fan_in = in_c * kernel[0] * kernel[1] * kernel[2]
        self.sd[f"{name}.weight"] = self._rand(out_c, in_c, *kernel, scale=fan_in**-0.5)
        self.sd[f"{name}.bias"] = self._rand(out_c, scale=0.02)

    def layer_norm(self, name, dim):
        self.sd[f"{name}.weight"] = 1.0 + self._rand(dim, scale=0.05)
        self.sd[f"{name}.bias"] = self._rand(dim, scale=0.02)

    def rms_norm(self, name, dim):
        self.sd[f"{name}.weight"] = 1.0 + self._rand(dim, scale=0.05)

    # diffusers building blocks ------------------------------------------------------------------
    def timestep_embedding(self, name, dim):  # TimestepEmbedding(256 -> dim)
        self.linear(f"{name}.linear_1", dim, 256)
        self.linear(f"{name}.linear_2", dim, dim)

    def text_projection(self, name, in_f, dim):  # PixArtAlphaTextProjection(act "silu")
        self.linear(f"{name}.linear_1", dim, in_f)
        self.linear(f"{name}.linear_2", dim, dim)

    def feed_forward(self, name, dim, mult):  # FeedForward: net.0 (activation with .proj), net.1 dropout, net.2
        self.linear(f"{name}.net.0.proj", dim * mult, dim)
        self.linear(f"{name}.net.2", dim, dim * mult)

    def attention(self, name, dim, qk_norm=False, added_kv=False, pre_only=False):
        for p in ("to_q", "to_k", "to_v"):
            self.linear(f"{name}.{p}", dim, dim)
        if qk_norm:
            self.rms_norm(f"{name}.norm_q", HEAD_DIM)
            self.rms_norm(f"{name}.norm_k", HEAD_DIM)
        if added_kv:
            for p in ("add_q_proj", "add_k_proj", "add_v_proj"):
                self.linear(f"{name}.{p}", dim, dim)
            self.rms_norm(f"{name}.norm_added_q", HEAD_DIM)
            self.rms_norm(f"{name}.norm_added_k", HEAD_DIM)
            self.linear(f"{name}.to_add_out", dim, dim)
        if not pre_only:
            self.linear(f"{name}.to_out.0", dim, dim)

    def ada_norm(self, name, dim, chunks):  # AdaLayerNormZero(Single) / Continuous / HunyuanVideoAdaNorm
        self.linear(f"{name}.linear", chunks * dim, dim, scale=0.1)


def framepack_hunyuan_state_dict(
    seed: int = 0, clean_x_embedder: bool = True, image_projection: bool = True, double: int = 1, single: int = 1
) -> dict[str, torch.Tensor]:
    """The state dict of a toy HunyuanVideoTransformer3DModelPacked (has_image_proj, has_clean_x_embedder)."""
    b, d = _Builder(seed), HIDDEN
    b.conv3d("x_embedder.proj", d, LATENT, (1, 2, 2))
    # context_embedder: HunyuanVideoTokenRefiner with two refiner blocks
    b.timestep_embedding("context_embedder.time_text_embed.timestep_embedder", d)
    b.text_projection("context_embedder.time_text_embed.text_embedder", TEXT, d)
    b.linear("context_embedder.proj_in", d, TEXT)
    for i in range(2):
        block = f"context_embedder.token_refiner.refiner_blocks.{i}"
        b.layer_norm(f"{block}.norm1", d)
        b.attention(f"{block}.attn", d)
        b.layer_norm(f"{block}.norm2", d)
        b.feed_forward(f"{block}.ff", d, MLP_RATIO)
        b.ada_norm(f"{block}.norm_out", d, 2)
    # time_text_embed: CombinedTimestepGuidanceTextProjEmbeddings
    b.timestep_embedding("time_text_embed.timestep_embedder", d)
    b.timestep_embedding("time_text_embed.guidance_embedder", d)
    b.text_projection("time_text_embed.text_embedder", POOLED, d)
    for i in range(double):  # HunyuanVideoTransformerBlock (norm2 / norm2_context have no parameters)
        block = f"transformer_blocks.{i}"
        b.ada_norm(f"{block}.norm1", d, 6)
        b.ada_norm(f"{block}.norm1_context", d, 6)
        b.attention(f"{block}.attn", d, qk_norm=True, added_kv=True)
        b.feed_forward(f"{block}.ff", d, MLP_RATIO)
        b.feed_forward(f"{block}.ff_context", d, MLP_RATIO)
    for i in range(single):  # HunyuanVideoSingleTransformerBlock
        block = f"single_transformer_blocks.{i}"
        b.attention(f"{block}.attn", d, qk_norm=True, pre_only=True)
        b.ada_norm(f"{block}.norm", d, 3)
        b.linear(f"{block}.proj_mlp", d * MLP_RATIO, d)
        b.linear(f"{block}.proj_out", d, d + d * MLP_RATIO)
    b.ada_norm("norm_out", d, 2)  # AdaLayerNormContinuous: (scale, shift)
    b.linear("proj_out", LATENT * 1 * 2 * 2, d)
    if image_projection:  # ClipVisionProjection: SigLIP width -> 3 * hidden -> hidden
        b.linear("image_projection.up", 3 * d, SIGLIP)
        b.linear("image_projection.down", d, 3 * d)
    if clean_x_embedder:  # HunyuanVideoPatchEmbedForCleanLatents
        b.conv3d("clean_x_embedder.proj", d, LATENT, (1, 2, 2))
        b.conv3d("clean_x_embedder.proj_2x", d, LATENT, (2, 4, 4))
        b.conv3d("clean_x_embedder.proj_4x", d, LATENT, (4, 8, 8))
    return {k: v.contiguous() for k, v in b.sd.items()}


def write(models: Path, seed: int = 11, force: bool = False) -> Path:
    """Write the fixture into ``models/diffusion_models`` (ComfyUI's models folder layout)."""
    from safetensors.torch import save_file

    path = Path(models) / "diffusion_models" / NAME
    if force or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(framepack_hunyuan_state_dict(seed), str(path), metadata={"histenc_fixture": "1"})
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "models"), force=True))
