"""Tests of reid_tf.evaluation.protocols on small hand-worked examples."""
import reid_tf  # noqa: F401  (project convention: first import)

import random

import numpy as np
import pytest

from reid_tf.data.registry import PROTOCOLS
from reid_tf.evaluation import (
    PROTOCOL_FUNCTIONS,
    average_results,
    cmc_map,
    evaluate_regdb,
    evaluate_standard,
    evaluate_sysu_mm01,
    evaluate_vehicleid,
    pairwise_distance,
    re_ranking,
    sysu_mm01_cmc_map,
)


def angles(degrees, scales=None):
    """2-D features at the given angles (similarity of unit vectors = cos of the angle gap)."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    features = np.stack([np.cos(radians), np.sin(radians)], axis=1)
    if scales is not None:
        features *= np.asarray(scales, dtype=np.float64)[:, np.newaxis]
    return features.astype(np.float32)


def test_every_registry_protocol_has_a_function():
    assert set(PROTOCOL_FUNCTIONS) == set(PROTOCOLS)


# --- standard (Market-1501) -------------------------------------------------------------------

Q_FEATS = np.array([[0.0], [10.0]], dtype=np.float32)
Q_PIDS, Q_CAMS = np.array([1, 2]), np.array([0, 0])
G_FEATS = np.array([[1.0], [2.0], [3.0], [11.0], [12.5]], dtype=np.float32)
G_PIDS, G_CAMS = np.array([2, 1, 1, 2, 1]), np.array([1, 0, 1, 0, 1])


def test_standard_hand_worked():
    # Euclidean distances. q0 (pid 1, cam 0, at 0): g0(2) g1(1, cam 0: removed) g2(1) g3(2) g4(1)
    #   -> g0 g2 g3 g4, r = [0, 1, 0, 1]: first match rank 2, AP = (1/2 + 2/4)/2 = 1/2, INP 2/4.
    # q1 (pid 2, cam 0, at 10): g3(2, cam 0: removed) g4(1) g2(1) g1(1) g0(2)
    #   -> r = [0, 0, 0, 1]: rank 4, AP = 1/4, INP = 1/4.
    result = evaluate_standard(Q_FEATS, G_FEATS, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS,
                               metric="euclidean", max_rank=3)
    np.testing.assert_allclose(result["cmc"], [0.0, 0.5, 0.5])
    assert result["rank1"] == 0.0
    assert result["rank5"] == 1.0 and result["rank10"] == 1.0 and result["rank20"] == 1.0
    assert result["mAP"] == pytest.approx(0.375)
    assert result["mINP"] == pytest.approx(0.375)
    assert result["num_valid_queries"] == 2


def test_standard_without_camera_removal():
    # q0: r = [0, 1, 1, 0, 1] -> AP = (1/2 + 2/3 + 3/5)/3 = 53/90.
    # q1: g3(2) g4 g2 g1 g0(2): r = [1, 0, 0, 0, 1] -> AP = (1 + 2/5)/2 = 0.7.
    result = evaluate_standard(Q_FEATS, G_FEATS, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS,
                               metric="sqeuclidean", remove_same_camera=False)
    assert result["rank1"] == 0.5
    assert result["mAP"] == pytest.approx((53 / 90 + 0.7) / 2)


def test_standard_with_re_ranking_is_the_composition():
    rng = np.random.default_rng(0)
    q_feats, g_feats = rng.normal(size=(6, 4)), rng.normal(size=(15, 4))
    q_pids, g_pids = rng.integers(0, 3, 6), rng.integers(0, 3, 15)
    q_cams, g_cams = rng.integers(0, 2, 6), rng.integers(0, 2, 15)
    result = evaluate_standard(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams,
                               metric="cosine", re_ranking=True, k1=5, k2=2)
    distmat = re_ranking(pairwise_distance(q_feats, g_feats, "cosine"),
                         pairwise_distance(q_feats, q_feats, "cosine"),
                         pairwise_distance(g_feats, g_feats, "cosine"), k1=5, k2=2)
    expected = cmc_map(distmat, q_pids, g_pids, q_cams, g_cams)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    np.testing.assert_allclose(result["cmc"], expected["cmc"])


def test_standard_errors():
    with pytest.raises(ValueError, match="q_pids has shape"):
        evaluate_standard(Q_FEATS, G_FEATS, Q_PIDS[:1], G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate_standard(Q_FEATS, G_FEATS, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, metric="l1")


# --- VehicleID --------------------------------------------------------------------------------

V_FEATS = np.array([[0.0], [0.5], [3.0], [4.0], [1.0], [6.0]], dtype=np.float32)
V_PIDS = np.array([7, 7, 8, 8, 9, 9])


def test_vehicleid_averages_trials_without_camera_removal():
    trials = [([1, 3, 5], [0, 2, 4]), ([0, 2, 4], [1, 3, 5])]
    # Trial A, gallery 0.0 (7), 3.0 (8), 1.0 (9):
    #   q 0.5 (7): 0.5, 2.5, 0.5 -> tie broken by gallery position: pid 7 first, AP 1.
    #   q 4.0 (8): 4, 1, 3 -> pid 8 first, AP 1.   q 6.0 (9): 6, 3, 5 -> pid 8, pid 9: AP 1/2.
    #   CMC [2/3, 1, 1], mAP = mINP = 5/6.
    # Trial B, gallery 0.5 (7), 4.0 (8), 6.0 (9):
    #   q 0.0 (7): AP 1.   q 3.0 (8): 2.5, 1, 3 -> AP 1.   q 1.0 (9): 0.5, 3, 5 -> rank 3, AP 1/3.
    #   CMC [2/3, 2/3, 1], mAP = mINP = 7/9.
    result = evaluate_vehicleid(V_FEATS, V_PIDS, trials, metric="euclidean")
    assert result["num_trials"] == 2
    np.testing.assert_allclose(result["cmc"], [2 / 3, 5 / 6, 1.0])
    assert result["rank1"] == pytest.approx(2 / 3)
    assert result["rank5"] == 1.0
    assert result["mAP"] == pytest.approx((5 / 6 + 7 / 9) / 2)  # 29/36
    assert result["mINP"] == pytest.approx((5 / 6 + 7 / 9) / 2)
    assert [trial["mAP"] for trial in result["per_trial"]] == pytest.approx([5 / 6, 7 / 9])
    with pytest.raises(ValueError, match="trial 0 gallery_indices holds positions outside"):
        evaluate_vehicleid(V_FEATS, V_PIDS, [([0], [6])])


# --- SYSU-MM01 --------------------------------------------------------------------------------

# Visible pool: identity, camera, angle (the queries sit at 0 degrees).
POOL_PIDS = np.array([1, 2, 2, 1, 3, 1])
POOL_CAMS = np.array([2, 1, 4, 1, 5, 5])
# p5 is 10x longer: without L2 normalisation its dot product (5.0) would rank it first.
POOL_FEATS = angles([10, 20, 30, 40, 50, 60], scales=[1, 1, 1, 1, 1, 10])
QUERY_PIDS = np.array([1, 1, 4, 3])
QUERY_CAMS = np.array([3, 6, 6, 3])
QUERY_FEATS = angles([0, 0, 0, 0], scales=[2, 1, 1, 1])


def test_sysu_mm01_hand_worked_two_trials():
    # Trial 1 (whole pool), ranking p0(1,c2) p1(2) p2(2) p3(1) p4(3) p5(1):
    #   q0 (1, cam 3): p0 removed (camera 2) -> p1(2) p2(2) p3(1) p4(3) p5(1), r = [0,0,1,0,1]
    #     distinct identities 2, 1, 3 -> rank 2 (image-level rank would be 3);
    #     AP = (1/3 + 2/5)/2 = 11/30; INP = 2/5.
    #   q1 (1, cam 6): nothing removed, r = [1,0,0,1,0,1] -> rank 1; AP = (1 + 2/4 + 3/6)/3 = 2/3;
    #     INP = 3/6.
    #   q2 (4): identity absent -> skipped.
    #   q3 (3, cam 3): p0 removed -> identity 3 at image rank 4, distinct rank 3 (2, 1, 3);
    #     AP = INP = 1/4.
    #   CMC (distinct) [1/3, 2/3, 1, 1, 1, 1]; mAP = (11/30 + 2/3 + 1/4)/3 = 77/180;
    #   mINP = (2/5 + 1/2 + 1/4)/3 = 23/60.  (Image-level CMC@2 would be 1/3.)
    # Trial 2 (pool rows 0, 3, 4 = p0(1,c2) p3(1) p4(3)):
    #   q0: p3(1) p4(3) -> rank 1, AP = INP = 1.   q1: p0(1) p3(1) p4(3) -> AP = INP = 1.
    #   q3: p3(1) p4(3) -> rank 2, AP = INP = 1/2.
    #   CMC [2/3, 1, 1]; mAP = mINP = 5/6.
    result = evaluate_sysu_mm01(QUERY_FEATS, QUERY_PIDS, QUERY_CAMS, POOL_FEATS, POOL_PIDS,
                                POOL_CAMS, [np.arange(6), [0, 3, 4]])
    first, second = result["per_trial"]
    np.testing.assert_allclose(first["cmc"], [1 / 3, 2 / 3, 1, 1, 1, 1])
    assert first["mAP"] == pytest.approx(77 / 180)
    assert first["mINP"] == pytest.approx(23 / 60)
    assert first["num_valid_queries"] == 3
    np.testing.assert_allclose(second["cmc"], [2 / 3, 1, 1])
    assert second["mAP"] == pytest.approx(5 / 6)
    # Averages; the shorter CMC is extended with its last value (1 at the gallery size).
    np.testing.assert_allclose(result["cmc"], [0.5, 5 / 6, 1, 1, 1, 1])
    assert result["rank1"] == pytest.approx(0.5)
    assert result["rank5"] == 1.0 and result["rank20"] == 1.0
    assert result["mAP"] == pytest.approx((77 / 180 + 5 / 6) / 2)  # 227/360
    assert result["mINP"] == pytest.approx((23 / 60 + 5 / 6) / 2)  # 73/120


def test_sysu_mm01_camera_rule_ignores_identity():
    # Gallery: s0 = identity 2 from camera 2 (distance 0.1), s1 = identity 1 from camera 1 (0.2),
    # s2 = identity 1 from camera 2 (0.05).
    distmat = np.array([[0.1, 0.2, 0.05],    # camera-3 query: s0 and s2 removed -> s1 first
                        [0.1, 0.2, 0.05]])   # camera-6 query: s2(1) s0(2) s1(1) -> AP (1+2/3)/2
    result = sysu_mm01_cmc_map(distmat, [1, 1], [2, 1, 1], [3, 6], [2, 1, 2])
    assert result["mAP"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)
    np.testing.assert_allclose(result["cmc"], [1, 1, 1])
    # A camera-3 query whose only true match is from camera 2 has no valid match.
    with pytest.raises(ValueError, match="no query has a true match"):
        sysu_mm01_cmc_map([[0.1, 0.2]], [1], [1, 2], [3], [2, 1])


def sysu_per_query_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per-query loop of cmnas.md §9.2 (stable sort for ties)."""
    max_rank = min(max_rank, distmat.shape[1])
    curves, precisions, penalties = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(np.asarray(distmat[q], dtype=np.float32), kind="stable")
        keep = ~((q_cams[q] == 3) & (g_cams[order] == 2))
        ranked = g_pids[order][keep]
        relevance = (ranked == q_pids[q]).astype(np.float64)
        if relevance.sum() == 0:
            continue
        distinct = []
        for pid in ranked:
            if pid not in distinct:
                distinct.append(pid)
        curve = np.ones(max_rank)
        curve[:min(max_rank, len(distinct))] = np.minimum(
            np.cumsum(np.asarray(distinct) == q_pids[q]), 1)[:max_rank]
        curves.append(curve)
        hits = np.nonzero(relevance)[0] + 1
        precisions.append(np.mean(np.arange(1, hits.size + 1) / hits))
        penalties.append(hits.size / hits[-1])
    return np.mean(curves, axis=0), np.mean(precisions), np.mean(penalties), len(curves)


