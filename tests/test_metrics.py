"""Tests of reid_tf.evaluation.metrics (CMC/mAP/mINP) and reid_tf.evaluation.distance."""
import reid_tf  # noqa: F401  (project convention: first import)

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics.pairwise import cosine_distances

from reid_tf.evaluation import cmc_map, pairwise_distance
from reid_tf.evaluation import metrics as metrics_module


def per_query_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                        remove_same_camera):
    """Plain per-query loop following flipreid.md §7.5 literally (stable sort for ties)."""
    distmat = np.asarray(distmat, dtype=np.float32)
    max_rank = min(max_rank, distmat.shape[1])
    curves, precisions, penalties = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        if remove_same_camera:
            keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        else:
            keep = np.ones(order.shape[0], dtype=bool)
        relevance = (g_pids[order][keep] == q_pids[q]).astype(np.float64)
        if relevance.sum() == 0:
            continue
        cumulative = np.cumsum(relevance)
        curve = np.ones(max_rank)  # beyond a short list the natural value is 1
        length = min(max_rank, relevance.shape[0])
        curve[:length] = np.minimum(cumulative[:length], 1)
        curves.append(curve)
        ap = sum(relevance[k] * cumulative[k] / (k + 1) for k in range(relevance.shape[0]))
        precisions.append(ap / relevance.sum())
        last = np.nonzero(relevance)[0][-1] + 1
        penalties.append(relevance.sum() / last)
    return np.mean(curves, axis=0), np.mean(precisions), np.mean(penalties), len(curves)


# Hand-worked example: 3 queries x 5 gallery items.
G_PIDS = np.array([1, 2, 1, 3, 1])
G_CAMS = np.array([0, 1, 1, 0, 0])
Q_PIDS = np.array([1, 2, 3])
Q_CAMS = np.array([0, 0, 0])
DISTMAT = np.array([
    [0.3, 0.1, 0.5, 0.2, 0.4],    # query A (pid 1, cam 0)
    [0.2, 0.05, 0.1, 0.4, 0.5],   # query B (pid 2, cam 0)
    [0.1, 0.2, 0.3, 0.4, 0.5],    # query C (pid 3, cam 0)
], dtype=np.float32)


def test_hand_worked_with_same_camera_removal():
    # A: ranked g1(pid2) g3(pid3, cam0: other id, stays) g0(pid1 cam0: removed)
    #    g4(pid1 cam0: removed) g2(pid1 cam1) -> list g1 g3 g2, r = [0, 0, 1]
    #    CMC [0, 0, 1, 1, 1]; AP = (1/1 match) * 1/3 = 1/3; INP = 1/3.
    # B: ranked g1(pid2, cam1: match) first -> CMC all 1, AP = 1, INP = 1.
    # C: its only true match g3 (pid3, cam0) is removed -> skipped (not in denominators).
    result = cmc_map(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=50)
    assert result["num_valid_queries"] == 2
    assert result["cmc"].shape == (5,)  # max_rank capped at the gallery size
    np.testing.assert_allclose(result["cmc"], [0.5, 0.5, 1.0, 1.0, 1.0], atol=1e-12)
    assert result["mAP"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)
    assert result["mINP"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)


def test_hand_worked_without_camera_removal():
    # A: g1 g3 g0 g4 g2 -> r = [0, 0, 1, 1, 1]; AP = (1/3 + 2/4 + 3/5)/3 = 43/90; INP = 3/5.
    # B: AP = 1, INP = 1.   C: g0 g1 g2 g3 g4 -> match at rank 4: AP = 1/4, INP = 1/4.
    # CMC: A [0,0,1,1,1], B [1,1,1,1,1], C [0,0,0,1,1] -> mean [1/3, 1/3, 2/3, 1, 1].
    result = cmc_map(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=3,
                     remove_same_camera=False)
    assert result["num_valid_queries"] == 3
    np.testing.assert_allclose(result["cmc"], [1 / 3, 1 / 3, 2 / 3], atol=1e-12)
    assert result["mAP"] == pytest.approx((43 / 90 + 1 + 1 / 4) / 3, abs=1e-12)  # 311/540
    assert result["mINP"] == pytest.approx((3 / 5 + 1 + 1 / 4) / 3, abs=1e-12)  # 37/60


def test_cameras_optional_without_removal():
    with_cams = cmc_map(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, remove_same_camera=False)
    without = cmc_map(DISTMAT, Q_PIDS, G_PIDS, None, None, remove_same_camera=False)
    np.testing.assert_array_equal(with_cams["cmc"], without["cmc"])
    with pytest.raises(ValueError, match="camids"):
        cmc_map(DISTMAT, Q_PIDS, G_PIDS, None, None)


def test_ties_broken_by_gallery_index():
    # All three distances equal: the order is g0 (pid 2), g1 (pid 1), g2 (pid 1)
    # -> r = [0, 1, 1]; AP = (1/2 + 2/3)/2 = 7/12; INP = 2/3; CMC [0, 1, 1].
    result = cmc_map([[0.5, 0.5, 0.5]], [1], [2, 1, 1], [0], [1, 1, 1])
    np.testing.assert_allclose(result["cmc"], [0, 1, 1])
    assert result["mAP"] == pytest.approx(7 / 12)
    assert result["mINP"] == pytest.approx(2 / 3)


