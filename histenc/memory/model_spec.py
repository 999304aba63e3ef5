"""The DiT as the VRAM planner sees it: widths, block shapes and bytes, from presets or a loaded model.

Wan 2.1 / 2.2 and HunyuanVideo (double and single blocks) are described by ``ModelSpec``; a loaded
model's block bytes are measured from its tensors' storage (fp8 with scales, GGUF blocks and
quantised tensors count what they store, not their dequantised size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..dit.info import ModelInfo

GB = 1024**3
TEXT_TOKENS = 512  # Wan's T5 context length
HUNYUAN_TEXT_TOKENS = 256  # HunyuanVideo's LLaVA-Llama text tokens, joined to the image tokens in every block
LOADER_PROCESS = int(0.8 * GB)  # the host process (torch, ComfyUI) beside the loader's two copies of the weights


@dataclass(frozen=True)
class ModelSpec:
    """A DiT as the planner sees it; bytes are per element of the stored weights.

    ``family`` "wan": ``layers`` equal blocks. "hunyuan_video": ``layers`` counts the double-stream blocks
    (image and text streams, each with qkv + proj, an MLP and modulation) and, last, ``single_layers``
    single-stream blocks (linear1 to 3d + ffn, linear2 from d + ffn, modulation); its text passes the txt_in
    refiner and joins the image tokens in every block's attention.
    """

    name: str
    width: int
    ffn: int
    layers: int
    heads: int
    weight_bytes: float = 2.0  # 2 = bf16 / fp16, 1 = fp8
    compute_bytes: int = 2
    latent_channels: int = 16
    in_channels: int = 16
    text_width: int = 4096
    freq_dim: int = 256
    patch: tuple[int, int, int] = (1, 2, 2)
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    fps: float = 16.0
    i2v: bool = False
    per_frame_timesteps: bool = False
    block_bytes: int | None = None  # measured from a loaded model (exact); None: from the layer shapes
    other_bytes: int | None = None
    family: str = "wan"
    single_layers: int = 0  # HunyuanVideo: of ``layers``, the single-stream blocks (run after the double ones)
    single_block_bytes: int | None = None  # measured, as block_bytes
    text_tokens: int = TEXT_TOKENS
    vec_width: int = 768  # HunyuanVideo's pooled CLIP-L vector (vector_in); 0 without one
    guidance: bool = True  # HunyuanVideo's guidance embedding (guidance_in)

    @property
    def hunyuan(self) -> bool:
        return self.family == "hunyuan_video"

    def block_params(self) -> int:
        """Parameters of one block (HunyuanVideo: one double-stream block)."""
        d, f = self.width, self.ffn
        if self.hunyuan:
            head = d // self.heads
            stream = 6 * d * d + 6 * d + 3 * d * d + 3 * d + 2 * head + d * d + d + (d * f + f + f * d + d)
            return 2 * stream  # image and text streams: modulation, qkv, q/k norms, proj, MLP
        attn = 4 * (d * d + d) + 2 * d  # q, k, v, o with bias; RMS norms on q and k
        cross = attn + (2 * (d * d + d) + d if self.i2v else 0)  # i2v adds k_img, v_img and a norm
        return attn + cross + 2 * d + (d * f + f + f * d + d) + 6 * d  # norm3, ffn, modulation

    def single_block_params(self) -> int:
        """Parameters of one HunyuanVideo single-stream block (0 for Wan)."""
        if not self.hunyuan:
            return 0
        d, f, head = self.width, self.ffn, self.width // self.heads
        return d * (3 * d + f) + 3 * d + f + (d + f) * d + d + 2 * head + 3 * d * d + 3 * d

    def other_params(self) -> int:
        d, pp = self.width, math.prod(self.patch)
        out = self.latent_channels * pp
        if self.hunyuan:
            n = self.in_channels * d * pp + d  # img_in
            mlp = lambda i: i * d + d + d * d + d  # noqa: E731  MLPEmbedder
            n += mlp(256) + (mlp(self.vec_width) if self.vec_width else 0) + (mlp(256) if self.guidance else 0)
            n += self.text_width * d + d + mlp(256) + mlp(self.text_width)  # txt_in embedders
            n += 2 * (2 * d * d + 2 * d + 4 * d + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d)  # 2 refiners
            return n + d * 2 * d + 2 * d + d * out + out  # final layer
        n = self.in_channels * d * pp + d  # patch embedding
        n += self.text_width * d + d + d * d + d  # text embedding
        n += self.freq_dim * d + d + d * d + d  # time embedding
        n += d * 6 * d + 6 * d  # time projection
        n += d * out + out + 2 * d  # head and its modulation
        if self.i2v:
            n += 2 * 1280 + 1280 * 1280 + 1280 + 1280 * d + d + 2 * d  # CLIP image projection
        return n

    @property
    def block(self) -> int:
        """Bytes of the largest block (HunyuanVideo: a double-stream one): what a swap slot holds."""
        return self.block_bytes if self.block_bytes is not None else int(self.block_params() * self.weight_bytes)

    @property
    def single_block(self) -> int:
        if self.single_block_bytes is not None:
            return self.single_block_bytes
        return int(self.single_block_params() * self.weight_bytes)

    def block_sizes(self) -> list[int]:
        """Bytes of every block in execution order (histenc.dit.info.dit_blocks' order)."""
        return [self.block] * (self.layers - self.single_layers) + [self.single_block] * self.single_layers

    def swap_bytes(self, n: int) -> int:
        """Bytes kept off the GPU when the first ``n`` blocks in execution order are swapped."""
        return sum(self.block_sizes()[:n])

    @property
    def cast_elements(self) -> int:
        """Elements of the largest weight matrix (upcast from fp8 one layer at a time)."""
        return self.width * (3 * self.width + self.ffn if self.hunyuan else self.ffn)

    @property
    def other(self) -> int:
        return self.other_bytes if self.other_bytes is not None else int(self.other_params() * self.weight_bytes)

    @property
    def weights(self) -> int:
        return sum(self.block_sizes()) + self.other


PRESETS = {
    "wan2.1-1.3b": ModelSpec("Wan2.1-1.3B bf16", 1536, 8960, 30, 12),
    "wan2.1-14b": ModelSpec("Wan2.1-14B bf16", 5120, 13824, 40, 40),
    "wan2.1-14b-fp8": ModelSpec("Wan2.1-14B fp8", 5120, 13824, 40, 40, weight_bytes=1.0),
    "wan2.2-5b": ModelSpec(
        "Wan2.2-5B bf16",
        3072,
        14336,
        30,
        24,
        latent_channels=48,
        in_channels=48,
        vae_stride=(4, 16, 16),
        fps=24.0,
        per_frame_timesteps=True,
    ),
    # HunyuanVideo 13B (FramePack's checkpoints load into it too): 20 double + 40 single blocks, 30 fps as FramePack
    "hunyuan-13b": ModelSpec(
        "HunyuanVideo-13B bf16",
        3072,
        12288,
        60,
        24,
        fps=30.0,
        family="hunyuan_video",
        single_layers=40,
        text_tokens=HUNYUAN_TEXT_TOKENS,
    ),
    "hunyuan-13b-fp8": ModelSpec(
        "HunyuanVideo-13B fp8",
        3072,
        12288,
        60,
        24,
        weight_bytes=1.0,
        fps=30.0,
        family="hunyuan_video",
        single_layers=40,
        text_tokens=HUNYUAN_TEXT_TOKENS,
    ),
}


def preset(name: str) -> ModelSpec:
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"model {name!r} is not a planner preset; use one of {', '.join(PRESETS)}.")
    return PRESETS[key]


