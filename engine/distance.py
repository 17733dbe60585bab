"""Squared-L2 distance blocks: the one place the ``||q||^2 - 2 q.g + ||g||^2`` expansion is written.

Both the gallery search (engine.gallery) and the re-id evaluation (engine.metrics) go through here,
on whatever device the tensors live (CPU or CUDA). The expansion turns the distance into one GEMM,
which is what makes brute-force search fast; the price is rounding, so results are clamped at zero.
torch is imported inside the functions, so importing this module needs only numpy.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def ranking_distances(queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """``||g||^2 - 2 q.g`` as one fused GEMM (Q, G): the squared distance minus ``||q||^2``.

    The per-query constant ``||q||^2`` cannot change a query's ranking, so search adds it only to the
    k results that come back instead of to every (query, gallery) pair.
    """
    import torch

    if gallery.dtype != queries.dtype:  # FP16 storage: accumulate in the queries' FP32
        gallery = gallery.to(queries.dtype)
    return torch.addmm(gallery_sqnorm, queries, gallery.T, beta=1, alpha=-2, out=out)


def finish_distances(partial: torch.Tensor, queries_sqnorm: torch.Tensor) -> torch.Tensor:
    """Add ``||q||^2`` back (in place) and clamp rounding negatives to zero."""
    partial += queries_sqnorm[:, None]
    return partial.clamp_(min=0)


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Row squared norms in at least FP32 (FP16 storage would lose the norm's low bits)."""
    import torch

    x = x.float() if x.dtype == torch.float16 else x
    return torch.einsum("ij,ij->i", x, x)


def squared_l2_blocks(queries: np.ndarray, gallery: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """Yield the full squared-L2 matrix as (<= chunk, G) numpy blocks over consecutive queries.

    Only one block is alive at a time, so memory stays at chunk x G however many queries there are.
    FP64 inputs stay FP64 (exact references); anything else is computed in FP32.
    """
    import torch

    dtype = np.float64 if queries.dtype == np.float64 and gallery.dtype == np.float64 else np.float32
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=dtype))
    g_sqnorm = squared_norms(g)
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk], dtype=dtype))
        yield finish_distances(ranking_distances(q, g, g_sqnorm), squared_norms(q)).numpy()
