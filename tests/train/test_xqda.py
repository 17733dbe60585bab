"""XQDA as a linear map equals the paper's quadratic metric, and its covariances count the right pairs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.errors import InputError
from train.xqda import cross_view_covariances, fit_xqda


def people(n_ids: int, per_cam: int, cams: int, dim: int, seed: int = 0):
    """Each person a random mean, each camera a random shift, plus noise."""
    rng = np.random.default_rng(seed)
    means, shifts = rng.normal(size=(n_ids, dim)), rng.normal(scale=0.5, size=(cams, dim))
    pids = np.repeat(np.arange(n_ids), cams * per_cam)
    cam = np.tile(np.repeat(np.arange(cams), per_cam), n_ids)
    x = means[pids] + shifts[cam] + rng.normal(scale=0.3, size=(len(pids), dim))
    return x, pids, cam


def test_covariances_count_cross_camera_pairs():
    x, pids, cams = people(5, 2, 3, 4)
    intra, extra, n_intra, n_extra = np.zeros((4, 4)), np.zeros((4, 4)), 0, 0
    for i, j in itertools.combinations(range(len(x)), 2):
        if cams[i] == cams[j]:
            continue
        d = np.outer(x[i] - x[j], x[i] - x[j])
        if pids[i] == pids[j]:
            intra, n_intra = intra + d, n_intra + 1
        else:
            extra, n_extra = extra + d, n_extra + 1
    got_intra, got_extra = cross_view_covariances(x, pids, cams)
    np.testing.assert_allclose(got_intra, intra / n_intra, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_extra, extra / n_extra, rtol=1e-10, atol=1e-12)


def paper_xqda_distance(x_gal, x_prob, lam, queries, galleries):
    """The authors' algorithm for two cameras (XQDA.m): QR when D > N, inCov / exCov from class sums,
    the eigenvectors of inCov \\ exCov whose eigenvalues exceed 1, M = inv(W' inCov W) - inv(W' exCov W)."""
    n_g, n_p = len(x_gal), len(x_prob)
    basis = None
    if x_gal.shape[1] > n_g + n_p:
        basis, r = np.linalg.qr(np.vstack([x_gal, x_prob]).T)
        x_gal, x_prob = r[:, :n_g].T, r[:, n_g:].T
    # one image per person per camera, person k at row k of both
    in_cov = sum(np.outer(g - p, g - p) for g, p in zip(x_gal, x_prob, strict=True)) / n_g
    ex_pairs = [(i, j) for i in range(n_g) for j in range(n_p) if i != j]
    ex_cov = sum(np.outer(x_gal[i] - x_prob[j], x_gal[i] - x_prob[j]) for i, j in ex_pairs) / len(ex_pairs)
    in_cov = in_cov + lam * np.eye(len(in_cov))
    values, vectors = np.linalg.eig(np.linalg.solve(in_cov, ex_cov))
    values, vectors = values.real, vectors.real
    order = np.argsort(values)[::-1]
    w = vectors[:, order[values[order] > 1]]
    metric = np.linalg.inv(w.T @ in_cov @ w) - np.linalg.inv(w.T @ ex_cov @ w)
    if basis is not None:
        w = basis @ w
    diff = (queries[:, None, :] - galleries[None, :, :]) @ w
    return np.einsum("qgi,ij,qgj->qg", diff, metric, diff)


@pytest.mark.parametrize("dim", [6, 200])  # 200 > 2 x 40 images: the QR path
def test_embedding_distance_is_the_papers_metric(dim):
    x, pids, cams = people(40, 1, 2, dim, seed=1)
    learned = fit_xqda(x, pids, cams, lam=1e-3)
    test, _, _ = people(6, 1, 2, dim, seed=2)
    q, g = test[::2], test[1::2]
    want = paper_xqda_distance(x[cams == 0], x[cams == 1], 1e-3, q, g)
    zq, zg = learned.embed(q), learned.embed(g)
    got = ((zq[:, None, :] - zg[None, :, :]) ** 2).sum(-1)
    assert learned.dims == int((learned.eigenvalues > 1).sum()) >= 1
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(learned.embed(x).mean(0), 0, atol=1e-9)  # centred on the training set


def test_one_camera_is_refused():
    x, pids, cams = people(4, 2, 1, 5)
    with pytest.raises(InputError, match="across cameras"):
        fit_xqda(x, pids, cams)
