"""A plain numpy LOMO, written from the paper's formulas one image and one window at a time.

It shares no code with ``train.lomo`` (no cells, no one-hot matmuls, no blur matrices, no top-k): a
Gaussian blur by explicit taps over an edge-padded image, percentiles by sorting, HSV by MATLAB's
``rgb2hsv`` branches, histograms by ``np.bincount`` of each 10 x 10 window. The tests compare the two.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

GREY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def blur(channel: np.ndarray, sigma: float) -> np.ndarray:
    radius = math.ceil(3 * sigma)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma * sigma))
    taps /= taps.sum()
    padded = np.pad(channel, radius, mode="edge")
    h, w = channel.shape
    rows = sum(t * padded[i:i + h, :] for i, t in enumerate(taps))             # along H
    return sum(t * rows[:, i:i + w] for i, t in enumerate(taps))               # along W


def stretch(values: np.ndarray, clip: float) -> np.ndarray:
    """Simplest colour balance: the k-th smallest -> 0, the k-th largest -> 1, k = max(1, clip * n)."""
    ordered = np.sort(values.ravel())
    k = max(1, int(clip * ordered.size))
    low, high = ordered[k - 1], ordered[-k]
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def msrcp(rgb: np.ndarray, sigmas: tuple[float, ...], clip: float) -> np.ndarray:
    """Multi-scale Retinex on the intensity, stretched, with the chromaticity kept (Petro et al.)."""
    intensity = rgb.mean(axis=2) + 1.0
    msr = sum(np.log(intensity) - np.log(blur(intensity, s)) for s in sigmas) / len(sigmas)
    target = stretch(msr, clip) * 255.0 + 1.0
    amplify = np.minimum(256.0 / (rgb.max(axis=2) + 1.0), target / intensity)
    return np.clip((rgb + 1.0) * amplify[:, :, None] - 1.0, 0.0, 255.0) / 255.0


def rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=2)
    delta = v - rgb.min(axis=2)
    safe = np.where(delta == 0, 1.0, delta)
    h = np.zeros_like(v)
    h = np.where(r == v, (g - b) / safe, h)
    h = np.where(g == v, 2 + (b - r) / safe, h)
    h = np.where(b == v, 4 + (r - g) / safe, h)
    h = h / 6
    h = np.where(h < 0, h + 1, h)
    h = np.where(delta == 0, 0.0, h)
    s = np.where(v == 0, 0.0, delta / np.where(v == 0, 1.0, v))
    return np.stack([h, s, v], axis=2)


def exact_hue_bins(image: np.ndarray, bins: int) -> np.ndarray:
    """floor(bins * hue) of MATLAB's rgb2hsv in rational arithmetic, pixel by pixel."""
    out = np.zeros(image.shape[:2])
    for (y, x), _ in np.ndenumerate(out):
        r, g, b = (Fraction(int(c)) for c in image[y, x])
        v, delta = max(r, g, b), max(r, g, b) - min(r, g, b)
        if delta == 0:
            continue
        h = (4 + (r - g) / delta) if b == v else (2 + (b - r) / delta) if g == v else (g - b) / delta
        h = h / 6 + (1 if h < 0 else 0)
        out[y, x] = math.floor(bins * h)
    return out


def max_window_histograms(code: np.ndarray, num_bins: int, block: int, step: int) -> np.ndarray:
    """Histogram of every block x block window (step apart); per strip of windows, each bin's maximum."""
    h, w = code.shape
    strips = []
    for top in range(0, h - block + 1, step):
        hists = [np.bincount(code[top:top + block, left:left + block].ravel().astype(np.int64),
                             minlength=num_bins) for left in range(0, w - block + 1, step)]
        strips.append(np.max(hists, axis=0))
    return np.concatenate(strips).astype(np.float64)


def siltp(grey: np.ndarray, tau: float, radius: int) -> np.ndarray:
    """n < (1 - tau) c and n > (1 + tau) c in exact rational arithmetic (grey levels are multiples of
    1/16 of an 8-bit level, tau = p / q)."""
    tau = Fraction(tau).limit_denominator(1000)
    grey = [[Fraction(v).limit_denominator(64) for v in row] for row in grey]
    padded = np.pad(np.array(grey, dtype=object), radius, mode="edge")
    grey = np.array(grey, dtype=object)
    h, w = grey.shape
    c = radius
    right, up = padded[c:c + h, 2 * c:2 * c + w], padded[0:h, c:c + w]
    left, down = padded[c:c + h, 0:w], padded[2 * c:2 * c + h, c:c + w]
    code = np.zeros((h, w))
    for k, n in enumerate((right, up, left, down)):
        code += ((n < (1 - tau) * grey).astype(float) + 2 * (n > (1 + tau) * grey).astype(float)) * 3 ** k
    return code


def pool2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


def lomo(image: np.ndarray, retinex=True, sigmas=(5.0, 20.0), clip=0.01, bins=8, block=10, step=5, levels=3,
         tau=0.3, radii=(3, 5)) -> np.ndarray:
    """LOMO of one uint8 (H, W, 3) RGB image."""
    rgb = image.astype(np.float64)
    colour_image = msrcp(rgb, sigmas, clip) if retinex else rgb / 255.0
    index = np.minimum(np.floor(rgb2hsv(colour_image) * bins), bins - 1)
    index[..., 0] = exact_hue_bins(image, bins)  # MSRCP keeps the camera's hue
    if not retinex:  # S = delta / max and V = max / 255 of 8-bit pixels: exact ratios too
        top, delta = image.max(axis=2).astype(int), np.ptp(image.astype(int), axis=2)
        index[..., 1] = np.minimum(np.where(top > 0, bins * delta // np.maximum(top, 1), 0), bins - 1)
        index[..., 2] = np.minimum(bins * top // 255, bins - 1)
    colour = []
    for level in range(levels):
        if level:
            index = np.floor(np.stack([pool2(index[..., c]) for c in range(3)], axis=2))
        if min(index.shape[:2]) < block:
            break
        code = index[..., 0] + bins * index[..., 1] + bins * bins * index[..., 2]
        colour.append(max_window_histograms(code, bins ** 3, block, step))
    parts = [np.concatenate(colour)]
    grey0 = np.round(rgb @ np.array(GREY))  # 8-bit levels (SILTP is scale invariant)
    for radius in radii:
        grey, texture = grey0, []
        for level in range(levels):
            if level:
                grey = pool2(grey)
            if min(grey.shape) < block:
                break
            if grey.shape[1] >= 2 * radius + 1:
                texture.append(max_window_histograms(siltp(grey, tau, radius), 81, block, step))
        parts.append(np.concatenate(texture))
    logs = [np.log(p + 1) for p in parts]
    return np.concatenate([p / np.linalg.norm(p) for p in logs])
