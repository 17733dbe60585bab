"""LOMO: Local Maximal Occurrence colour and texture descriptor (Liao, Hu, Zhu, Li; CVPR 2015), in PyTorch.

The same module runs in training (to fit the cross-view metric, ``train.xqda``) and inside the exported
graph, so every backend serves it. Per image, as the paper defines it:

1. **Multi-scale Retinex** with two Gaussian surrounds (sigma 5 and 20, truncated at 3 sigma, edges
   replicated, applied as (H, H) and (W, W) matrices), in its chromaticity-preserving form (MSRCP,
   Petro, Sbert and Morel, IPOL 2014): MSR of the intensity, a "simplest colour balance" that clips
   ``clip`` of the pixels at each end, and every pixel's RGB scaled by new / old intensity.
2. **Joint HSV histogram** (8 x 8 x 8 bins, MATLAB's ``rgb2hsv``) of the Retinex image (its hue is
   the camera's, which MSRCP keeps, computed exactly from the 8-bit pixels) in 10 x 10
   windows moved by 5 pixels; of all windows at one height (a horizontal strip) each bin keeps its
   maximum over the strip.
3. **SILTP** texture (scale-invariant local ternary pattern, 4 neighbours at radius R, tau = 0.3, 3^4
   codes) of the grey image (MATLAB's ``rgb2gray`` rounding) at R = 3 and R = 5, histogrammed and
   max-pooled over strips the same way.
4. A **three-level pyramid**: each next level is the 2 x 2 average of the previous one (of the HSV bin
   indices, floored, for the colour part, as the authors' code does; of the grey levels for SILTP).
5. ``log(count + 1)``, and each of the three parts (HSV, SILTP R=3, SILTP R=5) L2-normalised.

At 128 x 48 (VIPeR) this is the paper's 26,960-D vector. The descriptor runs at the model's own input
size: the window layout depends only on the height (the max over a strip removes the width), so the
images are never resized. Everything stays in float32 (the histogram counts are exact integers).
Deviations, measured on VIPeR in RESULTS.md: the paper cites Jobson et al.'s colour-restoring MSRCR,
whose implementation by the authors is not public; written from Jobson's formulas (alpha 125, one
stretch per channel) it cost 14 points of Rank-1 on VIPeR split 0 (29.4 against 43.4 without Retinex),
so the Retinex here is MSRCP; over the 10 splits it gave 37.6 ± 2.8 against 38.3 ± 2.2 without, so it
is off by default (``LOMOConfig(retinex=True)`` turns it on). Bin edges: SILTP compares
integers and hue bins are exact ratios, so a value on a bin edge (frequent with 8-bit pixels) falls on
the same side in float32, float64 and every backend; the authors' double-precision code decides those
ties by rounding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InputError

# MATLAB rgb2gray weights (ITU-R BT.601 as MATLAB rounds them).
GREY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)


@dataclass(frozen=True)
class LOMOConfig:
    """The descriptor's settings; the defaults are the paper's, Retinex aside (module docstring)."""

    retinex: bool = False                    # MSRCP before the colour histograms (the paper's; measured: off)
    sigmas: tuple[float, ...] = (5.0, 20.0)  # Retinex Gaussian surrounds
    clip: float = 0.01                       # simplest colour balance: fraction clipped at each end
    hsv_bins: int = 8                        # per channel: 8 x 8 x 8 joint bins
    block: int = 10                          # window size (pixels)
    step: int = 5                            # window step (pixels)
    levels: int = 3                          # pyramid levels
    tau: float = 0.3                         # SILTP tolerance
    radii: tuple[int, ...] = (3, 5)          # SILTP neighbour radii

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        object.__setattr__(self, "radii", tuple(int(r) for r in self.radii))
        if (not self.sigmas or min(self.sigmas) <= 0 or not 0 <= self.clip < 0.5 or self.hsv_bins < 1
                or self.step < 1 or self.block < self.step or self.levels < 1 or self.tau <= 0
                or not self.radii or min(self.radii) < 1 or self.block % self.step):
            raise InputError(f"invalid LOMOConfig {self}: need sigmas > 0, 0 <= clip < 0.5, bins >= 1, "
                             "block a multiple of step >= 1, levels >= 1, tau > 0, radii >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LOMOConfig:
        return cls(**data)


def level_sizes(cfg: LOMOConfig, height: int, width: int) -> list[tuple[int, int]]:
    """(height, width) of each pyramid level that still holds one window."""
    sizes, h, w = [], height, width
    for _ in range(cfg.levels):
        if h < cfg.block or w < cfg.block:
            break
        sizes.append((h, w))
        h, w = h // 2, w // 2
    return sizes


def strips(cfg: LOMOConfig, height: int) -> int:
    """Horizontal strips of windows in an image ``height`` pixels high."""
    return (height - cfg.block) // cfg.step + 1


def part_dims(cfg: LOMOConfig, height: int, width: int) -> list[int]:
    """Sizes of the descriptor's parts: the HSV histogram, then one SILTP histogram per radius (a
    level narrower than 2R + 1 pixels is skipped for that radius, as in the authors' code)."""
    sizes = level_sizes(cfg, height, width)
    colour = cfg.hsv_bins ** 3 * sum(strips(cfg, h) for h, _ in sizes)
    texture = [81 * sum(strips(cfg, h) for h, w in sizes if w >= 2 * r + 1) for r in cfg.radii]
    return [colour, *texture]