def stored_bytes(t) -> int:
    """Bytes a weight occupies in memory: its storage, not its logical dtype.

    Quantized weights report another element size than they store: ComfyUI 0.33's fp8 ``QuantizedTensor``
    reports the dtype it dequantises to (4 bytes on the CPU for a 1-byte weight) and a GGUF weight is raw
    uint8 blocks. Their ``nbytes`` is the storage (comfy_kitchen's property; a GGUF tensor's raw bytes).
    """
    return int(t.nbytes)


def spec_from_module(dm, info: ModelInfo, name: str = "loaded model", compute_bytes: int = 2) -> ModelSpec:
    """The spec of a loaded Wan or HunyuanVideo DiT, with block and other weight bytes measured from its tensors'
    storage."""
    from ..dit.info import dit_blocks
    from .offload import block_tensors

    blocks = [b for _, b in dit_blocks(dm)]
    if not blocks:
        raise ValueError(f"{type(dm).__name__} has no transformer blocks to plan for.")
    size = lambda m: sum(stored_bytes(t) for t in block_tensors(m))  # noqa: E731
    total = size(dm)
    if info.family == "hunyuan_video":
        return hunyuan_spec(dm, info, name, compute_bytes, size, total)
    b0 = blocks[0]
    block_bytes = size(b0)
    ffn = b0.ffn[0].weight
    latent = info.latent_channels
    return ModelSpec(
        name,
        int(dm.dim),
        int(b0.ffn[0].out_features),
        len(blocks),
        int(dm.num_heads),
        weight_bytes=stored_bytes(ffn) / math.prod(ffn.shape),  # Q4_K: 144 bytes per 256 weights
        compute_bytes=compute_bytes,
        latent_channels=latent,
        in_channels=int(dm.patch_embedding.weight.shape[1]),
        text_width=int(dm.text_embedding[0].in_features),
        freq_dim=int(dm.freq_dim),
        patch=tuple(int(p) for p in dm.patch_size),
        vae_stride=(info.temporal_compression, info.spatial_compression, info.spatial_compression),
        fps=info.default_fps,
        i2v=info.clip_vision,
        per_frame_timesteps=info.per_frame_timesteps,
        block_bytes=block_bytes,
        other_bytes=total - len(blocks) * block_bytes,
    )