def test_sysu_mm01_metrics_match_per_query_reference(monkeypatch):
    from reid_tf.evaluation import metrics as metrics_module
    monkeypatch.setattr(metrics_module, "_BLOCK_ELEMENTS", 50)  # several blocks, two threads
    rng = np.random.default_rng(11)
    for _ in range(5):
        num_query, num_gallery = rng.integers(3, 40), rng.integers(3, 60)
        distmat = -np.round(rng.random((num_query, num_gallery)), 1)  # ties, negated sims
        q_pids, g_pids = rng.integers(0, 6, num_query), rng.integers(0, 6, num_gallery)
        q_cams = rng.choice([3, 6], num_query)
        g_cams = rng.choice([1, 2, 4, 5], num_gallery)
        max_rank = int(rng.integers(1, 25))
        expected = sysu_per_query_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank)
        result = sysu_mm01_cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                                   num_threads=2)
        np.testing.assert_allclose(result["cmc"], expected[0], atol=1e-6)
        assert result["mAP"] == pytest.approx(expected[1], abs=1e-6)
        assert result["mINP"] == pytest.approx(expected[2], abs=1e-6)
        assert result["num_valid_queries"] == expected[3]


# --- RegDB ------------------------------------------------------------------------------------

R_QUERY = angles([0, 90])
R_QUERY_PIDS = np.array([1, 2])
# g1 is short: without normalisation its dot product with q0 (0.087) would fall below g2's.
R_GALLERY = angles([20, 30, 80, 105], scales=[1, 0.1, 1, 1])
R_GALLERY_PIDS = np.array([2, 1, 1, 2])