def descriptor_dim(cfg: LOMOConfig, height: int, width: int) -> int:
    return sum(part_dims(cfg, height, width))


def gaussian_kernel(sigma: float) -> list[float]:
    """Normalised 1-D Gaussian truncated at ceil(3 sigma)."""
    radius = math.ceil(3 * sigma)
    values = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-radius, radius + 1)]
    total = sum(values)
    return [v / total for v in values]


class LOMO(nn.Module):
    """uint8 (N, H, W, 3) RGB -> float32 (N, D) LOMO descriptors (see the module docstring).

    It has no parameters and computes in float32 whatever the model's precision; ``.half()`` stores its
    only weights, the Retinex blur matrices, in FP16 (cast back to float32 where they are used).
    """

    def __init__(self, cfg: LOMOConfig, height: int, width: int) -> None:
        super().__init__()
        if not level_sizes(cfg, height, width):
            raise InputError(f"LOMO needs images of at least {cfg.block}x{cfg.block} pixels, got {height}x{width}")
        self.cfg, self.height, self.width = cfg, height, width
        self.dim = descriptor_dim(cfg, height, width)
        for i, sigma in enumerate(cfg.sigmas):
            for axis, size in (("h", height), ("w", width)):
                self.register_buffer(f"blur{i}_{axis}", torch.tensor(blur_matrix(size, sigma)), persistent=False)

    def _blurs(self) -> list[tuple[Tensor, Tensor]]:
        """The blur matrices in float32 (a half model holds them in FP16: a weight like any other)."""
        return [(getattr(self, f"blur{i}_h").to(torch.float32), getattr(self, f"blur{i}_w").to(torch.float32))
                for i in range(len(self.cfg.sigmas))]

    def forward(self, images: Tensor) -> Tensor:
        rgb = images.to(torch.float32).permute(0, 3, 1, 2)  # (N, 3, H, W) in 0..255
        parts = [self._colour(rgb)]
        # Grey levels as integers times 4^(levels-1): every pyramid average is then an exact float32 value.
        wr, wg, wb = GREY_WEIGHTS
        grey = torch.round(rgb[:, 0:1] * wr + rgb[:, 1:2] * wg + rgb[:, 2:3] * wb)
        grey = grey * float(4 ** (self.cfg.levels - 1))
        parts += [self._texture(grey, r) for r in self.cfg.radii]
        return torch.cat([F.normalize(torch.log(p + 1.0), dim=1, eps=1e-12) for p in parts], dim=1)

    # ---- colour: Retinex -> HSV bins -> max-pooled joint histograms over the pyramid --------------------
    def _colour(self, rgb: Tensor) -> Tensor:
        bins = self.cfg.hsv_bins
        if self.cfg.retinex:
            clipped = clipped_pixels(self.cfg.clip, self.height, self.width)
            sat_value = saturation_value_bins(retinex(rgb, self._blurs(), clipped), 1.0, bins)
        else:
            sat_value = saturation_value_bins(rgb, 255.0, bins)
        index = torch.cat([hue_bins(rgb, bins), sat_value], 1)  # (N, 3, H, W) bin per channel
        features = []
        for level in range(len(level_sizes(self.cfg, self.height, self.width))):
            if level:
                index = torch.floor(F.avg_pool2d(index, 2))
            code = index[:, 0:1] + bins * index[:, 1:2] + bins * bins * index[:, 2:3]
            features.append(self._strip_histograms(code, bins * bins, bins))
        return torch.cat(features, dim=1)

    # ---- texture: SILTP codes -> max-pooled histograms over the pyramid -------------------------------
    def _texture(self, grey: Tensor, radius: int) -> Tensor:
        features = []
        for level, (_, width) in enumerate(level_sizes(self.cfg, self.height, self.width)):
            if level:
                grey = F.avg_pool2d(grey, 2)
            if width >= 2 * radius + 1:
                features.append(self._strip_histograms(siltp(grey, self.cfg.tau, radius), 9, 9))
        return torch.cat(features, dim=1)

    def _strip_histograms(self, code: Tensor, low_bins: int, high_bins: int) -> Tensor:
        """(N, 1, h, w) integer codes ``low + low_bins * high`` -> (N, strips * low_bins * high_bins): each
        window's histogram, then each bin's maximum over the windows of a strip.

        A window is ``block / step`` x ``block / step`` cells of ``step`` x ``step`` pixels, so the window
        histograms are sums of cell histograms; a cell's joint histogram is the product of the one-hot
        codes of its two factors (``low`` and ``high``) summed over its pixels: one batched matmul on
        ``low_bins + high_bins`` one-hot values per pixel instead of a one-hot of every joint bin.
        """
        step, per = self.cfg.step, self.cfg.block // self.cfg.step
        n, rows, cols = code.shape[0], code.shape[2] // step, code.shape[3] // step
        code = code[:, 0, :rows * step, :cols * step].reshape(n, rows, step, cols, step)
        code = code.permute(0, 1, 3, 2, 4).reshape(n, rows, cols, step * step)  # pixels of each cell
        high = torch.floor(code / low_bins)
        low = code - low_bins * high
        onehot_high = high.unsqueeze(3) == torch.arange(high_bins, dtype=torch.float32).view(high_bins, 1)
        onehot_low = low.unsqueeze(4) == torch.arange(low_bins, dtype=torch.float32)
        cells = torch.matmul(onehot_high.to(torch.float32), onehot_low.to(torch.float32))  # (n, r, c, hi, lo)
        cells = cells.flatten(3).permute(0, 3, 1, 2)  # (n, bins, rows, cols): bin = the code itself
        windows = torch.round(F.avg_pool2d(cells, per, stride=1) * float(per * per))
        return windows.amax(dim=3).transpose(1, 2).flatten(1)  # (n, strips, bins) flattened strip by strip