def test_signed_zero_and_float32_cast_make_ties():
    # -0.0 == +0.0, so the non-match g0 (index 0) comes first: the match is at rank 2.
    result = cmc_map(np.array([[0.0, -0.0]]), [1], [2, 1], [0], [1, 1])
    assert result["mAP"] == pytest.approx(0.5)
    # 1 + 1e-12 and 1 are equal in float32: a tie, g0 (non-match) first again.
    result = cmc_map(np.array([[1.0, 1.0 + 1e-12]], dtype=np.float64)[:, ::-1].copy(),
                     [1], [2, 1], [0], [1, 1])
    assert result["mAP"] == pytest.approx(0.5)
    # Negative distances rank below positive ones (the match at -0.5 is first).
    result = cmc_map(np.array([[0.25, -0.5, -0.25]]), [1], [2, 1, 2], [0], [1, 1, 1])
    assert result["mAP"] == pytest.approx(1.0)


def test_errors():
    with pytest.raises(ValueError, match="no query has a true match"):
        cmc_map(DISTMAT[2:], Q_PIDS[2:], G_PIDS, Q_CAMS[2:], G_CAMS)
    with pytest.raises(ValueError, match="q_pids has 2 entries"):
        cmc_map(DISTMAT, Q_PIDS[:2], G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="g_camids has 4 entries"):
        cmc_map(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS[:4])
    with pytest.raises(ValueError, match="2-D"):
        cmc_map(DISTMAT[0], Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="max_rank"):
        cmc_map(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=0)
    bad = DISTMAT.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cmc_map(bad, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    bad[1, 3] = -np.nan
    with pytest.raises(ValueError, match="NaN"):
        cmc_map(bad, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)


@pytest.mark.parametrize("remove_same_camera", [True, False])
def test_matches_per_query_reference_with_many_ties(remove_same_camera, monkeypatch):
    rng = np.random.default_rng(7)
    # Small blocks so that several blocks and both threads are exercised.
    monkeypatch.setattr(metrics_module, "_BLOCK_ELEMENTS", 97)
    for trial in range(6):
        num_query, num_gallery = rng.integers(5, 60), rng.integers(5, 120)
        distmat = np.round(rng.random((num_query, num_gallery)), 1)  # many ties
        if trial % 2:
            distmat = distmat - 0.5  # negative values and signed zeros too
        distmat = distmat.astype(np.float32 if trial < 3 else np.float64)
        q_pids = rng.integers(0, 8, num_query)
        g_pids = rng.integers(0, 8, num_gallery)
        q_cams = rng.integers(0, 3, num_query)
        g_cams = rng.integers(0, 3, num_gallery)
        max_rank = int(rng.integers(1, 70))
        expected = per_query_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank,
                                       remove_same_camera)
        for threads in (1, 2):
            result = cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                             remove_same_camera=remove_same_camera, num_threads=threads)
            np.testing.assert_allclose(result["cmc"], expected[0], atol=1e-6)
            assert result["mAP"] == pytest.approx(expected[1], abs=1e-6)
            assert result["mINP"] == pytest.approx(expected[2], abs=1e-6)
            assert result["num_valid_queries"] == expected[3]


# --- distances --------------------------------------------------------------------------------

def _features(seed=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(7, 5)).astype(np.float32),
            rng.normal(size=(11, 5)).astype(np.float32))


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_pairwise_distance_matches_scipy(metric, chunk_size):
    query, gallery = _features()
    result = pairwise_distance(query, gallery, metric=metric, chunk_size=chunk_size)
    assert result.dtype == np.float32 and result.shape == (7, 11)
    expected = cdist(query.astype(np.float64), gallery.astype(np.float64), metric=metric)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_pairwise_distance_normalize_and_neg_dot():
    query, gallery = _features(4)
    query_unit = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery_unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    result = pairwise_distance(query * 3, gallery, metric="sqeuclidean", normalize=True,
                               chunk_size=2)
    np.testing.assert_allclose(result, cdist(query_unit, gallery_unit, "sqeuclidean"),
                               atol=1e-5)
    result = pairwise_distance(query, gallery, metric="neg_dot")
    np.testing.assert_allclose(result, -(query.astype(np.float64) @ gallery.T), atol=1e-5)
    result = pairwise_distance(query, gallery * 7, metric="neg_dot", normalize=True)
    np.testing.assert_allclose(result, -(query_unit @ gallery_unit.T), atol=1e-5)


def test_cosine_zero_vector_and_float64_like_sklearn():
    query, gallery = _features(5)
    query = query.astype(np.float64)
    query[2] = 0
    result = pairwise_distance(query, gallery, metric="cosine", chunk_size=4)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, cosine_distances(query, gallery), atol=1e-6)
    np.testing.assert_allclose(result[2], 1.0)


def test_pairwise_distance_errors():
    query, gallery = _features()
    with pytest.raises(ValueError, match="Unknown metric 'manhattan'"):
        pairwise_distance(query, gallery, metric="manhattan")
    with pytest.raises(ValueError, match="5 dimensions but gallery_features have 4"):
        pairwise_distance(query, gallery[:, :4])
    with pytest.raises(ValueError, match="chunk_size"):
        pairwise_distance(query, gallery, chunk_size=0)
    with pytest.raises(ValueError, match="query_features must be a 2-D"):
        pairwise_distance(query[0], gallery)
