import numpy as np
import pytest

from engine import InputError
from engine.metrics import cmc_map, evaluate
from engine.rerank import RerankParams, k_reciprocal_distances


def reference_rerank(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3) -> np.ndarray:
    """The authors' Python re-ranking (Zhong et al. 2017, as torchreid ships it), written out directly."""
    original_dist = np.concatenate([np.concatenate([q_q, q_g], axis=1),
                                    np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
    v = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g.shape[0]
    all_num = q_g.shape[0] + q_g.shape[1]
    for i in range(all_num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        k_reciprocal_index = forward[np.where(backward == i)[0]]
        expansion = k_reciprocal_index
        for candidate in k_reciprocal_index:
            half = int(np.around(k1 / 2.)) + 1
            c_forward = initial_rank[candidate, :half]
            c_backward = initial_rank[c_forward, :half]
            c_index = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_index, k_reciprocal_index)) > 2. / 3 * len(c_index):
                expansion = np.append(expansion, c_index)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        v[i, expansion] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        v = np.stack([np.mean(v[initial_rank[i, :k2], :], axis=0) for i in range(all_num)])
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        nonzero = np.where(v[i, :] != 0)[0]
        for j in nonzero:
            temp_min[0, inv_index[j]] += np.minimum(v[i, j], v[inv_index[j], j])
        jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def _sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)


def _clusters(seed: int, ids: int = 12, dim: int = 16) -> tuple[np.ndarray, ...]:
    """Query (one per id) and gallery (two or three per id) unit vectors scattered around id centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    gp = np.concatenate([np.arange(ids), np.arange(ids), np.arange(ids // 2)])
    qp = np.arange(ids)

    def draw(pids: np.ndarray) -> np.ndarray:
        x = centres[pids] + rng.normal(scale=0.9, size=(len(pids), dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(qp), qp, draw(gp), gp


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.5), (4, 1, 0.0), (3, 2, 1.0)])
def test_matches_the_reference_computation(k1, k2, lam):
    q, _, g, _ = _clusters(seed=k1)
    expected = reference_rerank(_sq(q, g), _sq(q, q), _sq(g, g), k1, k2, lam)
    got = k_reciprocal_distances(q, g, RerankParams(k1=k1, k2=k2, lambda_value=lam, block=7))
    assert got.shape == (len(q), len(g))
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_block_size_does_not_change_the_result():
    q, _, g, _ = _clusters(seed=1)
    a = k_reciprocal_distances(q, g, RerankParams(k1=6, block=1))
    b = k_reciprocal_distances(q, g, RerankParams(k1=6, block=1000))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_lambda_one_keeps_the_original_ranking():
    q, _, g, _ = _clusters(seed=2)
    got = k_reciprocal_distances(q, g, RerankParams(lambda_value=1.0))
    assert np.array_equal(np.argsort(got, axis=1, kind="stable")[:, 0], _sq(q, g).argmin(axis=1))


def test_evaluate_option_equals_cmc_of_reranked_distances():
    q, qp, g, gp = _clusters(seed=3)
    qc, gc = np.zeros(len(q), np.int64), np.ones(len(g), np.int64)
    params = RerankParams(k1=6, k2=3)
    got = evaluate(q, qp, qc, g, gp, gc, protocol="single_shot", rerank=params)
    want = cmc_map(k_reciprocal_distances(q, g, params), qp, qc, gp, gc, protocol="single_shot")
    assert got == want
    assert got != evaluate(q, qp, qc, g, gp, gc, protocol="single_shot")


def test_refuses_inputs_over_the_memory_limit_and_bad_settings():
    q, _, g, _ = _clusters(seed=4)
    with pytest.raises(InputError, match="max_items"):
        k_reciprocal_distances(q, g, RerankParams(max_items=10))
    with pytest.raises(InputError, match="k1"):
        RerankParams(k1=0)
    with pytest.raises(InputError, match="dim"):
        k_reciprocal_distances(q, g[:, :3])
