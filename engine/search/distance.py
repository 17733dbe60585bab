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

    if gallery.dtype == torch.bfloat16:  # coarse rows from bf16_rows: the norms ride inside the GEMM
        if queries.dtype != torch.bfloat16:  # callers scanning many chunks convert once up front
            queries = bf16_queries(queries, gallery.shape[1])
        return torch.mm(queries, gallery.T, out=out)
    if gallery.dtype != queries.dtype:  # FP16 storage: accumulate in the queries' FP32
        gallery = gallery.to(queries.dtype)
    return torch.addmm(gallery_sqnorm, queries, gallery.T, beta=1, alpha=-2, out=out)


def bf16_rows(gallery: torch.Tensor, gallery_sqnorm: torch.Tensor) -> torch.Tensor:
    """Coarse gallery ``[bf16(g), h1, h2, h3, 0...]`` with ``h1 + h2 + h3 = -||g||^2 / 2`` (FP32 norm).

    Why: CPU torch has no bf16 GEMM with FP32 output, so adding the norms after the GEMM would cost a
    full elementwise pass over the block, and a bf16 bias would round them to 8 bits. Three bf16
    pieces carry the 24-bit norm (almost always exactly; the residual is measured and bounded), and
    ``bf16_queries`` pairs them with ``-2`` so one bf16 GEMM returns ``bf16(||g||^2 - 2 q.g)``.
    Width is padded to a multiple of 16 so the GEMM keeps aligned rows.
    """
    import torch

    n, dim = gallery.shape
    out = torch.zeros((n, bf16_width(dim)), dtype=torch.bfloat16)
    out[:, :dim] = gallery
    rest = -0.5 * gallery_sqnorm.float()
    for col in range(dim, dim + 3):
        out[:, col] = rest
        rest = rest - out[:, col].float()
    return out


def bf16_width(dim: int) -> int:
    """Columns of ``bf16_rows``: dim + 3 norm pieces, padded to a multiple of 16."""
    return -(-(dim + 3) // 16) * 16


def bf16_queries(queries: torch.Tensor, width: int) -> torch.Tensor:
    """``[-2 bf16(q), -2, -2, -2, 0...]``: scaling by -2 is exact, so the GEMM gives the ranking score."""
    import torch

    dim = queries.shape[1]
    out = torch.zeros((queries.shape[0], width), dtype=torch.bfloat16, device=queries.device)
    out[:, :dim] = queries
    out[:, :dim] *= -2
    out[:, dim:dim + 3] = -2
    return out


def exact_distances(queries64: torch.Tensor, rows: torch.Tensor, rows_sqnorm64: torch.Tensor,
                    queries_sqnorm64: torch.Tensor) -> torch.Tensor:
    """Squared L2 of each query against its own rows (Q, C, D), computed in FP64 and rounded to FP32.

    Why FP64: GEMM rounding depends on the matrix shapes (an FP32 ``addmm`` of 7 queries and of 1,000
    queries disagree in the last bit for ~20% of pairs), so a distance that must not depend on how a
    search was batched is computed with 53-bit products/sums, whose FP32 rounding is shape-free.
    """
    import torch

    dots = torch.bmm(rows.to(torch.float64), queries64[:, :, None])[:, :, 0]
    dist = queries_sqnorm64[:, None] + rows_sqnorm64 - 2 * dots
    return dist.clamp_(min=0).to(torch.float32)


def finish_distances(partial: torch.Tensor, queries_sqnorm: torch.Tensor) -> torch.Tensor:
    """Add ``||q||^2`` back (in place) and clamp rounding negatives to zero."""
    partial += queries_sqnorm[:, None]
    return partial.clamp_(min=0)


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Row squared norms in at least FP32 (FP16 storage would lose the norm's low bits)."""
    import torch

    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
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
