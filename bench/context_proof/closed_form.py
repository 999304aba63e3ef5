"""G0: the floor and ceilings this data, rate and token width allow, in closed form (no training).

* floor: the mean-frame predictor (the training set's mean frame for every query): what a DiT that
  reads nothing from its context gets at best;
* ceiling of the LR input, per LR option: the best linear decode (least squares on the training
  set) of each token box's values from its low-resolution latent alone: what an LR token read by a
  linear map can give back;
* ceiling of a token: the best linear code of the box (PCA of the box's values) with as many numbers
  as a token is wide, and, for reference, with as many as an LR latent has. Wide tokens (width >=
  the box's values) make the first lossless: no encoder is limited by the width.

All are scored on the held-out queries' frames, in pixels, like the contenders.
"""

from __future__ import annotations

import torch

from histenc.encoder.lowres import latent_lowres, pixel_lowres
from histenc.encoder.layers import parse_rate

from .queries import scores

LOSSLESS_DB = 60.0  # a code this good is called lossless (float rounding limits it, not the code)


def boxes(latents: torch.Tensor, rate) -> torch.Tensor:
    """[N, C, T, H, W] -> [N * T/rt * H/rh * W/rw, rt * rh * rw * C]: the values of every token box."""
    rh, rw, rt = rate
    n, c, t, h, w = latents.shape
    x = latents[:, :, : t - t % rt].reshape(n, c, t // rt, rt, h // rh, rh, w // rw, rw)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(-1, rt * rh * rw * c)


def unbox(values: torch.Tensor, shape, rate) -> torch.Tensor:
    rh, rw, rt = rate
    n, c, t, h, w = shape
    x = values.reshape(n, t // rt, h // rh, w // rw, rt, rh, rw, c)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(n, c, t, h, w)


def lowres(latents: torch.Tensor, rate, option: str, codec) -> torch.Tensor:
    """LR latents [N, C, T/rt, H/rh, W/rw] of one LR option, one token box per LR latent pixel."""
    if option == "pixels":
        return pixel_lowres(latents, rate, "area", codec)
    return latent_lowres(latents, rate, "area")


def _flat_lr(lr: torch.Tensor) -> torch.Tensor:
    return lr.permute(0, 2, 3, 4, 1).reshape(-1, lr.shape[1])


def _windows(data, cfg, queries):
    """History windows of the held-out queries [Q, C, n, H, W] and the query frames' positions in them."""
    hist = torch.stack([data.test[q.video, :, q.start : q.start + cfg.history_frames] for q in queries])
    return hist


def _score_windows(recon: torch.Tensor, data, cfg, queries) -> dict:
    psnr, ssim = [], []
    for i, q in enumerate(queries):
        lat = recon[i : i + 1, :, list(q.omega)]
        truth = data.test_pixels[q.video, [q.start + j for j in q.omega]]
        p, s = scores(data.codec.decode(lat), truth)
        psnr.append(p)
        ssim.append(s)
    return {"psnr": sum(psnr) / len(psnr), "ssim": sum(ssim) / len(ssim), "per_query_psnr": psnr}


def mean_frame_floor(data, cfg, queries) -> dict:
    mean = data.train_pixels.flatten(0, 1).mean(0)  # [H, W, 3]
    psnr, ssim = [], []
    for q in queries:
        truth = data.test_pixels[q.video, [q.start + j for j in q.omega]]
        p, s = scores(mean.expand_as(truth), truth)
        psnr.append(p)
        ssim.append(s)
    return {"psnr": sum(psnr) / len(psnr), "ssim": sum(ssim) / len(ssim), "per_query_psnr": psnr}


def lr_linear_ceiling(data, cfg, queries, option: str) -> dict:
    rate = parse_rate(cfg.rate)
    train = data.train[:, :, : cfg.frames - cfg.frames % rate[2]]
    x = _flat_lr(lowres(train, rate, option, data.codec))
    y = boxes(train, rate)
    x1 = torch.cat([x, torch.ones(x.shape[0], 1)], 1).double()
    reg = 1e-6 * torch.eye(x1.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(x1.T @ x1 + reg, x1.T @ y.double()).float()
    hist = _windows(data, cfg, queries)
    xt = _flat_lr(lowres(hist, rate, option, data.codec))
    recon = unbox(torch.cat([xt, torch.ones(xt.shape[0], 1)], 1) @ weight, hist.shape, rate)
    return _score_windows(recon, data, cfg, queries)


def box_code_ceiling(data, cfg, queries, width: int) -> dict:
    rate = parse_rate(cfg.rate)
    train = boxes(data.train[:, :, : cfg.frames - cfg.frames % rate[2]], rate).double()
    mean = train.mean(0)
    _, _, vh = torch.linalg.svd(train - mean, full_matrices=False)
    basis = vh[: min(width, vh.shape[0])]  # [k, box values]
    hist = _windows(data, cfg, queries)
    b = boxes(hist, rate).double() - mean
    recon = unbox(((b @ basis.T) @ basis + mean).float(), hist.shape, rate)
    out = _score_windows(recon, data, cfg, queries)
    out["numbers"] = int(basis.shape[0])
    return out


def g0(data, cfg, queries) -> dict:
    rate = parse_rate(cfg.rate)
    box_values = rate[0] * rate[1] * rate[2] * data.train.shape[1]
    return {
        "box_values": box_values,
        "token_width": cfg.dim,
        "floor_mean_frame": mean_frame_floor(data, cfg, queries),
        "lr_linear_latent": lr_linear_ceiling(data, cfg, queries, "latent"),
        "lr_linear_pixels": lr_linear_ceiling(data, cfg, queries, "pixels"),
        "box_code_token_width": box_code_ceiling(data, cfg, queries, cfg.dim),
        "box_code_lr_width": box_code_ceiling(data, cfg, queries, data.train.shape[1]),
    }


def check_g0(result: dict) -> list[str]:
    """The G0 assertions, as sentences of what failed (empty: passed)."""
    failed = []
    floor = result["floor_mean_frame"]["psnr"]
    for key in ("lr_linear_latent", "lr_linear_pixels"):
        if not result[key]["psnr"] > floor:
            failed.append(f"{key} ({result[key]['psnr']:.2f} dB) is not above the mean-frame floor ({floor:.2f} dB)")
        if result[key]["psnr"] > result["box_code_lr_width"]["psnr"] + 0.1:
            failed.append(f"{key} beats the best linear code of the same width: the closed forms disagree")
    if result["token_width"] < result["box_values"]:
        failed.append(f"tokens ({result['token_width']}) are narrower than a box ({result['box_values']} values)")
    if result["box_code_token_width"]["psnr"] < LOSSLESS_DB:
        failed.append(f"a token-wide linear code is not lossless ({result['box_code_token_width']['psnr']:.1f} dB)")
    return failed
