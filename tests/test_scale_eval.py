"""Tests of evaluation at scale: cmc_map_from_features, the bounded-memory re-ranking, the
dense/sparse switch and the report's feature-distance path."""
import reid_tf  # noqa: F401  (project convention: first import)

import numpy as np
import pandas as pd
import pytest

from reid_tf.evaluation import (cmc_map, cmc_map_from_features, evaluate_standard,
                                pairwise_distance, re_ranking, sysu_mm01_cmc_map)
from reid_tf.evaluation.chunked import FeatureDistances
from reid_tf.evaluation.evaluator import EvaluationOptions, evaluate_features
from reid_tf.evaluation.report_data import collect_report_data
from reid_tf.evaluation.reranking_sparse import (dense_re_ranking_bytes,
                                                 rerank_cmc_map_from_features, use_sparse)


def _integer_problem(seed, num_query=41, num_gallery=67, dims=3):
    """Small-integer features (many exactly tied distances), junk (-1) identities, 3 cameras."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 3, (num_query, dims)).astype(np.float32)
    g = rng.integers(0, 3, (num_gallery, dims)).astype(np.float32)
    q_pids = rng.integers(0, 6, num_query)
    g_pids = rng.integers(-1, 6, num_gallery)
    return q, g, q_pids, g_pids, rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)


def _assert_same(expected, actual):
    np.testing.assert_allclose(actual["cmc"], expected["cmc"], rtol=0, atol=1e-6)
    assert abs(actual["mAP"] - expected["mAP"]) < 1e-6
    assert abs(actual["mINP"] - expected["mINP"]) < 1e-6
    assert actual["num_valid_queries"] == expected["num_valid_queries"]
    for key in ("valid", "rank"):
        np.testing.assert_array_equal(actual["per_query"][key], expected["per_query"][key])
    for key in ("ap", "inp"):
        np.testing.assert_allclose(actual["per_query"][key], expected["per_query"][key],
                                   rtol=0, atol=1e-6)


def test_hand_worked_case():
    # distances 1, 3, 2: ranked g0 (other identity), g2 (match, rank 2), g1 (match, rank 3)
    result = cmc_map_from_features([[0.0]], [[1.0], [3.0], [2.0]], [1], [2, 1, 1], [0],
                                   [1, 1, 1], metric="euclidean", max_rank=3, chunk_size=1)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1])
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "neg_dot"])
@pytest.mark.parametrize("remove_same_camera", [True, False])
def test_equals_cmc_map_on_the_full_matrix(seed, metric, remove_same_camera):
    q, g, q_pids, g_pids, q_cams, g_cams = _integer_problem(seed)
    expected = cmc_map(pairwise_distance(q, g, metric), q_pids, g_pids, q_cams, g_cams,
                       max_rank=20, remove_same_camera=remove_same_camera,
                       return_per_query=True)
    for chunk_size in (1, 5, 7, 41, 1000, None):
        actual = cmc_map_from_features(q, g, q_pids, g_pids, q_cams, g_cams, metric=metric,
                                       max_rank=20, remove_same_camera=remove_same_camera,
                                       chunk_size=chunk_size, return_per_query=True)
        _assert_same(expected, actual)
    # a memory budget of 3 rows of distances
    actual = cmc_map_from_features(q, g, q_pids, g_pids, q_cams, g_cams, metric=metric,
                                   max_rank=20, remove_same_camera=remove_same_camera,
                                   memory_budget=3 * 4 * g.shape[0], num_threads=2,
                                   return_per_query=True)
    _assert_same(expected, actual)


def test_normalized_features_and_sysu_rule():
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(30, 8)), rng.normal(size=(90, 8)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 5, 30), rng.integers(0, 5, 90)
    q_cams, g_cams = rng.choice([3, 6], 30), rng.integers(1, 5, 90)
    distmat = pairwise_distance(q, g, "euclidean", normalize=True)
    expected = cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, return_per_query=True)
    _assert_same(expected, cmc_map_from_features(q, g, q_pids, g_pids, q_cams, g_cams,
                                                 normalize=True, chunk_size=4,
                                                 return_per_query=True))
    q_int, g_int, *_ = _integer_problem(4, 30, 90)
    expected = sysu_mm01_cmc_map(pairwise_distance(q_int, g_int, "neg_dot"), q_pids, g_pids,
                                 q_cams, g_cams, return_per_query=True)
    for chunk_size in (1, 8):
        _assert_same(expected, cmc_map_from_features(q_int, g_int, q_pids, g_pids, q_cams,
                                                     g_cams, metric="neg_dot", max_rank=20,
                                                     chunk_size=chunk_size, rule="sysu_mm01",
                                                     return_per_query=True))


def test_bad_input_is_named():
    q, g, q_pids, g_pids, q_cams, g_cams = _integer_problem(0)
    with pytest.raises(ValueError, match="chunk_size"):
        cmc_map_from_features(q, g, q_pids, g_pids, q_cams, g_cams, chunk_size=0)
    with pytest.raises(ValueError, match="dimensions"):
        cmc_map_from_features(q, g[:, :2], q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="g_pids"):
        cmc_map_from_features(q, g, q_pids, g_pids[:-1], q_cams, g_cams)
    with pytest.raises(ValueError, match="Unknown metric"):
        cmc_map_from_features(q, g, q_pids, g_pids, q_cams, g_cams, metric="manhattan")


def _clustered(seed, num_query=120, num_gallery=480, identities=30, dims=12, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dims))
    q_pids = rng.integers(0, identities, num_query)
    g_pids = rng.integers(0, identities, num_gallery)
    q = (centres[q_pids] + spread * rng.normal(size=(num_query, dims))).astype(np.float32)
    g = (centres[g_pids] + spread * rng.normal(size=(num_gallery, dims))).astype(np.float32)
    return q, g, q_pids, g_pids, rng.integers(0, 4, num_query), rng.integers(0, 4, num_gallery)


@pytest.mark.parametrize("metric,k1,k2,lambda_value", [("cosine", 20, 6, 0.3),
                                                        ("euclidean", 12, 1, 0.5)])
def test_sparse_re_ranking_equals_dense(metric, k1, k2, lambda_value):
    q, g, q_pids, g_pids, q_cams, g_cams = _clustered(5)
    dense = re_ranking(pairwise_distance(q, g, metric), pairwise_distance(q, q, metric),
                       pairwise_distance(g, g, metric), k1=k1, k2=k2, lambda_value=lambda_value)
    expected = cmc_map(dense, q_pids, g_pids, q_cams, g_cams, return_per_query=True)
    plain = cmc_map(pairwise_distance(q, g, metric), q_pids, g_pids, q_cams, g_cams)
    assert expected["mAP"] > plain["mAP"] + 0.02  # re-ranking changes the result here
    # 7 rows of distances per chunk: many chunks in every pass
    actual = rerank_cmc_map_from_features(q, g, q_pids, g_pids, q_cams, g_cams, metric=metric,
                                          k1=k1, k2=k2, lambda_value=lambda_value,
                                          memory_budget=7 * 4 * 600, return_per_query=True)
    assert abs(actual["mAP"] - expected["mAP"]) < 1e-4
    assert abs(actual["cmc"][0] - expected["cmc"][0]) < 1e-4
    np.testing.assert_allclose(actual["per_query"]["ap"], expected["per_query"]["ap"],
                               atol=1e-3)


def test_switch_decision():
    # Market-1501: 4 float32 (Q+G)^2 matrices = 5.9 GB, under the 8 GiB default
    assert dense_re_ranking_bytes(3368, 15913) == 4 * 4 * 19281 ** 2
    assert not use_sparse(3368, 15913)
    assert use_sparse(11659, 82161)  # MSMT17: 141 GB
    assert use_sparse(3368, 15913, memory_budget=4 << 30)
    with pytest.raises(ValueError, match="budget"):
        use_sparse(10, 10, memory_budget=0)


def test_evaluate_standard_switches_and_says_which_ran():
    q, g, q_pids, g_pids, q_cams, g_cams = _clustered(6, 60, 200)
    dense = evaluate_standard(q, g, q_pids, g_pids, q_cams, g_cams, re_ranking=True)
    small = dense_re_ranking_bytes(60, 200) - 1
    sparse = evaluate_standard(q, g, q_pids, g_pids, q_cams, g_cams, re_ranking=True,
                               rerank_memory_budget=small)
    plain = evaluate_standard(q, g, q_pids, g_pids, q_cams, g_cams)
    assert (dense["re_ranking"], sparse["re_ranking"], plain["re_ranking"]) == \
        ("dense", "sparse", "off")
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert abs(dense[key] - sparse[key]) < 1e-4
    expected = cmc_map(pairwise_distance(q, g, "cosine"), q_pids, g_pids, q_cams, g_cams)
    assert plain["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)


def test_report_data_without_the_full_matrix(capsys):
    q, g, q_pids, g_pids, q_cams, g_cams = _clustered(7, 40, 150)
    frame = lambda pids, cams, side: pd.DataFrame(  # noqa: E731
        {"identity_ID": pids, "camera_ID": cams,
         "image_file_path": [f"{side}{i}.jpg" for i in range(len(pids))]})
    query_df, gallery_df = frame(q_pids, q_cams, "q"), frame(g_pids, g_cams, "g")
    options = EvaluationOptions(use_re_ranking=True)
    summary, details = evaluate_features(query_df, gallery_df, q, g, options)
    small = EvaluationOptions(use_re_ranking=True, report_matrix_budget=1000,
                              rerank_memory_budget=1000)
    small_summary, small_details = evaluate_features(query_df, gallery_df, q, g, small)
    assert "re-ranking: sparse" in capsys.readouterr().out
    assert (summary["re_ranking"], small_summary["re_ranking"]) == ("dense", "sparse")
    assert isinstance(details["distmat"], np.ndarray)
    assert isinstance(small_details["distmat"], FeatureDistances)
    full = collect_report_data(summary, details)
    chunked = collect_report_data(summary, small_details)
    assert "report budget" in chunked["meta"]["distances"]
    for key in ("worst_query_index", "worst_rank", "worst_gallery_pid", "camera_num_valid"):
        np.testing.assert_array_equal(chunked[key], full[key])
    for key in ("worst_ap", "camera_rank1", "camera_mAP", "worst_distance",
                "positive_distances", "negative_distances"):
        np.testing.assert_allclose(chunked[key], full[key], atol=1e-5)


def test_rerank_memory_budget_flag_selects_the_sparse_re_ranking(tmp_path, capsys):
    """solution.py --use_re_ranking --rerank_memory_budget=1e-9 (GiB) runs the bounded-memory
    re-ranking on the small synthetic test set (where the default 8 GiB runs the dense one);
    its metrics equal the dense re-ranking's of the same features (test.npz)."""
    import json

    from helpers import parse_flags, run_solution
    from reid_tf.cli.settings import evaluation_settings, rerank_memory_budget_bytes
    assert rerank_memory_budget_bytes(0.5) == 1 << 29 and rerank_memory_budget_bytes(1e-12) == 1
    assert evaluation_settings(parse_flags("--use_re_ranking")).rerank_memory_budget == 8 << 30
    options = (f"cache_folder_path={tmp_path / 'cache'},num_train_identities=6,"
               "num_test_identities=5,images_per_identity=5")
    run_solution("--dataset_name=Synthetic", f"--dataset_options={options}",
                 "--backbone_model_name=msinet", "--image_height=64", "--image_width=32",
                 "--identity_num_per_batch=4", "--image_num_per_identity=2", "--workers=2",
                 "--evaluation_only", "--use_re_ranking", "--save_data_to_disk",
                 "--export_formats=", "--rerank_memory_budget=1e-9",
                 f"--output_folder_path={tmp_path}")
    assert "k-reciprocal re-ranking: sparse" in capsys.readouterr().out
    folder = tmp_path / "Synthetic_msinet"
    with open(folder / "evaluation.json") as stream:
        record = json.load(stream)
    assert record["re_ranking"] == "sparse"
    saved = np.load(folder / "test.npz")
    dense = evaluate_standard(saved["query_image_features_array"],
                              saved["gallery_image_features_array"],
                              saved["query_identity_ID_array"], saved["gallery_identity_ID_array"],
                              saved["query_camera_ID_array"], saved["gallery_camera_ID_array"],
                              metric="cosine", re_ranking=True)
    assert dense["re_ranking"] == "dense"
    assert record["rank1"] == pytest.approx(dense["cmc"][0], abs=1e-6)
    for key in ("mAP", "mINP"):
        assert record[key] == pytest.approx(dense[key], abs=1e-6), key
    np.testing.assert_allclose(record["cmc"], dense["cmc"][:len(record["cmc"])], atol=1e-6)
    assert record["mAP"] > 0
