"""The hand-crafted descriptor a cross-view metric (``train.xqda``) is fitted on: LOMO, or GOG with LOMO.

* ``"lomo"``: LOMO (``train.lomo``) as its paper normalises it (log, each part L2-normalised).
* ``"gog+lomo"``: GOG's four colour-space blocks (``train.gog``) and LOMO side by side, each block
  centred on the training images' mean and L2-normalised, as the GOG authors prepare GOG for XQDA (and
  as the fused descriptors of Zhang et al. 2016 are). Over VIPeR's 10 splits this took XQDA from 38.4 to
  50.9 Rank-1 and on PRID2011 from 22.7 to 38.8 (RESULTS.md, "Hybrid matcher").

Computing the descriptor (``raw``) is the costly part; the block normalisation (``normalise``) is a
subtraction and a division, so fitting computes ``raw`` once per image and normalises with each set of
means it tries. The same module runs in the exported graph, its means as buffers.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.errors import InputError

from .gog import GOG, GOGConfig
from .lomo import LOMO, LOMOConfig

DESCRIPTORS = ("lomo", "gog+lomo")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row of ``x`` L2-normalised (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class HandCrafted(nn.Module):
    """uint8 NHWC images -> float32 (N, dim) descriptor of ``kind`` (module docstring)."""

    def __init__(self, kind: str, lomo_cfg: LOMOConfig, gog_cfg: GOGConfig | None, height: int, width: int) -> None:
        super().__init__()
        if kind not in DESCRIPTORS:
            raise InputError(f"descriptor {kind!r}; expected one of {DESCRIPTORS}")
        self.kind = kind
        self.lomo = LOMO(lomo_cfg, height, width)
        self.gog = GOG(gog_cfg or GOGConfig(), height, width) if kind == "gog+lomo" else None
        self.blocks = ([*self.gog.blocks] if self.gog is not None else []) + [self.lomo.dim]
        # block means of the training images (gog+lomo only); zeros until fitted
        self.register_buffer("means", torch.zeros(self.dim if self.gog is not None else 0))

    @property
    def dim(self) -> int:
        return sum(self.blocks)

    @property
    def gog_cfg(self) -> GOGConfig | None:
        return None if self.gog is None else self.gog.cfg

    def raw(self, images: Tensor) -> Tensor:
        """The descriptor before any block normalisation (float32)."""
        if self.gog is None:
            return self.lomo(images)
        return torch.cat([self.gog(images), self.lomo(images)], dim=1)

    def normalise(self, raw: Tensor) -> Tensor:
        """Each block centred on its training mean and L2-normalised (identity for "lomo")."""
        if self.gog is None:
            return raw
        centred = raw - self.means.to(raw.dtype)
        parts = [torch.nn.functional.normalize(p, p=2.0, dim=1, eps=1e-12)
                 for p in torch.split(centred, self.blocks, dim=1)]
        return torch.cat(parts, dim=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.normalise(self.raw(images))

    def fit_means(self, raw: np.ndarray) -> None:
        """Set the block means from the training images' raw descriptors (N, dim)."""
        self.use_means(raw.mean(0))

    def use_means(self, means: np.ndarray | None) -> None:
        """Set the block means (dim,) as fitted (gog+lomo; "lomo" has none and ignores them)."""
        if self.gog is not None and means is not None:
            self.means = torch.as_tensor(np.asarray(means), dtype=torch.float32)

    def matcher_args(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this descriptor in a ``train.hybrid.HybridMatcher``."""
        return {"descriptor": self.kind, "gog_cfg": self.gog_cfg,
                "means": self.means.double().cpu().numpy() if self.gog is not None else None}

    def normalise_np(self, raw: np.ndarray) -> np.ndarray:
        """``normalise`` on float64 numpy rows (fitting: the raw descriptors are computed once)."""
        if self.gog is None:
            return raw
        centred = raw - self.means.double().numpy()
        out = np.split(centred, np.cumsum(self.blocks)[:-1], axis=1)
        return np.concatenate([unit_rows(p) for p in out], 1)

    def describe(self) -> dict[str, Any]:
        gog = {"gog": self.gog.cfg.to_dict()} if self.gog is not None else {}
        return {"descriptor": self.kind, "lomo": self.lomo.cfg.to_dict(), **gog, "descriptor_dim": self.dim}


def descriptors(fn: Callable[[Tensor], Tensor], images: np.ndarray, batch_size: int = 32,
                progress: bool = False, desc: str = "descriptor") -> np.ndarray:
    """(N, D) float64 rows of ``fn`` (a descriptor: ``HandCrafted.raw``, LOMO, ...) of uint8 (N, H, W, 3)
    images, computed in batches."""
    from engine.progress import progress as progress_bar

    out = []
    with torch.inference_mode():
        for start in progress_bar(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
            out.append(fn(torch.from_numpy(images[start:start + batch_size])).double().numpy())
    return np.concatenate(out)
