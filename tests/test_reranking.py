"""Tests of reid_tf.evaluation.reranking (k-reciprocal re-ranking, flipreid.md §7.4)."""
import reid_tf  # noqa: F401  (project convention: first import)

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from reid_tf.evaluation import re_ranking


def loop_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """Straightforward loops over the steps of flipreid.md §7.4 (rank lists: stable argsort)."""
    num_query = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    full = (full ** 2).astype(np.float32)
    n = full.shape[0]
    column_max = full.max(axis=0)
    distance = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(n):
            distance[i, j] = full[j, i] / column_max[i]  # transpose of column-normalised
    rank = np.argsort(distance, axis=1, kind="stable")

    def reciprocal_set(i, k):
        return [int(c) for c in rank[i, :k] if i in list(rank[c, :k])]

    encoding = np.zeros((n, n), dtype=np.float64)
    half = int(np.around(k1 / 2.0)) + 1
    for i in range(n):
        members = reciprocal_set(i, k1 + 1)
        expanded = set(members)
        for candidate in members:
            candidate_set = reciprocal_set(candidate, half)
            if len(set(candidate_set) & set(members)) > 2.0 / 3 * len(candidate_set):
                expanded |= set(candidate_set)
        weights = {j: np.exp(-float(distance[i, j])) for j in expanded}
        total = sum(weights.values())
        for j, weight in weights.items():
            encoding[i, j] = weight / total
    if k2 != 1:
        expanded_encoding = np.zeros_like(encoding)
        for i in range(n):
            neighbours = rank[i, :k2]
            for j in neighbours:
                expanded_encoding[i] += encoding[j]
            expanded_encoding[i] /= len(neighbours)
        encoding = expanded_encoding
    result = np.zeros(q_g.shape)
    for i in range(num_query):
        for g in range(q_g.shape[1]):
            j = num_query + g
            shared = sum(min(encoding[i, k], encoding[j, k]) for k in range(n))
            jaccard = 1 - shared / (2 - shared)
            result[i, g] = (1 - lambda_value) * jaccard + lambda_value * float(distance[i, j])
    return result


def _random_problem(seed, num_query, num_gallery, dims=6):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_query + num_gallery, dims))
    # Identity-like clusters so that k-reciprocal sets are not trivial.
    features[:, :3] += 2.0 * rng.integers(0, 5, num_query + num_gallery)[:, np.newaxis]
    query, gallery = features[:num_query], features[num_query:]
    return cdist(query, gallery), cdist(query, query), cdist(gallery, gallery)


@pytest.mark.parametrize("seed, k1, k2, lambda_value", [
    (0, 20, 6, 0.3),   # the FlipReID defaults (k1 + 1 = 21 of 30 items)
    (1, 5, 3, 0.3),    # round(5/2) = 2 (half to even) -> 3 neighbours in the expansion
    (2, 4, 1, 0.5),    # k2 = 1: no query expansion
    (3, 7, 2, 0.0),    # pure Jaccard distance
])
def test_matches_loop_implementation(seed, k1, k2, lambda_value):
    q_g, q_q, g_g = _random_problem(seed, 8, 22)
    result = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert result.shape == (8, 22) and result.dtype == np.float32
    expected = loop_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_lambda_one_gives_row_max_normalised_squared_distances():
    q_g, q_q, g_g = _random_problem(4, 5, 9)
    result = re_ranking(q_g, q_q, g_g, lambda_value=1.0)
    assert result.shape == (5, 9)
    # Row i of the full (Q+G)^2 matrix for a query is [q_q[i], q_g[i]].
    row_max = np.maximum((q_q ** 2).max(axis=1), (q_g ** 2).max(axis=1))
    np.testing.assert_allclose(result, q_g ** 2 / row_max[:, np.newaxis], rtol=1e-6)


def test_k_reciprocal_neighbour_is_promoted():
    # 2-D points; k1 = 4 (5-item rank lists), k2 = 1, lambda = 0.3.
    query = np.array([[0.0, 0.0]])
    gallery = np.array([
        [-0.9, 0.0],                                 # g0: nearest to the query (0.9) ...
        [1.0, 0.0], [1.05, 0.1], [1.1, -0.1],        # g1-g3: true matches at 1.0-1.10
        [-1.2, 0.0], [-1.25, 0.1], [-1.3, -0.1], [-1.2, 0.2],  # ... but g0's own 4 neighbours
    ])
    q_g, q_q, g_g = cdist(query, gallery), cdist(query, query), cdist(gallery, gallery)
    assert np.argmin(q_g[0]) == 0  # originally g0 is ranked first
    result = re_ranking(q_g, q_q, g_g, k1=4, k2=1, lambda_value=0.3)
    # The query's first 5 are {q, g0, g1, g2, g3}; g1-g3 have the query in their first 5, g0
    # does not (its cluster at 0.30-0.41 fills them): R(q) = {q, g1, g2, g3}. g0's set is its
    # cluster, disjoint from R(q): Jaccard distance 1, and its final distance is
    # 0.7 * 1 + 0.3 * 0.9^2 / max_row(d^2) with max_row = |(-1.3, -0.1)|^2 = 1.70.
    assert result[0, 0] == pytest.approx(0.7 + 0.3 * 0.81 / 1.70, abs=1e-6)
    assert list(np.argsort(result[0])[:4]) == [1, 2, 3, 0]


def test_errors():
    q_g, q_q, g_g = _random_problem(5, 3, 4)
    with pytest.raises(ValueError, match=r"q_q_dist must have shape \(3, 3\)"):
        re_ranking(q_g, q_q[:2, :2], g_g)
    with pytest.raises(ValueError, match=r"g_g_dist must have shape \(4, 4\)"):
        re_ranking(q_g, q_q, g_g[:3])
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(q_g, q_q, g_g, k1=0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        re_ranking(q_g * np.nan, q_q, g_g)
