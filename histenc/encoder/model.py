"""History encoder: a long latent history compressed into a few tokens at the DiT's own width.

Two branches, summed:

* LR branch: the history at low resolution (the encoding rate H x W x T on top of the latent),
  run through the encoder's own copy of the DiT patch embedding, initialised from the DiT, so
  the base tokens already live in the DiT's input feature space. ``lr_input`` says how the low
  resolution is made (``lowres``): ``"latent"`` area-averages the latents over each rate box
  (``lr_downsample="pick"`` keeps one latent pixel per box instead), ``"pixels"`` is the paper's
  pixel downsample -> VAE encode, through a ``PixelCodec`` given with ``set_codec``.
* HR branch: causal 3D convolutions with SiLU on the full-resolution history (temporal strides
  first, channels 64 -> 128 -> 256 -> 512), attention inside each time step at 512, then a
  zero-initialised 1x1x1 convolution to the DiT width, added as a residual. An untrained
  encoder therefore gives exactly the LR tokens.

Token boxes and RoPE: a token covers ``T_rate x H_rate x W_rate`` DiT cells. Its position is
the start of that box (time counted in latent frames so the last history frame is at t = -1,
the section at t >= 0) and its extent the box size, clipped to real (unpadded) frames and
cells, so the DiT adapter averages the rotary phases over exactly what the token summarises.

Spatial sizes that do not divide by rate x patch are padded at the bottom/right by repeating
the edge (``spatial_pad=True``, the default, since 480p at 4x4 gives 7.5 token rows); a history
whose frame count is not a multiple of the temporal group gets a provisional last token from
its newest frames repeated, replaced once the group is complete. A history shorter than one
group (1-frame sections at a T = 2 rate) is such a provisional group, so every section length works.

Long-video use: keep one encoder object for the whole generation and hand ``context`` the
growing history each section. The encoder's ``state`` caches the tokens of finished groups and
the causal convolutions' last input frames, so each section costs the encoding of that section
only; positions are recomputed from the history length on every call, so cached tokens move
further into the past as the history grows. ``histenc.encoder_io.save_state`` stores the state
for resuming.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..context import ContextSource, ContextTokens, SectionGrid, check_history, grid_positions
from .layers import ResidualBranch, parse_rate, rate_name, stride_plan
from .lowres import LR_INPUTS, PixelCodec, latent_lowres, pixel_lowres
from .state import EncoderState

VARIANTS = ("full", "only_lr", "without_lr", "large_patchifier")
DOWNSAMPLES = ("area", "pick")


@dataclass(frozen=True)
class EncoderConfig:
    width: int
    channels: int = 16
    rate: tuple[int, int, int] = (4, 4, 2)  # H x W x T, as the paper writes it
    patch: tuple[int, int, int] = (1, 2, 2)  # the DiT's (t, h, w) patch
    variant: str = "full"
    hidden: tuple[int, ...] = (64, 128, 256, 512)
    heads: int = 8
    lr_downsample: str = "area"
    spatial_pad: bool = True
    lr_input: str = "latent"  # "latent" (area-averaged latents) or "pixels" (the paper's VAE branch)

    def __post_init__(self):
        object.__setattr__(self, "rate", parse_rate(self.rate))
        object.__setattr__(self, "width", _positive_ints("width", [self.width], 1, "the DiT's width, e.g. 1536")[0])
        object.__setattr__(self, "channels", _positive_ints("channels", [self.channels], 1, "e.g. 16")[0])
        object.__setattr__(self, "patch", _positive_ints("patch", self.patch, 3, "the DiT's patch, e.g. [1, 2, 2]"))
        hidden = _positive_ints("hidden", self.hidden, None, "channel counts such as [64, 128, 256, 512]")
        object.__setattr__(self, "hidden", hidden)
        heads = _positive_ints("heads", [self.heads], 1, f"a head count that divides {hidden[-1]}, e.g. 8")[0]
        object.__setattr__(self, "heads", heads)
        if self.variant not in VARIANTS:
            raise ValueError(f"encoder variant {self.variant!r} is unknown; use one of {', '.join(VARIANTS)}.")
        if self.lr_downsample not in DOWNSAMPLES:
            raise ValueError(f"lr_downsample {self.lr_downsample!r} is unknown; use 'area' or 'pick'.")
        if not isinstance(self.spatial_pad, bool):
            raise ValueError(f"encoder spatial_pad is {self.spatial_pad!r}; use true or false.")
        if self.lr_input not in LR_INPUTS:
            raise ValueError(f"encoder lr_input {self.lr_input!r} is unknown; use 'latent' or 'pixels'.")
        if self.lr_input == "pixels" and not self.uses_lr:
            raise ValueError(
                f"encoder lr_input 'pixels' needs a low-resolution branch but variant {self.variant!r} has none; "
                "use lr_input 'latent' or the 'full' or 'only_lr' variant."
            )
        if self.uses_hr and hidden[-1] % heads:
            raise ValueError(
                f"encoder heads is {heads} but the last hidden width {hidden[-1]} does not divide by it; "
                "use a divisor such as 8."
            )

    @property
    def box(self) -> tuple[int, int, int]:
        """Latent frames, rows and columns one token covers: rate x patch per axis."""
        rh, rw, rt = self.rate
        pt, ph, pw = self.patch
        return rt * pt, rh * ph, rw * pw

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        gt, gh, gw = self.box
        return -(-frames // gt), -(-height // gh), -(-width // gw)

    def tokens_for(self, frames: int, height: int, width: int) -> int:
        t, h, w = self.token_grid(frames, height, width)
        return t * h * w

    @property
    def uses_lr(self) -> bool:
        return self.variant in ("full", "only_lr")

    @property
    def uses_hr(self) -> bool:
        return self.variant in ("full", "without_lr")

    def to_meta(self) -> dict[str, Any]:
        meta = asdict(self)
        meta["rate"] = rate_name(self.rate)
        return meta

    @staticmethod
    def from_meta(meta: dict[str, Any]) -> "EncoderConfig":
        """The configuration a file's metadata describes; files without ``lr_input`` are latent-averaging."""
        if "width" not in meta:
            raise ValueError("encoder metadata has no 'width'; the file was not written by this pack.")
        keys = EncoderConfig.__dataclass_fields__.keys()
        return EncoderConfig(**{k: meta[k] for k in keys if k in meta})


