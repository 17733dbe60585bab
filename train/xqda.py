"""XQDA: Cross-view Quadratic Discriminant Analysis (Liao, Hu, Zhu, Li; CVPR 2015), as a linear map.

XQDA models the difference of two images of one person (intra-class, covariance Sigma_I) and of two
people (extra-class, Sigma_E) as zero-mean Gaussians, and learns a subspace W where the log-likelihood
ratio ``(x - z)^T W (inv(W^T Sigma_I W) - inv(W^T Sigma_E W)) W^T (x - z)`` separates them: W holds the
generalised eigenvectors of (Sigma_E, Sigma_I) whose eigenvalues exceed 1, and Sigma_I gets ``lambda I``
(0.001 in the paper) added first. Pairs are counted across cameras only (the paper's cross-view pairs:
with two cameras, every probe against every gallery image). When the descriptor has more dimensions
than there are training images, everything is computed in the span of the training images (a QR
factorisation), which changes no distance between them.

With eigenvectors scaled so that ``W^T Sigma_I W = I`` and ``W^T Sigma_E W = diag(e)``, the metric is
``diag(1 - 1/e)``: positive exactly on the kept eigenvalues (e > 1). So the metric is a plain linear map
``P = W diag(sqrt(1 - 1/e))``: ``||(x - z) P||^2`` *is* XQDA's distance, an embedding that every
backend, the gallery and the server match with L2 alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import InputError

DEFAULT_LAMBDA = 1e-3


@dataclass(frozen=True)
class XQDAMap:
    """The learned map: ``embed(x) = x @ projection - center``; ``eigenvalues`` of the kept dimensions."""

    projection: np.ndarray   # (D, r) float64
    center: np.ndarray       # (r,) mean of the training embeddings (a shift: no distance changes)
    eigenvalues: np.ndarray  # (r,) generalised eigenvalues > 1, descending

    @property
    def dims(self) -> int:
        return int(self.projection.shape[1])

    def embed(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.projection - self.center


def _pair_scatter(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum over unordered pairs inside each group of (x_i - x_j)(x_i - x_j)^T, and the pair count:
    per group n * sum(x x^T) - s s^T with s the group's sum."""
    _, inverse, counts = np.unique(groups, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), x.shape[1]))
    np.add.at(sums, inverse, x)
    weighted = x * np.sqrt(counts[inverse])[:, None]
    scatter = weighted.T @ weighted - sums.T @ sums
    return scatter, int((counts * (counts - 1) // 2).sum())


def cross_view_covariances(x: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Sigma_I, Sigma_E) of ``x`` over image pairs from different cameras: same person / different people.

    Pairs across cameras = all pairs minus the pairs inside one camera, per person and overall.
    """
    key_person_cam = np.stack([pids, cams], axis=1)
    all_pairs, n_all = _pair_scatter(x, np.zeros(len(x), dtype=np.int64))
    same_cam, n_same_cam = _pair_scatter(x, cams)
    person, n_person = _pair_scatter(x, pids)
    person_cam, n_person_cam = _pair_scatter(x, key_person_cam)
    intra, n_intra = person - person_cam, n_person - n_person_cam
    extra, n_extra = all_pairs - same_cam - intra, n_all - n_same_cam - n_intra
    if n_intra == 0 or n_extra == 0:
        raise InputError(f"XQDA needs pairs of one person across cameras and of different people across "
                         f"cameras; got {n_intra} and {n_extra} from {len(x)} images of "
                         f"{len(np.unique(pids))} people in {len(np.unique(cams))} cameras")
    return intra / n_intra, extra / n_extra


def fit_xqda(x: np.ndarray, pids: np.ndarray, cams: np.ndarray, lam: float = DEFAULT_LAMBDA,
             max_dims: int | None = None) -> XQDAMap:
    """Learn XQDA from training descriptors ``x`` (N, D) with person ids and cameras (see module docstring).

    ``max_dims`` keeps at most that many of the dimensions with eigenvalue > 1 (the paper keeps all).
    """
    x = np.asarray(x, dtype=np.float64)
    pids, cams = np.asarray(pids).reshape(-1), np.asarray(cams).reshape(-1)
    if x.ndim != 2 or len(x) != len(pids) or len(x) != len(cams) or lam <= 0:
        raise InputError(f"fit_xqda needs x (N, D) with N ids and N cameras and lambda > 0; got x "
                         f"{x.shape}, {pids.shape} ids, {cams.shape} cameras, lambda {lam}")
    basis = None
    if x.shape[1] > x.shape[0]:
        basis, r = np.linalg.qr(x.T)  # x^T = basis @ r: the images' coordinates in their own span
        x = r.T
    sigma_i, sigma_e = cross_view_covariances(x, pids, cams)
    sigma_i = sigma_i + lam * np.eye(len(sigma_i))
    chol = np.linalg.cholesky(sigma_i)
    inv_chol = np.linalg.inv(chol)
    values, vectors = np.linalg.eigh(inv_chol @ sigma_e @ inv_chol.T)
    order = np.argsort(values)[::-1]
    keep = order[values[order] > 1.0][:max_dims]
    if len(keep) == 0:
        raise InputError("XQDA found no direction where people differ more than one person's images do "
                         f"(largest eigenvalue {values.max():.3f} <= 1); the descriptor cannot separate "
                         "these people, check the images and labels")
    w = inv_chol.T @ vectors[:, keep]  # W^T Sigma_I W = I, W^T Sigma_E W = diag(values)
    projection = w * np.sqrt(1.0 - 1.0 / values[keep])
    center = (x @ projection).mean(0)  # x in the span's coordinates: the same embeddings
    if basis is not None:
        projection = basis @ projection
    return XQDAMap(projection=projection, center=center, eigenvalues=values[keep])