def hunyuan_spec(dm, info: ModelInfo, name: str, compute_bytes: int, size, total: int) -> ModelSpec:
    """``spec_from_module`` for HunyuanVideo: double and single block bytes measured apart."""
    double, single = dm.double_blocks[0], dm.single_blocks[0] if len(dm.single_blocks) else None
    mlp = double.img_mlp[0].weight
    block_bytes, single_bytes = size(double), size(single) if single is not None else 0
    return ModelSpec(
        name,
        int(dm.hidden_size),
        int(double.img_mlp[0].out_features),
        len(dm.double_blocks) + len(dm.single_blocks),
        int(dm.num_heads),
        weight_bytes=stored_bytes(mlp) / math.prod(mlp.shape),
        compute_bytes=compute_bytes,
        latent_channels=info.latent_channels,
        in_channels=info.input_channels,
        text_width=int(dm.txt_in.input_embedder.in_features),
        patch=tuple(int(p) for p in dm.patch_size),
        vae_stride=(info.temporal_compression, info.spatial_compression, info.spatial_compression),
        fps=info.default_fps,
        i2v=info.clip_vision,
        block_bytes=block_bytes,
        other_bytes=total - len(dm.double_blocks) * block_bytes - len(dm.single_blocks) * single_bytes,
        family="hunyuan_video",
        single_layers=len(dm.single_blocks),
        single_block_bytes=single_bytes,
        text_tokens=HUNYUAN_TEXT_TOKENS,
        vec_width=int(dm.vector_in.in_layer.in_features) if dm.vector_in is not None else 0,
        guidance=dm.guidance_in is not None,
    )