def retinex(rgb: Tensor, blurs: list[tuple[Tensor, Tensor]], clipped: int) -> Tensor:
    """Multi-scale Retinex with chromaticity preservation (MSRCP, Petro, Sbert and Morel, IPOL 2014) of
    (N, 3, H, W) pixels in 0..255, one surround per (H, W) blur-matrix pair; returns RGB in [0, 1].

    MSR runs on the intensity (channel mean + 1), which the simplest colour balance stretches to 1..256;
    every pixel's RGB + 1 is then scaled by new / old intensity (at most up to a channel reaching 256),
    so hue and saturation stay the camera's and only lightness is normalised.
    """
    intensity = rgb.mean(1, keepdim=True) + 1.0
    log_intensity = torch.log(intensity)
    msr = sum(log_intensity - torch.log(gaussian_blur(intensity, *b)) for b in blurs) / len(blurs)
    target = colour_balance(msr, clipped) * 255.0 + 1.0
    amplify = torch.minimum(256.0 / (rgb.amax(1, keepdim=True) + 1.0), target / intensity)
    return torch.clamp((rgb + 1.0) * amplify - 1.0, 0.0, 255.0) / 255.0


def blur_matrix(size: int, sigma: float) -> list[list[float]]:
    """The (size, size) matrix of a 1-D Gaussian blur with replicated edges: row i holds the weight of
    every input pixel in output pixel i (taps past an edge add to the edge pixel)."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    rows = [[0.0] * size for _ in range(size)]
    for i in range(size):
        for t, weight in enumerate(kernel):
            rows[i][min(max(i + t - radius, 0), size - 1)] += weight
    return rows


def gaussian_blur(x: Tensor, along_h: Tensor, along_w: Tensor) -> Tensor:
    """Separable blur of (N, C, H, W) by the (H, H) and (W, W) matrices of ``blur_matrix``: two small
    matmuls, which cost a fraction of a 121-tap convolution at sigma 20."""
    return torch.matmul(torch.matmul(along_h, x), along_w.transpose(0, 1))


def clipped_pixels(clip: float, height: int, width: int) -> int:
    """How many pixels the colour balance clips at each end: ``max(1, floor(clip * H * W))``."""
    return max(1, int(clip * height * width))


def colour_balance(x: Tensor, k: int) -> Tensor:
    """Per image and channel: the value with ``k`` pixels at or below it and the one with k at or above
    it become 0 and 1, linearly between, clamped outside."""
    flat = x.flatten(2)
    low = torch.topk(flat, k, dim=2, largest=False).values[:, :, -1:]
    high = torch.topk(flat, k, dim=2, largest=True).values[:, :, -1:]
    scaled = (flat - low) / torch.clamp(high - low, min=1e-12)
    return torch.clamp(scaled, 0.0, 1.0).view_as(x)


def hue_bins(rgb: Tensor, bins: int) -> Tensor:
    """Bins of MATLAB ``rgb2hsv``'s hue of (N, 3, H, W) integer pixel values, computed exactly.

    Hue is a ratio of channel differences, so 8-bit pixels often put it exactly on a bin edge (1/8 when
    (g - b) / (max - min) = 3/4). Written as ``floor(bins * h6 / (6 * delta))`` with the integers
    ``h6 = offset * delta + difference`` and ``delta = max - min``, one correctly rounded division
    decides the bin, the same in every backend and precision. Where two channels tie for the maximum,
    blue wins over green over red (MATLAB assigns them in that order).
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    top = torch.maximum(torch.maximum(r, g), b)
    delta = top - torch.minimum(torch.minimum(r, g), b)
    h6 = torch.where(b == top, 4.0 * delta + r - g, torch.where(g == top, 2.0 * delta + b - r, g - b))
    h6 = torch.where(h6 < 0, h6 + 6.0 * delta, h6)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    return torch.where(delta > 0, torch.floor(float(bins) * h6 / (6.0 * safe)), torch.zeros_like(delta))


