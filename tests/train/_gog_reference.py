"""GOG written patch by patch and region by region from the paper (Matsukawa et al., CVPR 2016), in numpy.

It shares no code with ``train.gog``: no pooling, no batched products, an eigendecomposition for the
matrix logarithm, np.cov for the covariances. Slow, for small images only.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

PATCH, STRIDE, EPS = 5, 2, 1e-3


def _colour(rgb: np.ndarray, space: str) -> np.ndarray:
    """(H, W, 3) in 0..1 -> (H, W, c) channels of ``space`` in about 0..1."""
    if space == "rgb":
        return rgb
    if space == "hsv":
        return np.array([[colorsys.rgb_to_hsv(*px) for px in row] for row in rgb])
    if space == "nrng":
        total = np.maximum(rgb.sum(-1, keepdims=True), 1e-6)
        return rgb[..., :2] / total
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    xyz = lin @ m.T / np.array([0.950456, 1.0, 1.088754])
    f = np.where(xyz > 0.008856, np.cbrt(np.maximum(xyz, 1e-12)), 7.787 * xyz + 16 / 116)
    lab = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)
    return (lab + [0, 128, 128]) / [100, 255, 255]


def pixel_features(image: np.ndarray, space: str) -> np.ndarray:
    """(H, W, d): row, the gradient magnitude linearly shared between the two nearest of 4 orientations, colour."""
    rgb = image.astype(np.float64) / 255
    h, w, _ = rgb.shape
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    padded = np.pad(grey, 1, mode="edge")
    gx = padded[1:-1, 2:] - padded[1:-1, :-2]
    gy = padded[2:, 1:-1] - padded[:-2, 1:-1]
    bins = np.zeros((h, w, 4))
    for i in range(h):
        for j in range(w):
            angle = math.atan2(gy[i, j], gx[i, j]) % (2 * math.pi)
            pos = angle / (math.pi / 2)
            low = int(math.floor(pos))
            bins[i, j, low % 4] += math.hypot(gx[i, j], gy[i, j]) * (1 - (pos - low))
            bins[i, j, (low + 1) % 4] += math.hypot(gx[i, j], gy[i, j]) * (pos - low)
    rows = np.repeat(np.linspace(0, 1, h)[:, None, None], w, axis=1)
    return np.concatenate([rows, bins, _colour(rgb, space)], -1)


def gaussian_vector(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """vech (off-diagonal x sqrt 2) of log(|S|^(-1/(d+1)) [[S + mm', m], [m', 1]]), S ridge-regularised."""
    d = len(mean)
    cov = cov + EPS * max(np.trace(cov), 0.01) * np.eye(d)
    p = np.block([[cov + np.outer(mean, mean), mean[:, None]], [mean[None, :], np.ones((1, 1))]])
    p = p * np.linalg.det(cov) ** (-1 / (d + 1))
    values, vectors = np.linalg.eigh(p)
    log_p = vectors @ np.diag(np.log(values)) @ vectors.T
    rows, cols = np.triu_indices(d + 1)
    return log_p[rows, cols] * np.where(rows == cols, 1.0, math.sqrt(2))


def gog(image: np.ndarray, space: str, regions: int = 7) -> np.ndarray:
    f = pixel_features(image, space)
    h, w, _ = f.shape
    patches = {}
    for top in range(0, h - PATCH + 1, STRIDE):
        for left in range(0, w - PATCH + 1, STRIDE):
            x = f[top:top + PATCH, left:left + PATCH].reshape(-1, f.shape[-1])
            patches[(top + PATCH // 2, left + PATCH // 2)] = gaussian_vector(x.mean(0), np.cov(x, rowvar=False))
    sigma = w / 4
    out = []
    for r in range(regions):
        inside = [(c, v) for c, v in patches.items() if r * h / 8 <= c[0] < r * h / 8 + h / 4]
        weights = np.array([math.exp(-((c[1] - (w - 1) / 2) ** 2) / (2 * sigma * sigma)) for c, _ in inside])
        weights /= weights.sum()
        g = np.array([v for _, v in inside])
        mean = weights @ g
        cov = (g - mean).T @ ((g - mean) * weights[:, None])
        out.append(gaussian_vector(mean, cov))
    return np.concatenate(out)
