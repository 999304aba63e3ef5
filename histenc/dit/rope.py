"""N-axis rotary embedding in the layout Wan and Flux-style DiTs use ([..., d/2, 2, 2] rotations).

The adapters use the model's own embedder; this one exists so the core (tests, training,
planners) can reason about phases without a host.
"""

from __future__ import annotations

import torch


def rope_1d(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Rotation matrices [B, N, dim/2, 2, 2] for positions [B, N]."""
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (theta**scale)
    angles = torch.einsum("...n,d->...nd", pos.to(torch.float32), omega)
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).unflatten(-1, (2, 2)).float()


class RopeND(torch.nn.Module):
    """Concatenated per-axis RoPE; ``forward(ids [B, N, A]) -> [B, 1, N, d/2, 2, 2]``."""

    def __init__(self, dim: int, theta: float, axes_dim: list[int]):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, list(axes_dim)

    @staticmethod
    def for_head_dim(head_dim: int, theta: float = 10000.0) -> "RopeND":
        """Wan's split of a head's channels into (t, h, w) bands."""
        d = head_dim
        return RopeND(d, theta, [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bands = [rope_1d(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])]
        return torch.cat(bands, dim=-3).unsqueeze(1)


class MovedPositions:
    """``embed`` evaluated at ``shift + position * scale`` per axis: the host's rope_options, for context tokens.

    A host that scales or shifts the section's positions (Wan's ``rope_options``: ``scale_t``, ``shift_y``, ...)
    must do the same to the context tokens, or their distance to the section changes. Box offsets go through
    the same map, so a coarse token still averages the phases of the cells it covers.
    """

    AXES = (("scale_t", "shift_t"), ("scale_y", "shift_y"), ("scale_x", "shift_x"))

    def __init__(self, embed, options: dict):
        self.embed, self.axes_dim = embed, embed.axes_dim
        self.scale = [float(options.get(s, 1.0)) for s, _ in self.AXES]
        self.shift = [float(options.get(t, 0.0)) for _, t in self.AXES]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids * ids.new_tensor(self.scale) + ids.new_tensor(self.shift))


def box_rope(embed, positions: torch.Tensor, extent: torch.Tensor | None, cells=None) -> torch.Tensor:
    """RoPE of tokens that each cover a box of cells: the mean phase (cos, sin) over the box.

    ``embed`` is the family's EmbedND-like module (``axes_dim`` and ``__call__(ids [1, N, 3])``).
    Every rotary band depends on one axis only, so the box mean is the mean over that axis alone:
    three small evaluations instead of one per cell. ``cells`` is the section's grid (t, h, w): a box
    reaching past its last row or column counts the edge cell in their place, which is FramePack's
    replicate padding of the rotary maps before pooling them (time is not bounded by the grid).
    Returns [1, N, 1, d/2, 2, 2] like Wan's freqs.
    """
    n = positions.shape[0]
    positions = positions.float()
    if extent is None or n == 0 or bool((extent == 1).all()):
        return embed(positions.unsqueeze(0)).movedim(1, 2)
    extent = extent.long()
    bands = []
    for axis, width in enumerate(embed.axes_dim):
        e = extent[:, axis]
        emax = int(e.max())
        offsets = torch.arange(emax, device=positions.device, dtype=torch.float32)
        ids = positions.unsqueeze(1).repeat(1, emax, 1)  # [N, E, 3]
        ids[:, :, axis] += offsets
        if cells is not None and axis > 0:
            ids[:, :, axis] = ids[:, :, axis].clamp(max=float(cells[axis]) - 1)
        rope = embed(ids.reshape(1, n * emax, 3)).reshape(n, emax, -1, 2, 2)  # [N, E, d/2, 2, 2]
        weight = (offsets.unsqueeze(0) < e.unsqueeze(1)).float() / e.unsqueeze(1).float()  # [N, E]
        mean = (rope * weight[:, :, None, None, None]).sum(1)
        start = sum(embed.axes_dim[:axis]) // 2
        bands.append(mean[:, start : start + width // 2])
    return torch.cat(bands, dim=1)[None, :, None]
