"""engine.metrics against hand-computed cases and a straightforward per-query reference."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from engine.metrics import cmc_map, evaluate, format_table


def test_market_hand_case() -> None:
    # One query (pid 1, cam 0). Gallery ordered by distance:
    # idx0 pid 1 cam 0 -> same pid+cam: ignored; idx1 pid 2 -> miss (valid rank 1);
    # idx2 pid -1 junk: ignored; idx3 pid 1 cam 1 -> hit at valid rank 2; idx4 pid 0 -> miss (rank 3);
    # idx5 pid 1 cam 2 -> hit at valid rank 4.  AP = (1/2 + 2/4) / 2 = 0.5.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    gp = np.array([1, 2, -1, 1, 0, 1])
    gc = np.array([0, 1, 1, 1, 1, 2])
    res = cmc_map(dist, [1], [0], gp, gc, protocol="market", ranks=(1, 2, 5))
    assert res == {"rank1": 0.0, "rank2": 1.0, "rank5": 1.0, "mAP": 0.5, "num_query": 1}


def test_single_shot_keeps_same_camera_but_drops_junk() -> None:
    # Same gallery without the camera rule: idx0 is a hit at rank 1, idx3 at rank 3 (junk idx2 skipped),
    # idx5 at rank 5.  AP = (1/1 + 2/3 + 3/5) / 3.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    res = cmc_map(dist, [1], [0], [1, 2, -1, 1, 0, 1], [0, 1, 1, 1, 1, 2], protocol="single_shot",
                  ranks=(1,))
    assert res["rank1"] == 1.0
    assert res["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_queries_without_valid_match_are_skipped_and_counted() -> None:
    # Query 0 (pid 1 cam 0) only has its same-camera twin -> skipped. Query 1 (pid 2, cam 0):
    # gallery order by distance is idx1 (pid 2, cam 1) first -> rank-1 hit, AP 1.
    dist = np.array([[0.1, 0.5], [0.9, 0.2]])
    res = cmc_map(dist, [1, 2], [0, 0], [1, 2], [0, 1], ranks=(1,))
    assert res == {"rank1": 1.0, "mAP": 1.0, "num_query": 1}


def test_ties_are_broken_by_gallery_index() -> None:
    # All distances tie: the order is the gallery order, so the match at idx 2 sits at rank 3.
    dist = np.zeros((1, 3))
    res = cmc_map(dist, [5], [0], [7, 8, 5], [1, 1, 1], ranks=(1, 3))
    assert res["rank1"] == 0.0 and res["rank3"] == 1.0
    assert res["mAP"] == pytest.approx(1 / 3)


def test_no_valid_query_raises() -> None:
    with pytest.raises(InputError, match="0 valid queries"):
        cmc_map(np.zeros((1, 1)), [1], [0], [1], [0])


def _reference(dist, qp, qc, gp, gc, protocol, ranks):
    """Plain per-query loop, written for clarity, to cross-check the vectorised code."""
    firsts, aps = [], []
    for i in range(dist.shape[0]):
        order = sorted(range(dist.shape[1]), key=lambda j: (dist[i, j], j))
        kept = [j for j in order if gp[j] != -1
                and not (protocol == "market" and gp[j] == qp[i] and gc[j] == qc[i])]
        good = [r for r, j in enumerate(kept, 1) if gp[j] == qp[i]]
        if not good:
            continue
        firsts.append(good[0])
        aps.append(np.mean([(n + 1) / r for n, r in enumerate(good)]))
    out = {f"rank{k}": float(np.mean(np.array(firsts) <= k)) for k in ranks}
    out.update(mAP=float(np.mean(aps)), num_query=len(firsts))
    return out


@pytest.mark.parametrize("protocol", ["market", "single_shot"])
def test_random_case_matches_reference(protocol: str) -> None:
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((23, 8)), rng.standard_normal((61, 8))
    qp, qc = rng.integers(0, 6, 23), rng.integers(0, 3, 23)
    gp, gc = rng.integers(-1, 6, 61), rng.integers(0, 3, 61)
    dist = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    ranks = (1, 3, 10)
    expected = _reference(dist, qp, qc, gp, gc, protocol, ranks)
    got = evaluate(q, qp, qc, g, gp, gc, protocol=protocol, ranks=ranks, chunk=5)
    assert got["num_query"] == expected["num_query"]
    for key in ("rank1", "rank3", "rank10", "mAP"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert cmc_map(dist, qp, qc, gp, gc, protocol=protocol, ranks=ranks) == pytest.approx(expected)


def test_evaluate_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(4)
    q, g = rng.standard_normal((40, 16)).astype(np.float32), rng.standard_normal((90, 16)).astype(np.float32)
    args = (q, rng.integers(0, 9, 40), rng.integers(0, 2, 40), g, rng.integers(0, 9, 90), rng.integers(0, 2, 90))
    assert evaluate(*args, chunk=7) == evaluate(*args, chunk=1000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "cuhk"}, "protocol must be one of"),
        ({"ranks": (0,)}, "ranks must be positive"),
        ({"chunk": 0}, "chunk must be a positive int"),
    ],
)
def test_bad_options_raise(kwargs: dict, message: str) -> None:
    emb = np.eye(2, dtype=np.float32)
    with pytest.raises(InputError, match=message):
        evaluate(emb, [0, 1], [0, 0], emb, [0, 1], [1, 1], **kwargs)


def test_bad_inputs_raise() -> None:
    emb = np.eye(2, dtype=np.float32)
    with pytest.raises(InputError, match="dim 2 but gallery embeddings 3"):
        evaluate(emb, [0, 1], [0, 0], np.ones((2, 3), np.float32), [0, 1], [1, 1])
    with pytest.raises(InputError, match=r"gallery pids must be an integer array of shape \(2,\)"):
        evaluate(emb, [0, 1], [0, 0], emb, [0, 1, 2], [1, 1])
    with pytest.raises(InputError, match="finite float"):
        evaluate(emb * np.nan, [0, 1], [0, 0], emb, [0, 1], [1, 1])


def test_format_table_lists_every_run_in_percent() -> None:
    table = format_table({"fp32": {"rank1": 0.5, "mAP": 0.25, "num_query": 4}, "fp16": {"rank1": 0.125}})
    lines = table.strip().splitlines()
    assert lines[0] == "| run | rank1 | mAP | num_query |"
    assert lines[2] == "| fp32 | 50.00 | 25.00 | 4 |"
    assert lines[3] == "| fp16 | 12.50 | - | - |"


@pytest.mark.parametrize("empty", ["gallery", "query"])
def test_evaluate_with_an_empty_side_says_so(empty: str) -> None:
    emb = np.eye(3, 4, dtype=np.float32)
    none = np.zeros((0, 4), np.float32)
    q, g = (emb, none) if empty == "gallery" else (none, emb)
    ids = {"query": np.arange(len(q)), "gallery": np.arange(len(g))}
    with pytest.raises(InputError, match=f"{empty} embeddings are empty"):
        evaluate(q, ids["query"], ids["query"], g, ids["gallery"], ids["gallery"] + 1)


def test_cmc_map_refuses_nan_distances_instead_of_scoring_gallery_order() -> None:
    pids = np.arange(10)
    with pytest.raises(InputError, match="100 NaN of 100"):
        cmc_map(np.full((10, 10), np.nan), pids, np.zeros(10, int), pids, np.ones(10, int))
    one_nan = np.eye(3)
    one_nan[1, 2] = np.nan
    with pytest.raises(InputError, match="1 NaN of 9"):
        cmc_map(one_nan, np.arange(3), np.zeros(3, int), np.arange(3), np.ones(3, int))


def test_cmc_map_refuses_a_distance_matrix_without_gallery_columns() -> None:
    with pytest.raises(InputError, match="no gallery column"):
        cmc_map(np.zeros((2, 0)), [1, 2], [0, 0], np.zeros(0, int), np.zeros(0, int))


def test_evaluate_refuses_distances_that_overflow_to_nan() -> None:
    # finite but huge embeddings: |q|^2 + |g|^2 - 2 q.g is inf - inf = NaN in float32
    emb = np.full((10, 4), 1e30, np.float32)
    with pytest.raises(InputError, match="NaN ranks nothing"):
        evaluate(emb, np.arange(10), np.zeros(10, int), emb, np.arange(10), np.ones(10, int))
