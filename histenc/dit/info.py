"""What model is this: one ``ModelInfo`` per loaded DiT, worked out once and handed down.

The ComfyUI side builds it from the MODEL (``histenc_nodes._common.model_info``: the DiT module plus
the host's model class and latent format); headless code (training, benchmarks) builds it from the
DiT module alone. Every place that needs the family, the I2V layout, the VAE's compression or the
per-frame timesteps asks this object instead of re-deriving it from channel counts.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = {"WanModel": "wan", "HunyuanVideo": "hunyuan_video"}
VARIANTS = ("t2v", "i2v", "ti2v")
# VAE compression (spatial, temporal) by latent channels of each family's VAE.
WAN_VAES = {16: (8, 4), 48: (16, 4)}
HUNYUAN_VAE = (8, 4)


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one DiT and its VAE that the pack's context modes, sampler and planner depend on.

    ``version`` is the name the pack's weight files record (wan2.1, wan2.2, hunyuan_video);
    ``variant`` is t2v, i2v (known frames enter through extra input channels: Wan I2V's mask and
    image channels) or ti2v (known frames replace latent frames and get t = 0: Wan 2.2 5B);
    ``input_channels`` is what the patch embedding takes (latent channels plus any conditioning);
    ``clip_vision`` says whether the DiT also takes CLIP-vision image tokens (Wan 2.1 I2V's ``img_emb``,
    HunyuanVideo's ``vision_in``).
    """

    family: str
    version: str
    variant: str
    width: int
    latent_channels: int
    input_channels: int
    spatial_compression: int
    temporal_compression: int
    patch: tuple[int, int, int]
    blocks: int
    heads: int
    per_frame_timesteps: bool
    clip_vision: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES.values():
            raise ValueError(f"model family {self.family!r} is not one of {sorted(FAMILIES.values())}.")
        if self.variant not in VARIANTS:
            raise ValueError(f"model variant {self.variant!r} is not one of {list(VARIANTS)}.")
        if min(self.width, self.latent_channels, self.spatial_compression, self.temporal_compression, self.blocks) < 1:
            raise ValueError(f"model facts must be positive, got {self}.")
        if self.input_channels < self.latent_channels:
            raise ValueError(
                f"the patch embedding takes {self.input_channels} channels, fewer than the "
                f"{self.latent_channels} latent channels; this is not a supported DiT."
            )

    @property
    def i2v(self) -> bool:
        """Known frames go through the image-conditioning channels (Wan I2V) rather than latent replacement."""
        return self.variant == "i2v"

    @property
    def default_fps(self) -> float:
        return 24.0 if self.version == "wan2.2" else 16.0 if self.family == "wan" else 24.0

    @property
    def pixel_step(self) -> int:
        """Width and height must be multiples of this: VAE compression times the DiT's spatial patch."""
        return self.spatial_compression * max(self.patch[1], self.patch[2])


def dit_family(dm) -> str:
    """The family of a DiT module, or one sentence saying it has no adapter."""
    name = type(dm).__name__
    if name not in FAMILIES:
        raise ValueError(
            f"the model's DiT is {name}, which has no context adapter yet; "
            "load a Wan 2.1 / 2.2 (WanModel) or HunyuanVideo model."
        )
    return FAMILIES[name]


def wan_info(dm, version: str | None = None, per_frame_timesteps: bool | None = None) -> ModelInfo:
    """ModelInfo of a native-layout WanModel. ``version`` / ``per_frame_timesteps`` come from the host's
    model class when known (ComfyUI's WAN21 / WAN22); otherwise the 48-channel VAE marks Wan 2.2 5B."""
    channels = int(dm.out_dim)
    inputs = int(dm.patch_embedding.weight.shape[1])
    if version is None:
        version = "wan2.2" if channels == 48 else "wan2.1"
    if per_frame_timesteps is None:
        per_frame_timesteps = version == "wan2.2" and channels == 48
    if inputs == 2 * channels + 4:
        variant = "i2v"
    elif per_frame_timesteps:
        variant = "ti2v"
    else:
        variant = "t2v"
    if channels not in WAN_VAES:
        raise ValueError(f"the Wan model has {channels} latent channels, which matches no Wan VAE (16 or 48).")
    spatial, temporal = WAN_VAES[channels]
    return ModelInfo(
        "wan",
        version,
        variant,
        int(dm.dim),
        channels,
        inputs,
        spatial,
        temporal,
        tuple(int(p) for p in dm.patch_size),
        len(dm.blocks),
        int(dm.num_heads),
        bool(per_frame_timesteps),
        dm.img_emb is not None,
    )


def hunyuan_info(dm) -> ModelInfo:
    """ModelInfo of ComfyUI's native HunyuanVideo (FramePack's checkpoints load into it too).

    Known frames always enter a HunyuanVideo section by latent replacement (t2v); extra input channels
    of an I2V checkpoint are fed zeros for history frames.
    """
    channels = int(dm.out_channels)
    inputs = int(dm.img_in.proj.weight.shape[1])
    return ModelInfo(
        "hunyuan_video",
        "hunyuan_video",
        "t2v",
        int(dm.hidden_size),
        channels,
        inputs,
        *HUNYUAN_VAE,
        tuple(int(p) for p in dm.patch_size),
        len(dm.double_blocks) + len(dm.single_blocks),
        int(dm.num_heads),
        False,
        dm.vision_in is not None,
    )


def dit_info(dm, version: str | None = None, per_frame_timesteps: bool | None = None) -> ModelInfo:
    """ModelInfo of any supported DiT module."""
    if dit_family(dm) == "wan":
        return wan_info(dm, version, per_frame_timesteps)
    return hunyuan_info(dm)


# The DiT's transformer blocks by family, in the order the forward runs them.
BLOCK_LISTS = {"wan": ("blocks",), "hunyuan_video": ("double_blocks", "single_blocks")}


def dit_blocks(dm) -> list[tuple[str, object]]:
    """(attribute path, module) of every transformer block in execution order: the one list block swap, its
    ComfyUI object patches and the VRAM planner share (Wan ``blocks.i``; HunyuanVideo ``double_blocks.i`` then
    ``single_blocks.i``)."""
    return [(f"{attr}.{i}", b) for attr in BLOCK_LISTS[dit_family(dm)] for i, b in enumerate(getattr(dm, attr))]