def saturation_value_bins(image: Tensor, full_scale: float, bins: int) -> Tensor:
    """Bins of MATLAB ``rgb2hsv``'s saturation (delta / max) and value (max / full_scale) of (N, 3, H, W)
    pixels in [0, full_scale]; each bin is one division, so the raw 8-bit pixels (full_scale 255) get
    exact bins."""
    v = image.amax(1, keepdim=True)
    delta = v - image.amin(1, keepdim=True)
    s = torch.where(v > 0, torch.floor(float(bins) * delta / torch.where(v > 0, v, torch.ones_like(v))),
                    torch.zeros_like(v))
    return torch.clamp(torch.cat([s, torch.floor(float(bins) * v / full_scale)], dim=1), max=bins - 1)


def tau_fraction(tau: float) -> tuple[int, int]:
    """``tau`` as p / q (0.3 -> 3 / 10), so that SILTP compares integers: q * n < (q - p) * centre."""
    fraction = Fraction(tau).limit_denominator(1000)
    return fraction.numerator, fraction.denominator


def siltp(grey: Tensor, tau: float, radius: int) -> Tensor:
    """SILTP codes (0..80) of (N, 1, H, W) grey levels: each of the neighbours right, up, left, down at
    ``radius`` (edges replicated) gives 1 when darker than (1 - tau) * centre, 2 when brighter than
    (1 + tau) * centre, else 0; the code is sum of digit_k * 3^k.

    Grey levels are integer-valued here and tau a small fraction p / q, so the comparisons are made as
    ``q * n < (q - p) * centre``, exact in float32: neighbours that equal a bound (frequent with 8-bit
    levels: 70 against 0.7 * 100) fall on the same side in every backend and precision."""
    p, q = tau_fraction(tau)
    h, w = grey.shape[2], grey.shape[3]
    padded = F.pad(grey, (radius, radius, radius, radius), mode="replicate")
    rr = radius
    neighbours = (padded[:, :, rr:rr + h, 2 * rr:2 * rr + w],  # right
                  padded[:, :, 0:h, rr:rr + w],                 # up
                  padded[:, :, rr:rr + h, 0:w],                 # left
                  padded[:, :, 2 * rr:2 * rr + h, rr:rr + w])   # down
    low, high = float(q - p) * grey, float(q + p) * grey
    code = torch.zeros_like(grey)
    for k, n in enumerate(neighbours):
        scaled = float(q) * n
        code = code + ((scaled < low).to(torch.float32) + 2.0 * (scaled > high).to(torch.float32)) * float(3 ** k)
    return code
