"""Batch augmentation on uint8 NHWC tensors: horizontal flip, pad-and-crop shift, colour jitter,
random erasing.

It works on the raw uint8 pixels the model graph takes (normalisation happens inside the model), on
whatever device the batch lives, and draws its random numbers from its own seeded CPU generator so a
training run can be repeated exactly. Random erasing (Zhong et al., 2020) fills a rectangle with noise,
which teaches the model to survive occlusion. Colour jitter scales each image's contrast about its
mean and each of its channels by a random gain, the cast a different camera gives the same person.
"""
from __future__ import annotations

import math

import torch

from engine.errors import InputError

ERASE_AREA = (0.02, 0.4)      # fraction of the image an erased rectangle covers
ERASE_ASPECT = (0.3, 1 / 0.3)  # height / width of the erased rectangle


class Augment:
    """Callable that augments a uint8 (B, H, W, 3) batch and returns a new one of the same shape."""

    def __init__(self, flip: bool = True, pad: int = 8, erase_prob: float = 0.5,
                 seed: int | None = None, jitter: float = 0.0) -> None:
        if pad < 0 or not 0.0 <= erase_prob <= 1.0 or not 0.0 <= jitter < 1.0:
            raise InputError(f"Augment needs pad >= 0, 0 <= erase_prob <= 1 and 0 <= jitter < 1, got "
                             f"pad={pad} erase_prob={erase_prob} jitter={jitter}")
        self.flip, self.pad, self.erase_prob = bool(flip), int(pad), float(erase_prob)
        self.jitter = float(jitter)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __repr__(self) -> str:
        return (f"Augment(flip={self.flip}, pad={self.pad}, erase_prob={self.erase_prob}, "
                f"jitter={self.jitter})")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
                or images.shape[-1] != 3:
            got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                   else type(images).__name__)
            raise InputError(f"Augment expects a torch uint8 (B, H, W, 3) batch, got {got}; pass raw "
                             "pixels, normalisation happens inside the model")
        out = images
        if self.flip:
            flip = self._rand(len(out)) < 0.5
            out = torch.where(flip.to(out.device)[:, None, None, None], out.flip(2), out)
        if self.pad:
            out = self._shift(out)
        if self.jitter:
            out = self._colour(out)
        if self.erase_prob > 0:
            out = self._erase(out)
        return out if out is not images else images.clone()

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def _shift(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-pad by ``pad`` on every side and crop back at a random offset per image."""
        b, h, w, _ = images.shape
        p = self.pad
        padded = torch.nn.functional.pad(images, (0, 0, p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=self.generator).to(images.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=self.generator).to(images.device)
        rows = dy[:, None] + torch.arange(h, device=images.device)[None]
        cols = dx[:, None] + torch.arange(w, device=images.device)[None]
        batch = torch.arange(b, device=images.device)[:, None, None]
        return padded[batch, rows[:, :, None], cols[:, None, :]]

    def _colour(self, images: torch.Tensor) -> torch.Tensor:
        """Contrast about the image mean and per-channel gains, each uniform in [1 - jitter, 1 + jitter]."""
        b = len(images)
        contrast = (1 + self.jitter * (2 * self._rand(b) - 1)).view(b, 1, 1, 1).to(images.device)
        gain = (1 + self.jitter * (2 * self._rand(b, 3) - 1)).view(b, 1, 1, 3).to(images.device)
        x = images.float()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast + mean).mul(gain).round().clamp(0, 255).to(torch.uint8)

    def _erase(self, images: torch.Tensor) -> torch.Tensor:
        """Fill one random rectangle per chosen image (probability ``erase_prob``) with uniform noise."""
        b, h, w, _ = images.shape
        area = h * w * (ERASE_AREA[0] + self._rand(b) * (ERASE_AREA[1] - ERASE_AREA[0]))
        log_lo, log_hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        aspect = torch.exp(log_lo + self._rand(b) * (log_hi - log_lo))
        eh = (area * aspect).sqrt().round().clamp(1, h)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        y0 = (self._rand(b) * (h - eh + 1)).floor()
        x0 = (self._rand(b) * (w - ew + 1)).floor()
        chosen = self._rand(b) < self.erase_prob
        ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
        in_rows = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])
        in_cols = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])
        mask = (in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]).to(images.device)
        noise = torch.randint(0, 256, images.shape, generator=self.generator, dtype=torch.uint8)
        return torch.where(mask[..., None], noise.to(images.device), images)
