"""GOG: Gaussian Of Gaussian descriptor (Matsukawa, Okabe, Suzuki, Sato; CVPR 2016), in PyTorch.

A hierarchy of Gaussians, per colour space:

1. **Pixel features** f = [y, M_0, M_90, M_180, M_270, C1, C2, C3]: the row (0..1), the grey gradient
   magnitude softly binned into 4 orientations (linear interpolation between the two nearest bins), and
   the colour channels (RGB, Lab, HSV scaled to 0..1; nRnG has two, so 7-D).
2. **Patch Gaussians**: every 5 x 5 patch (stride 2) summarised by the mean and covariance of its f,
   embedded as the SPD matrix |S|^(-1/(d+1)) [[S + m m', m], [m', 1]] and flattened by its matrix log
   (upper triangle, off-diagonal x sqrt(2)): 45-D for d = 8.
3. **Region Gaussians**: 7 horizontal regions (32 rows, stride 16, at 128 rows) summarise their patch
   vectors the same way, weighted by a Gaussian of the column (sigma = W/4) around the centre: 1,081-D a
   region, 7,567-D per colour space.

Means and covariances come from average pooling of f and f f' (no unfold), so the cost is a few
convolutions and batched eigendecompositions of 9 x 9 and 46 x 46 matrices.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SPACES = ("rgb", "lab", "hsv", "nrng")
PATCH, STRIDE = 5, 2
EPS = 1e-3  # ridge: S + EPS * max(trace(S), 0.01) I, as the authors' code


def grey(rgb: Tensor) -> Tensor:
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)


def gradient_bins(g: Tensor) -> Tensor:
    """(B, 4, H, W): the gradient magnitude split between its two nearest of the 0/90/180/270 degree bins."""
    p = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx = p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2]
    gy = p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1]
    mag = torch.sqrt(gx * gx + gy * gy)
    pos = torch.remainder(torch.atan2(gy, gx), 2 * math.pi) / (math.pi / 2)  # 0..4 in bin units
    low = torch.floor(pos)
    frac = pos - low
    bins = torch.arange(4, device=g.device, dtype=g.dtype).view(1, 4, 1, 1)
    low_w = (torch.remainder(low, 4) == bins) * (1 - frac)
    high_w = (torch.remainder(low + 1, 4) == bins) * frac
    return mag * (low_w + high_w)


def to_lab(rgb: Tensor) -> Tensor:
    """sRGB (0..1) -> CIE Lab (D65), scaled to about 0..1 (L/100, (a+128)/255, (b+128)/255)."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = rgb.new_tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
    xyz = torch.einsum("ij,bjhw->bihw", m, lin) / rgb.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lab = torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)
    return (lab + rgb.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)) / rgb.new_tensor([100.0, 255.0, 255.0]).view(1, 3, 1, 1)


def to_hsv(rgb: Tensor) -> Tensor:
    top, _ = rgb.max(1)
    low, _ = rgb.min(1)
    span = top - low
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    safe = torch.where(span > 0, span, torch.ones_like(span))
    hue = torch.where(top == r, torch.remainder((g - b) / safe, 6),
                      torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(span > 0, hue, torch.zeros_like(hue))
    sat = torch.where(top > 0, span / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(top))
    return torch.stack([hue, sat, top], 1)


def colour(rgb: Tensor, space: str) -> Tensor:
    if space == "rgb":
        return rgb
    if space == "lab":
        return to_lab(rgb)
    if space == "hsv":
        return to_hsv(rgb)
    total = rgb.sum(1, keepdim=True).clamp_min(1e-6)
    return rgb[:, :2] / total


def pixel_features(rgb: Tensor, space: str) -> Tensor:
    b, _, h, w = rgb.shape
    y = torch.linspace(0, 1, h, dtype=rgb.dtype, device=rgb.device).view(1, 1, h, 1).expand(b, 1, h, w)
    return torch.cat([y, gradient_bins(grey(rgb)), colour(rgb, space)], 1)


def spd_log_vector(mean: Tensor, cov: Tensor) -> Tensor:
    """(..., d) and (..., d, d) -> (..., (d+1)(d+2)/2): vech of log(|S|^(-1/(d+1)) [[S+mm', m], [m', 1]])."""
    d = mean.shape[-1]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    trace = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).clamp_min(0.01)
    cov = cov + EPS * trace[..., None, None] * eye
    top = torch.cat([cov + mean[..., :, None] * mean[..., None, :], mean[..., :, None]], -1)
    bottom = torch.cat([mean[..., None, :], torch.ones_like(mean[..., :1, None])], -1)
    values, vectors = torch.linalg.eigh(torch.cat([top, bottom], -2).double())
    logs = torch.log(values.clamp_min(1e-12))
    logs = logs - logs.mean(-1, keepdim=True)  # the |S|^(-1/(d+1)) scale: det of the block matrix is |S|
    log_p = (vectors * logs[..., None, :]) @ vectors.transpose(-1, -2)
    rows, cols = torch.triu_indices(d + 1, d + 1, device=cov.device)
    scale = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(log_p.dtype)
    return (log_p[..., rows, cols] * scale).to(mean.dtype)


def patch_gaussians(f: Tensor) -> Tensor:
    """(B, d, H, W) pixel features -> (B, Hp, Wp, (d+1)(d+2)/2) patch vectors."""
    b, d, h, w = f.shape
    outer = (f[:, :, None] * f[:, None, :]).reshape(b, d * d, h, w)
    mean = F.avg_pool2d(f, PATCH, STRIDE)
    second = F.avg_pool2d(outer, PATCH, STRIDE)
    hp, wp = mean.shape[-2:]
    mean = mean.permute(0, 2, 3, 1)
    second = second.permute(0, 2, 3, 1).reshape(b, hp, wp, d, d)
    n = PATCH * PATCH
    cov = (second - mean[..., :, None] * mean[..., None, :]) * (n / (n - 1))
    return spd_log_vector(mean, cov)


def region_gaussians(g: Tensor, height: int, width: int, regions: int = 7) -> Tensor:
    """(B, Hp, Wp, m) patch vectors -> (B, regions * (m+1)(m+2)/2), regions of 1/4 the height, stride 1/8."""
    b, hp, wp, m = g.shape
    centres_y = torch.arange(hp, dtype=g.dtype, device=g.device) * STRIDE + PATCH // 2
    centres_x = torch.arange(wp, dtype=g.dtype, device=g.device) * STRIDE + PATCH // 2
    sigma = width / 4
    col_w = torch.exp(-((centres_x - (width - 1) / 2) ** 2) / (2 * sigma * sigma))
    size, step = height / 4, height / 8
    out = []
    for r in range(regions):
        rows = (centres_y >= r * step) & (centres_y < r * step + size)
        weights = (rows.to(g.dtype)[:, None] * col_w[None, :]).reshape(-1)
        weights = weights / weights.sum()
        x = g.reshape(b, hp * wp, m)
        mean = torch.einsum("p,bpm->bm", weights, x)
        centred = x - mean[:, None]
        cov = torch.einsum("p,bpm,bpn->bmn", weights, centred, centred)
        out.append(spd_log_vector(mean, cov))
    return torch.cat(out, 1)


def gog(images: Tensor, space: str = "rgb") -> Tensor:
    """uint8 (B, H, W, 3) -> (B, 7 * 1081) GOG descriptor of one colour space (7 * 946 for nRnG)."""
    rgb = images.permute(0, 3, 1, 2).float() / 255
    h, w = rgb.shape[-2:]
    return region_gaussians(patch_gaussians(pixel_features(rgb, space)), h, w)
