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
   region, 7,567-D per colour space (4,921 for nRnG).

Means and covariances come from average pooling of f and f f' (no unfold). The matrix logarithm is
computed with matrix products only (``spd_log``: inverse scaling and squaring, coupled Newton-Schulz
square roots and the log(1 + x) series), so the descriptor exports to ONNX and TensorRT like any layer;
``tests/train/test_gog.py`` checks it against an eigendecomposition. Everything runs in float32 whatever
the model's precision. Deviation from the authors' code: the colour channels are scaled to 0..1 as
above and the gradient is of the grey image; measured on VIPeR and PRID2011 in RESULTS.md.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InputError

SPACES = ("rgb", "lab", "hsv", "nrng")
PATCH, STRIDE = 5, 2
EPS = 1e-3  # ridge: S + EPS * max(trace(S), 0.01) I, as the authors' code
# spd_log: the smallest eigenvalue of A / trace(A) it is built for (the ridge above keeps a patch's or a
# region's matrix above it), and the float32 tolerance each square root iterates to; then log(1 + x) terms.
LOWEST, ROOT_TOLERANCE, ROOTS = 1e-7, 3e-7, 6
LOG_TERMS = 10


@dataclass(frozen=True)
class GOGConfig:
    """The descriptor's settings: colour spaces (each one block of the descriptor) and regions."""

    spaces: tuple[str, ...] = SPACES
    regions: int = 7

    def __post_init__(self) -> None:
        unknown = [s for s in self.spaces if s not in SPACES]
        if unknown or not self.spaces or self.regions < 1:
            raise InputError(f"GOG spaces {self.spaces} / regions {self.regions}: expected a non-empty subset of "
                             f"{SPACES} and regions >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {"spaces": list(self.spaces), "regions": self.regions}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GOGConfig:
        return cls(spaces=tuple(data["spaces"]), regions=int(data["regions"]))


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
    xyz = (m @ lin.flatten(2)).view_as(lin) / rgb.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)
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


def shared_features(rgb: Tensor, height: int) -> Tensor:
    """(B, 5, H, W): the row (0..1) and the grey gradient in 4 orientations, the same in every colour space."""
    rows = torch.linspace(0, 1, height, dtype=rgb.dtype, device=rgb.device).view(1, 1, height, 1)
    y = rows + torch.zeros_like(rgb[:, :1])  # broadcast to (B, 1, H, W) without reading the batch size
    return torch.cat([y, gradient_bins(grey(rgb))], 1)


def pixel_features(rgb: Tensor, space: str, shared: Tensor) -> Tensor:
    """(B, d, H, W) pixel features of ``space``: ``shared_features`` and the colour channels."""
    return torch.cat([shared, colour(rgb, space)], 1)


