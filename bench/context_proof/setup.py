"""What the encoder ranking compares, fixed before anything runs: the settings, the data, the contenders.

Settings. ``FULL`` is the committed setting; ``SMALL`` only proves the machinery (tests) and its
numbers rank nothing. The DiT is the plain-torch Wan 2.1 layout (histenc.train.toy_dit) with a
1x1x1 patch and width 128, so one token box of the 2x2x2 rate holds 2 frames x 2x2 latent pixels x
16 channels = 128 latent values: tokens as wide as the box (the paper's regime; 4x4x2 on Wan 14B
is 2048 values in 5120-wide tokens). The latent map is exactly invertible (``TexturedLatents``), so
every lost decibel is lost by the context, not by a VAE.

Contenders (same rate, hence the same number of context tokens; the raw-frames control has all of
the history's tokens): Table 1's large patchifier, only LR, without LR and the proposed encoder,
with the paper's pixel LR branch, the proposed encoder with the pack's latent-averaging branch, and
two controls: the untrained proposed encoder (no LoRA) and the raw masked frames (a LoRA only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from histenc.dit.wan import WanPatchifier
from histenc.encoder.model import HistoryEncoder
from histenc.train.toy_dit import WanModel
from histenc.window import SlidingWindow

from .textured import TexturedLatents, generate_set


@dataclass(frozen=True)
class BenchConfig:
    name: str = "full"
    size: int = 16  # pixels; latents are size / 2
    frames: int = 32  # per video
    train_videos: int = 96
    val_videos: int = 8
    test_videos: int = 32
    windows_per_test_video: int = 3  # 32 x 3 = 96 paired held-out queries
    history_frames: int = 8
    query_frames: int = 2
    dim: int = 128
    heads: int = 2
    layers: int = 2
    text_dim: int = 8
    rate: str = "2x2x2"
    hidden: tuple = (32, 64, 128, 128)
    enc_heads: int = 4
    rank: int = 64
    base_batch: int = 16
    base_lr: float = 1e-3
    base_max_steps: int = 6000
    base_patience: int = 5  # base validation every 2 x eval_every steps
    base_cooldown: int = 1000
    batch: int = 8
    max_steps: int = 2500
    eval_every: int = 100  # validation loss cadence (steps), also the checkpoint cadence
    patience: int = 3  # evaluations without a 1 % gain in validation loss: a plateau
    cooldown: int = 300  # steps of linear learning-rate decay to zero after the plateau
    min_gain: float = 0.01
    val_examples: int = 64
    sweep_steps: int = 300
    sweep_scales: tuple = (1 / 3, 1.0, 3.0)
    group_lr: tuple = (("lora", 5e-4), ("embed", 2e-4), ("hr", 1e-3))  # per parameter group, before the sweep
    seeds: tuple = (0, 1, 2)
    sample_steps: int = 8
    shift: float = 3.0
    data_seed: int = 0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["hidden"], d["seeds"], d["sweep_scales"] = list(self.hidden), list(self.seeds), list(self.sweep_scales)
        d["group_lr"] = [list(p) for p in self.group_lr]
        return d

    @property
    def queries(self) -> int:
        return self.test_videos * self.windows_per_test_video


FULL = BenchConfig()
SMALL = BenchConfig(
    name="small",
    train_videos=6,
    val_videos=2,
    test_videos=2,
    windows_per_test_video=2,
    hidden=(8, 16, 32, 32),
    rank=8,
    base_batch=4,
    base_max_steps=6,
    base_patience=1,
    base_cooldown=2,
    batch=2,
    max_steps=8,
    eval_every=4,
    patience=1,
    cooldown=2,
    val_examples=4,
    sweep_steps=2,
    sweep_scales=(1.0, 3.0),
    seeds=(0, 1),
    sample_steps=2,
)
SETTINGS = {"full": FULL, "small": SMALL}

# (name, variant, lr_input) of every trained encoder contender; the controls are handled by name
ENCODERS = {
    "large patchifier": ("large_patchifier", "latent"),
    "only LR (pixels)": ("only_lr", "pixels"),
    "without LR": ("without_lr", "latent"),
    "proposed (pixels)": ("full", "pixels"),
    "proposed (latent avg)": ("full", "latent"),
}
RAW = "raw frames (control)"
UNTRAINED = "untrained proposed (control)"
TRAINED = (*ENCODERS, RAW)  # contenders that get a LoRA (and their encoder) trained
# Table 1's order, worst to best: the ordering the verdict tests
PAPER_ORDER = ("large patchifier", "only LR (pixels)", "without LR", "proposed (pixels)")


@dataclass
class Data:
    codec: TexturedLatents
    train: torch.Tensor  # [N, C, T, H, W] latents
    val: torch.Tensor
    test: torch.Tensor
    train_pixels: torch.Tensor  # [N, T, H, W, 3]
    test_pixels: torch.Tensor


def make_data(cfg: BenchConfig) -> Data:
    codec = TexturedLatents(seed=cfg.data_seed)
    sets = []
    for offset, count in ((1000, cfg.train_videos), (5000, cfg.val_videos), (9000, cfg.test_videos)):
        videos = generate_set(count, cfg.data_seed + offset, frames=cfg.frames, size=cfg.size)
        pixels = torch.stack([v.frames for v in videos])
        sets.append((torch.cat([codec.encode(v.frames) for v in videos]), pixels))
    (train, train_px), (val, _), (test, test_px) = sets
    return Data(codec, train, val, test, train_px, test_px)


def make_dit(cfg: BenchConfig, seed: int = 0) -> WanModel:
    torch.manual_seed(seed)
    return WanModel(
        dim=cfg.dim,
        ffn_dim=2 * cfg.dim,
        num_heads=cfg.heads,
        num_layers=cfg.layers,
        in_dim=16,
        out_dim=16,
        text_dim=cfg.text_dim,
        patch_size=(1, 1, 1),
    )


def patchifier(dit: WanModel) -> WanPatchifier:
    return WanPatchifier(dit, torch.device("cpu"), torch.float32)


def make_source(cfg: BenchConfig, name: str, dit: WanModel, codec, seed: int):
    """The context source of contender ``name`` (fresh, seeded), before any training."""
    if name == RAW:
        return SlidingWindow(cfg.history_frames)
    variant, lr_input = ENCODERS["proposed (pixels)" if name == UNTRAINED else name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc = HistoryEncoder.from_dit(
            patchifier(dit), rate=cfg.rate, variant=variant, hidden=cfg.hidden, heads=cfg.enc_heads, lr_input=lr_input
        )
    if lr_input == "pixels":
        enc.set_codec(codec)
    enc.chunk_groups = 0
    return enc


def param_groups(trainer) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters by group: the LoRA, the encoder's patch embedding (LR or large), its HR branch."""
    groups = {"lora": list(trainer.lora.parameters()) if trainer.lora is not None else [], "embed": [], "hr": []}
    if trainer.encoder is not None:
        for name, p in trainer.encoder.named_parameters():
            groups["embed" if name.startswith(("lr_embed", "large_embed")) else "hr"].append(p)
    return {k: v for k, v in groups.items() if v}


def token_count(cfg: BenchConfig, name: str) -> int:
    lat = cfg.size // 2
    if name == RAW:
        return cfg.history_frames * lat * lat
    rh, rw, rt = (int(v) for v in cfg.rate.split("x"))
    return -(-cfg.history_frames // rt) * (lat // rh) * (lat // rw)