def _positive_ints(name: str, value, length: int | None, example: str) -> tuple[int, ...]:
    """``value`` as a tuple of positive integers (of ``length`` when given), or one sentence naming it."""
    try:
        items = tuple(operator.index(v) for v in value if not isinstance(v, bool))
        ok = bool(items) and len(items) == len(value) and min(items) >= 1
    except TypeError:
        ok = False
    if not ok or (length is not None and len(items) != length):
        shown = value[0] if length == 1 and isinstance(value, list) else value
        raise ValueError(f"encoder {name} is {shown!r}; use {example}.")
    return items


class HistoryEncoder(nn.Module, ContextSource):
    """Context source: history latents -> compressed tokens at the DiT width, encoded incrementally.

    ``context(history, grid, dit)`` keeps an ``EncoderState``: when the history it is given
    extends the one it saw last, only the new frames are encoded; otherwise it starts over.
    ``forward(history)`` is the stateless full pass (for training).
    """

    def __init__(self, config: EncoderConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else EncoderConfig(**kwargs)
        cfg = self.config
        gt, gh, gw = cfg.box
        if cfg.variant == "large_patchifier":
            self.large_embed = nn.Conv3d(cfg.channels, cfg.width, kernel_size=cfg.box, stride=cfg.box)
        if cfg.uses_lr:
            self.lr_embed = nn.Conv3d(cfg.channels, cfg.width, kernel_size=cfg.patch, stride=cfg.patch)
        if cfg.uses_hr:
            self.hr = ResidualBranch(cfg.channels, stride_plan(gt, gh, gw), cfg.hidden, cfg.heads)
            self.hr_out = nn.Conv3d(self.hr.out_channels, cfg.width, kernel_size=1)
            if cfg.uses_lr:  # residual on top of the LR tokens: starts as exactly nothing
                nn.init.zeros_(self.hr_out.weight)
                nn.init.zeros_(self.hr_out.bias)
        self.state: EncoderState | None = None
        self.codec: PixelCodec | None = None  # the VAE of the pixel LR branch (not saved with the weights)
        self.keep_features = False
        self.chunk_groups = 8  # stride groups per pass when encoding a long stretch (bounds memory only)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dit(cls, dit, rate="4x4x2", variant: str = "full", **kwargs) -> "HistoryEncoder":
        """A fresh encoder matching ``dit`` (width, channels, patch), its patch embedding copied in."""
        cfg = EncoderConfig(
            width=int(dit.width),
            channels=int(dit.in_channels),
            rate=rate,
            patch=tuple(dit.patch),
            variant=variant,
            **kwargs,
        )
        enc = cls(cfg)
        enc.init_from_dit(dit)
        return enc

    @torch.no_grad()
    def init_from_dit(self, dit) -> None:
        """Copy the DiT's latent patch embedding into the LR projection (or spread it over the large kernel)."""
        self.check_dit(dit)
        weight, bias = (t.float() for t in dit.latent_patch_weights())
        if self.config.uses_lr:
            self.lr_embed.weight.copy_(weight)
            self.lr_embed.bias.copy_(bias)
        if self.config.variant == "large_patchifier":
            # Each DiT kernel tap is repeated over its rate box and divided by the box volume, so
            # the large kernel starts as "area average, then the DiT's patch embedding".
            rh, rw, rt = self.config.rate
            big = weight.repeat_interleave(rt, 2).repeat_interleave(rh, 3).repeat_interleave(rw, 4) / (rt * rh * rw)
            self.large_embed.weight.copy_(big)
            self.large_embed.bias.copy_(bias)

    def set_codec(self, codec: PixelCodec | None) -> None:
        """Give the VAE the ``"pixels"`` LR branch decodes and encodes with; tokens made with another are dropped."""
        if codec is not None and not isinstance(codec, PixelCodec):
            raise ValueError(
                f"the encoder's VAE must have decode(latents) and encode(frames), got {type(codec).__name__}; "
                "connect a VAE."
            )
        if codec is not self.codec:
            self.codec = codec
            self.reset()

    # ---- validation -----------------------------------------------------------------------
    def check_dit(self, dit) -> None:
        cfg = self.config
        if int(dit.width) != cfg.width:
            raise ValueError(
                f"this history encoder outputs {cfg.width}-wide tokens but the model's DiT is {dit.width} wide; "
                "load or build an encoder for this model."
            )
        if int(dit.in_channels) != cfg.channels:
            raise ValueError(
                f"this history encoder reads {cfg.channels}-channel latents but the model uses {dit.in_channels}; "
                "load or build an encoder for this model family."
            )
        if tuple(dit.patch) != cfg.patch:
            raise ValueError(
                f"this history encoder was built for the DiT patch {cfg.patch} but the model patchifies by "
                f"{tuple(dit.patch)}; build an encoder for this model."
            )

    def check_history(self, history: torch.Tensor) -> None:
        check_history(history, self.config.channels)
        _, gh, gw = self.config.box
        frames, height, width = history.shape[2:]
        if frames < 1:
            raise ValueError(
                "history has 0 latent frames; the history encoder summarises frames before the section, "
                "so give it at least 1 (the first section has no history to encode)."
            )
        if not self.config.spatial_pad and (height % gh or width % gw):
            raise ValueError(
                f"history is {width}x{height} latent pixels, not divisible by rate x patch = {gw}x{gh}; "
                "use a size divisible by it or turn spatial padding on."
            )

    # ---- the two branches ---------------------------------------------------------------------
    def _param_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype

    def _pad_space(self, x: torch.Tensor) -> torch.Tensor:
        _, gh, gw = self.config.box
        ph, pw = -x.shape[3] % gh, -x.shape[4] % gw
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
        return x

    def _lr_tokens(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.lr_input == "latent":
            return self.lr_embed(latent_lowres(x, cfg.rate, cfg.lr_downsample))
        if self.codec is None:
            raise ValueError(
                "this history encoder's low-resolution branch reads pixels (lr_input 'pixels') but no VAE was "
                "given; connect the model's VAE to New / Load History Encoder."
            )
        with torch.no_grad():  # the VAE is fixed; gradients reach the encoder from the patch embedding on
            y = pixel_lowres(x.detach(), cfg.rate, cfg.lr_downsample, self.codec)
        return self.lr_embed(y.to(x))

    def encode_chunk(self, x: torch.Tensor, caches: list | None = None):
        """One padded chunk [B, C, L, Hp, Wp], L a multiple of the group -> (tokens, features, caches)."""
        out, feats, new_caches = None, None, caches
        if self.config.variant == "large_patchifier":
            out = self.large_embed(x)
        if self.config.uses_lr:
            out = self._lr_tokens(x)
        if self.config.uses_hr:
            feats, new_caches = self.hr(x, caches)
            hr = self.hr_out(feats)
            out = hr if out is None else out + hr
            feats = feats.flatten(2).transpose(1, 2)
        return out.flatten(2).transpose(1, 2), feats, new_caches

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Stateless full pass: history [B, C, T, H, W] -> tokens [B, N, D] (gradients flow)."""
        self.check_history(history)
        gt = self.config.box[0]
        device, dtype = self._param_dtype()
        x = self._pad_space(history.to(device=device, dtype=dtype))
        short = -x.shape[2] % gt
        if short:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, short, -1, -1)], dim=2)
        return self.encode_chunk(x)[0]

    # ---- incremental encoding ----------------------------------------------------------------------
    def new_state(self, history: torch.Tensor, keep_features: bool | None = None) -> EncoderState:
        b, c, _, h, w = history.shape
        keep = self.keep_features if keep_features is None else keep_features
        return EncoderState(b, c, h, w, keeps_features=bool(keep and self.config.uses_hr))

    def append(self, state: EncoderState, frames: torch.Tensor) -> EncoderState:
        """Encode ``frames`` [B, C, L, H, W] after what ``state`` has seen; work grows with L only."""
        gt = self.config.box[0]
        device, dtype = self._param_dtype()
        frames = frames.to(device=device, dtype=dtype)
        buf = frames if state.pending is None else torch.cat([state.pending.to(frames), frames], dim=2)
        full = (buf.shape[2] // gt) * gt
        step = self.chunk_groups * gt if self.chunk_groups > 0 else max(full, gt)
        for start in range(0, full, step):
            x = self._pad_space(buf[:, :, start : min(start + step, full)])
            tokens, feats, caches = self.encode_chunk(x, state.caches or None)
            state.caches = caches if caches is not None else []
            state.add(tokens, feats)
        if full:
            state.committed += full
            state.last_committed = buf[:, :, full - 1 : full].clone()
        state.pending = buf[:, :, full:].clone() if full < buf.shape[2] else None
        return state

    def _provisional(self, state: EncoderState):
        """Tokens for an unfinished group: its frames with the newest one repeated; the state is untouched."""
        if not state.pending_frames:
            return None, None
        gt = self.config.box[0]
        p = state.pending
        x = torch.cat([p, p[:, :, -1:].expand(-1, -1, gt - p.shape[2], -1, -1)], dim=2)
        tokens, feats, _ = self.encode_chunk(self._pad_space(x), state.caches or None)
        return tokens, feats

    def sync(self, history: torch.Tensor) -> EncoderState:
        """Bring ``self.state`` up to ``history``: append the new frames, or start over if it is not a continuation."""
        self.check_history(history)  # the history stays where it is: only its new frames are moved
        want_feats = self.keep_features and self.config.uses_hr
        st = self.state
        if st is None or not st.continues(history) or (want_feats and not st.keeps_features):
            st = self.new_state(history)
        if history.shape[2] > st.seen:
            self.append(st, history[:, :, st.seen :])
        self.state = st
        return st

    def reset(self) -> None:
        self.state = None

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens [B, N, D] (and penultimate features [B, N, 512] when kept) for the whole history."""
        st = self.sync(history)
        extra_tokens, extra_feats = self._provisional(st)
        parts = [t for t in (st.tokens(), extra_tokens) if t is not None]
        tokens = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        feats = None
        if st.keeps_features:
            fparts = [f for f in (st.features(), extra_feats) if f is not None]
            feats = torch.cat(fparts, dim=1) if len(fparts) > 1 else fparts[0]
        return tokens, feats

    # ---- context contract --------------------------------------------------------------------
    def token_boxes(self, frames: int, height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start positions and extents [N, 3] (t, h, w) in DiT cells for a history of this size."""
        cfg = self.config
        gt, gh, gw = cfg.box
        pt, ph, pw = cfg.patch
        rh, rw, rt = cfg.rate
        nt, nh, nw = cfg.token_grid(frames, height, width)
        cells_h, cells_w = -(-height // ph), -(-width // pw)
        positions = grid_positions(nt, nh, nw, t0=-frames / pt, step=(gt / pt, rh, rw), device=device)
        start = torch.arange(nt, device=device) * gt
        ext_t = (torch.clamp(frames - start, max=gt) + pt - 1) // pt
        ext_h = torch.clamp(cells_h - torch.arange(nh, device=device) * rh, max=rh)
        ext_w = torch.clamp(cells_w - torch.arange(nw, device=device) * rw, max=rw)
        extent = torch.stack(torch.meshgrid(ext_t, ext_h, ext_w, indexing="ij"), dim=-1).reshape(-1, 3)
        return positions, extent.long()

    def tokens_for(self, grid: SectionGrid, history_frames: int) -> int:
        return self.config.tokens_for(history_frames, grid.height, grid.width) if history_frames else 0

    def describe(self) -> dict:
        return {"type": "HistoryEncoder", **self.config.to_meta()}

    def weight_bytes(self) -> int:
        """Both branches' weights, in the dtype and on the device the encoder was given (it runs beside the DiT)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def context(self, history: torch.Tensor, grid: SectionGrid, dit) -> ContextTokens:
        self.check_dit(dit)
        self.check_history(history)
        if tuple(history.shape[3:]) != (grid.height, grid.width):
            raise ValueError(
                f"history is {history.shape[4]}x{history.shape[3]} latent pixels but the section is "
                f"{grid.width}x{grid.height}; generate the history at the same width and height."
            )
        tokens, _ = self.encode(history)
        positions, extent = self.token_boxes(*history.shape[2:], device=tokens.device)
        return ContextTokens(tokens, positions, extent)

    def features(self, history: torch.Tensor) -> torch.Tensor:
        """Penultimate HR features [B, N, 512] of the history, one per context token (cross-attention input)."""
        if not self.config.uses_hr:
            raise ValueError(
                f"the {self.config.variant!r} encoder has no HR branch, so it has no features for cross-attention; "
                "use the 'full' or 'without_lr' variant."
            )
        self.keep_features = True
        return self.encode(history)[1]