def _eye(n: int, like: Tensor) -> Tensor:
    """The identity as a constant of the exported graph (torch.eye exports as EyeLike of a shape)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.as_tensor(np.eye(n), dtype=like.dtype, device=like.device)


def _trace(x: Tensor, eye: Tensor) -> Tensor:
    """trace over the last two dimensions, as a product with the identity (torch.diagonal exports as If
    and CumSum nodes)."""
    return (x * eye).sum((-1, -2))


def _step_gain(a: float) -> tuple[float, float]:
    """A Newton-Schulz step T = a I - b ZY maps an eigenvalue x of ZY to x (a - b x)^2; b = 4a^3/27 makes
    its largest value exactly 1 (a = 1.5: the classic step)."""
    return a, 4 * a ** 3 / 27


def newton_schulz_steps(lowest: float, tolerance: float = ROOT_TOLERANCE) -> tuple[float, ...]:
    """The ``a`` of each step of a square root whose eigenvalues lie in [lowest, 1]: each step takes the
    largest a (up to sqrt(27/4), where x (a - b x)^2 would reach 0 inside [0, 1]) that does not map 1 below
    what it maps ``lowest`` to, so small eigenvalues grow up to 6.7x a step instead of the classic 2.25x
    (scaled Newton-Schulz, as Chen & Chow 2014 scale it for the sign function)."""
    def image(x: float, a: float) -> float:
        _, b = _step_gain(a)
        return x * (a - b * x) ** 2

    steps: list[float] = []
    while 1 - lowest > tolerance:
        lo, hi = 1.5, math.sqrt(27 / 4)
        for _ in range(50):  # bisection: image(lowest, a) rises with a, image(1, a) falls
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if image(lowest, mid) < image(1.0, mid) else (lo, mid)
        steps.append(lo)
        lowest = min(image(lowest, lo), image(1.0, lo))
    return tuple(steps)


# one tuple of steps per successive square root: the k-th root's eigenvalues lie in [LOWEST^(1/2^k), 1]
ROOT_STEPS = tuple(newton_schulz_steps(LOWEST ** (0.5 ** k)) for k in range(ROOTS))


def _sqrt(a: Tensor, steps: tuple[float, ...], eye: Tensor) -> Tensor:
    """Coupled Newton-Schulz square root of SPD matrices (..., n, n) whose eigenvalues lie in (0, 1]."""
    y, z = a, eye.expand_as(a)
    for gain in steps:
        c0, c1 = _step_gain(gain)
        t = torch.baddbmm(c0 * eye, z, y, alpha=-c1)  # c0 I - c1 ZY in one kernel
        y, z = y @ t, t @ z
    return y


def spd_log(a: Tensor, n: int) -> Tensor:
    """Matrix logarithm of SPD matrices (..., n, n) by matrix products only (exports to ONNX/TensorRT):
    log A = log(c) I + 2^k log((A / c)^(1/2^k)), c = trace(A), the 2^k-th root close to I."""
    eye = _eye(n, a)
    c = _trace(a, eye)[..., None, None]
    b = (a / c).reshape(-1, n, n)  # one batch of matrices (baddbmm)
    for steps in ROOT_STEPS:
        b = _sqrt(b, steps, eye)
    x = b - eye
    power, log_b = x, x
    for j in range(2, LOG_TERMS + 1):
        power = power @ x
        log_b = log_b + ((-1) ** (j + 1) / j) * power
    return log_b.view_as(a) * float(2 ** ROOTS) + torch.log(c) * eye


def spd_log_vector(mean: Tensor, cov: Tensor, d: int) -> Tensor:
    """(..., d) and (..., d, d) -> (..., (d+1)(d+2)/2): vech of log(|S|^(-1/(d+1)) [[S+mm', m], [m', 1]])."""
    eye = _eye(d, cov)
    trace = _trace(cov, eye).clamp_min(0.01)
    cov = cov + EPS * trace[..., None, None] * eye
    top = torch.cat([cov + mean[..., :, None] * mean[..., None, :], mean[..., :, None]], -1)
    bottom = torch.cat([mean[..., None, :], torch.ones_like(mean[..., :1, None])], -1)
    log_p = spd_log(torch.cat([top, bottom], -2), d + 1)
    # |S|^(-1/(d+1)) scales the matrix, so it shifts the log by -log|S| / (d+1) I = -trace(log P) / (d+1) I
    eye = _eye(d + 1, cov)
    log_p = log_p - (_trace(log_p, eye) / (d + 1))[..., None, None] * eye
    rows, cols = np.triu_indices(d + 1)  # numpy: constants of the exported graph, as the tracer says
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        index = torch.as_tensor(rows * (d + 1) + cols, device=log_p.device)
        scale = torch.as_tensor(np.where(rows == cols, 1.0, math.sqrt(2.0)), dtype=log_p.dtype, device=log_p.device)
    return log_p.flatten(-2)[..., index] * scale


def patch_grid(height: int, width: int) -> tuple[int, int]:
    """Patches down and across an image (5 x 5, every 2 px)."""
    return (height - PATCH) // STRIDE + 1, (width - PATCH) // STRIDE + 1


def patch_gaussians(f: Tensor, d: int, height: int, width: int) -> Tensor:
    """(B, d, H, W) pixel features -> (B, Hp, Wp, (d+1)(d+2)/2) patch vectors. Sizes are given, not read
    from the tensor, so the exported graph has them as constants (only the batch is dynamic)."""
    hp, wp = patch_grid(height, width)
    outer = (f[:, :, None] * f[:, None, :]).reshape(-1, d * d, height, width)
    mean = F.avg_pool2d(f, PATCH, STRIDE).permute(0, 2, 3, 1)
    second = F.avg_pool2d(outer, PATCH, STRIDE).permute(0, 2, 3, 1).reshape(-1, hp, wp, d, d)
    n = PATCH * PATCH
    cov = (second - mean[..., :, None] * mean[..., None, :]) * (n / (n - 1))
    return spd_log_vector(mean, cov, d)


def region_weights(hp: int, wp: int, height: int, width: int, regions: int) -> Tensor:
    """(regions, Hp * Wp) weights of the patches: a region's rows (1/4 of the height, moved by 1/8), times a
    Gaussian of the column around the centre (sigma = W/4), summing to 1 per region."""
    centres_y = torch.arange(hp, dtype=torch.float64) * STRIDE + PATCH // 2
    centres_x = torch.arange(wp, dtype=torch.float64) * STRIDE + PATCH // 2
    sigma = width / 4
    columns = torch.exp(-((centres_x - (width - 1) / 2) ** 2) / (2 * sigma * sigma))
    size, step = height / 4, height / 8
    out = []
    for r in range(regions):
        rows = ((centres_y >= r * step) & (centres_y < r * step + size)).double()
        w = (rows[:, None] * columns[None, :]).reshape(-1)
        out.append(w / w.sum())
    return torch.stack(out).float()


def region_gaussians(g: Tensor, weights: Tensor, m: int) -> Tensor:
    """(B, Hp, Wp, m) patch vectors and (R, Hp * Wp) region weights -> (B, R * (m+1)(m+2)/2)."""
    x = g.reshape(-1, 1, weights.shape[1], m)
    w = weights.to(g.device)[None, :, None, :]  # (1, R, 1, P)
    mean = (w @ x)[:, :, 0]  # (B, R, m); not squeeze, which exports as an If
    centred = x - mean[..., None, :]  # (B, R, P, m)
    cov = (centred.transpose(-1, -2) * w) @ centred
    return spd_log_vector(mean, cov, m).flatten(1)


def gog(images: Tensor, space: str = "rgb", regions: int = 7) -> Tensor:
    """uint8 (B, H, W, 3) -> (B, regions * 1081) GOG descriptor of one colour space (703 a region for nRnG)."""
    return GOG(GOGConfig(spaces=(space,), regions=regions), images.shape[1], images.shape[2])(images)


def feature_dim(space: str) -> int:
    """d of the pixel features: the row, 4 gradient orientations and the colour channels."""
    return 1 + 4 + (2 if space == "nrng" else 3)


def gaussian_dim(d: int) -> int:
    """Length of a d-dimensional Gaussian's vector: vech of its (d+1) x (d+1) matrix."""
    return (d + 1) * (d + 2) // 2


def block_dim(space: str, regions: int) -> int:
    return regions * gaussian_dim(gaussian_dim(feature_dim(space)))  # regions of patch-vector Gaussians


class GOG(nn.Module):
    """uint8 NHWC images -> float32 (N, sum of block dims): one GOG block per colour space, concatenated."""

    def __init__(self, cfg: GOGConfig, height: int, width: int) -> None:
        super().__init__()
        self.cfg, self.height, self.width = cfg, height, width
        self.blocks = [block_dim(s, cfg.regions) for s in cfg.spaces]
        # a constant of the input size (not a buffer: .half() must not round it)
        self.weights = region_weights(*patch_grid(height, width), height, width, cfg.regions)

    @property
    def dim(self) -> int:
        return sum(self.blocks)

    def forward(self, images: Tensor) -> Tensor:
        rgb = images.float().permute(0, 3, 1, 2) / 255  # cast first: the uint8 input feeds only a Cast
        shared = shared_features(rgb, self.height)
        parts = []
        for space in self.cfg.spaces:
            d = feature_dim(space)
            patches = patch_gaussians(pixel_features(rgb, space, shared), d, self.height, self.width)
            parts.append(region_gaussians(patches, self.weights, gaussian_dim(d)))
        return torch.cat(parts, 1)