def test_regdb_single_trial_and_average():
    # Visible -> infrared. q0 (1, 0 deg): g0(2) g1(1) g2(1) g3(2): r = [0,1,1,0]
    #   rank 2, AP = (1/2 + 2/3)/2 = 7/12, INP = 2/3.
    # q1 (2, 90 deg): gaps g2 10, g3 15, g1 60, g0 70: r = [0,1,0,1] -> rank 2, AP 1/2, INP 1/2.
    # CMC [0, 1, 1, 1]; mAP = 13/24; mINP = 7/12.  (The same camera id everywhere: nothing
    # is removed.)
    forward = evaluate_regdb(R_QUERY, R_GALLERY, R_QUERY_PIDS, R_GALLERY_PIDS)
    np.testing.assert_allclose(forward["cmc"], [0, 1, 1, 1])
    assert forward["mAP"] == pytest.approx(13 / 24)
    assert forward["mINP"] == pytest.approx(7 / 12)
    # Infrared -> visible (roles swapped): g0 (2, 20): q0(1) q1(2) -> AP 1/2; g1 (1, 30) -> 1;
    # g2 (1, 80): q1(2) q0(1) -> 1/2; g3 (2, 105) -> 1. CMC [1/2, 1], mAP = mINP = 3/4.
    backward = evaluate_regdb(R_GALLERY, R_QUERY, R_GALLERY_PIDS, R_QUERY_PIDS)
    np.testing.assert_allclose(backward["cmc"], [0.5, 1])
    assert backward["mAP"] == pytest.approx(0.75)
    averaged = average_results([forward, backward])
    assert averaged["num_trials"] == 2
    np.testing.assert_allclose(averaged["cmc"], [0.25, 1, 1, 1])
    assert averaged["rank1"] == pytest.approx(0.25)
    assert averaged["mAP"] == pytest.approx((13 / 24 + 0.75) / 2)  # 31/48
    assert averaged["mINP"] == pytest.approx((7 / 12 + 0.75) / 2)  # 2/3
    with pytest.raises(ValueError, match="at least one"):
        average_results([])
