"""Evaluation protocols: features (already extracted) in, averaged metrics out.

One function per protocol name of :data:`reid_tf.data.registry.PROTOCOLS`:

=============  ================================================================================
``standard``   :func:`evaluate_standard` — Market-1501 semantics (FlipReID §7.5, MSINet §10).
``vehicleid``  :func:`evaluate_vehicleid` — no camera removal, averaged over query/gallery
               trials (MSINet §10, §12).
``sysu_mm01``  :func:`evaluate_sysu_mm01` — CM-NAS §9.2: camera-3 queries never see camera-2
               gallery items, distinct-identity CMC, averaged over gallery trials.
``regdb``      :func:`evaluate_regdb` — CM-NAS §9.3: image-level CMC, no camera removal, one
               trial per call; :func:`average_results` averages trials.
=============  ================================================================================

Every result is a dict with ``rank1``, ``rank5``, ``rank10``, ``rank20``, ``mAP`` and ``mINP``
(fractions in [0, 1]), ``cmc`` (float64 array) and ``num_valid_queries``; averaged results add
``num_trials`` and ``per_trial`` (the list of single-trial dicts). Rankings are by ascending
distance with ties broken by gallery index (see :mod:`reid_tf.evaluation.metrics`). ``rank20``
is exact even when ``max_rank`` < 20 or the gallery is smaller than 20 (the CMC of a valid
query is 1 beyond the length of its list). mINP is not computed by the references (CM-NAS §9.4):
it is reported separately and is not comparable with their numbers.
"""

import numpy as np

from reid_tf.evaluation import reranking as _reranking
from reid_tf.evaluation import reranking_sparse as _reranking_sparse
from reid_tf.evaluation.chunked import cmc_map_from_features
from reid_tf.evaluation.distance import l2_normalize, pairwise_distance
from reid_tf.evaluation.metrics import cmc_map, sysu_mm01_cmc_map

__all__ = [
    "RANKS",
    "PROTOCOL_FUNCTIONS",
    "average_results",
    "trial_statistics",
    "evaluate_regdb",
    "evaluate_standard",
    "evaluate_sysu_mm01",
    "evaluate_vehicleid",
    "ranked_distances",
    "ranked_metrics",
    "DEFAULT_DENSE_BUDGET",
]

DEFAULT_DENSE_BUDGET = _reranking_sparse.DEFAULT_DENSE_BUDGET

RANKS = (1, 5, 10, 20)


def _with_ranks(result, max_rank):
    """Add ``rank<k>`` keys from a CMC computed at least ``max(RANKS)`` deep; cut ``cmc``."""
    cmc = result["cmc"]
    for rank in RANKS:
        result[f"rank{rank}"] = float(cmc[min(rank, cmc.shape[0]) - 1])
    result["cmc"] = cmc[:max_rank]
    return result


def _depth(max_rank):
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}.")
    return max(int(max_rank), max(RANKS))


def _index_array(indices, name, size):
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of row positions.")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"{name} must hold integer row positions, got dtype {indices.dtype}.")
    if indices.min() < 0 or indices.max() >= size:
        raise ValueError(
            f"{name} holds positions outside [0, {size}) (found {int(indices.min())}.."
            f"{int(indices.max())})."
        )
    return indices


def _check_rows(features, labels, what):
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"{what} features must be a 2-D array, got shape {features.shape}.")
    for name, values in labels.items():
        if values is None:
            continue
        values = np.asarray(values)
        if values.shape != (features.shape[0],):
            raise ValueError(
                f"{what}: {name} has shape {values.shape} but there are {features.shape[0]} "
                "feature rows."
            )
    return features


METRIC_KEYS = tuple(f"rank{rank}" for rank in RANKS) + ("mAP", "mINP")


def trial_statistics(results, keys=METRIC_KEYS):
    """``{"mean": {key: ...}, "std": {key: ...}, "num_trials": n}`` of the metrics of several
    trials (dicts with the ``keys``); ``std`` is the sample standard deviation (``ddof=1``,
    0 for a single trial)."""
    results = list(results)
    if not results:
        raise ValueError("trial_statistics needs at least one trial result.")
    mean, std = {}, {}
    for key in keys:
        if all(key in result for result in results):
            values = np.asarray([float(result[key]) for result in results])
            mean[key] = float(values.mean())
            std[key] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "num_trials": len(results)}


def average_results(results):
    """Mean of single-trial result dicts (scalars and CMC curves).

    CMC curves of different lengths (galleries smaller than ``max_rank``) are extended with
    their last value, which is 1 at the gallery size. Returns the keys of a single result plus
    ``num_trials``, ``per_trial`` and ``std`` (the sample standard deviation over the trials of
    every metric, :func:`trial_statistics`).
    """
    results = list(results)
    if not results:
        raise ValueError("average_results needs at least one trial result.")
    length = max(result["cmc"].shape[0] for result in results)
    curves = [np.pad(result["cmc"], (0, length - result["cmc"].shape[0]), mode="edge")
              for result in results]
    averaged = {"cmc": np.mean(curves, axis=0)}
    for key in [f"rank{rank}" for rank in RANKS] + ["mAP", "mINP", "num_valid_queries"]:
        averaged[key] = float(np.mean([result[key] for result in results]))
    averaged["num_trials"] = len(results)
    averaged["per_trial"] = results
    averaged["std"] = trial_statistics(results)["std"]
    return averaged


def ranked_distances(q_feats, g_feats, metric="cosine", normalize=False, re_ranking=False,
                     k1=20, k2=6, lambda_value=0.3):
    """The query-gallery distances a protocol ranks by: ``pairwise_distance`` with ``metric``
    and ``normalize``, or with ``re_ranking`` its k-reciprocal re-ranking (``k1, k2,
    lambda_value``) using the query-query and gallery-gallery distances of the same metric
    (``neg_dot`` is re-ranked as ``cosine``, its non-negative equivalent on L2-normalised
    features)."""
    distmat = pairwise_distance(q_feats, g_feats, metric=metric, normalize=normalize)
    if not re_ranking:
        return distmat
    if metric == "neg_dot":
        metric = "cosine"
        distmat = pairwise_distance(q_feats, g_feats, metric=metric, normalize=normalize)
    q_q = pairwise_distance(q_feats, q_feats, metric=metric, normalize=normalize)
    g_g = pairwise_distance(g_feats, g_feats, metric=metric, normalize=normalize)
    return _reranking.re_ranking(distmat, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)


def ranked_metrics(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric="cosine",
                   normalize=False, re_ranking=False, max_rank=50, remove_same_camera=True,
                   rule="market", k1=20, k2=6, lambda_value=0.3,
                   rerank_memory_budget=DEFAULT_DENSE_BUDGET):
    """The metrics of the distances :func:`ranked_distances` describes, without a full
    query × gallery matrix where none is needed:

    * no re-ranking: :func:`~reid_tf.evaluation.chunked.cmc_map_from_features` (query chunks);
    * re-ranking whose dense (Q+G)² matrices fit ``rerank_memory_budget`` bytes
      (:func:`~reid_tf.evaluation.reranking_sparse.use_sparse`): the dense
      :func:`~reid_tf.evaluation.reranking.re_ranking`, then ``cmc_map``;
    * larger: the bounded-memory
      :func:`~reid_tf.evaluation.reranking_sparse.rerank_cmc_map_from_features`.

    ``rule``: ``"market"`` (``cmc_map``) or ``"sysu_mm01"`` (``sysu_mm01_cmc_map``). The result
    adds ``re_ranking``: ``"off"``, ``"dense"`` or ``"sparse"`` (which one ran)."""
    if not re_ranking:
        result = cmc_map_from_features(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams,
                                       metric=metric, normalize=normalize, max_rank=max_rank,
                                       remove_same_camera=remove_same_camera, rule=rule)
        result["re_ranking"] = "off"
        return result
    num_query, num_gallery = np.shape(q_feats)[0], np.shape(g_feats)[0]
    if _reranking_sparse.use_sparse(num_query, num_gallery, rerank_memory_budget):
        result = _reranking_sparse.rerank_cmc_map_from_features(
            q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric=metric,
            normalize=normalize, k1=k1, k2=k2, lambda_value=lambda_value, max_rank=max_rank,
            remove_same_camera=remove_same_camera, rule=rule)
        result["re_ranking"] = "sparse"
        return result
    distmat = ranked_distances(q_feats, g_feats, metric, normalize, True, k1, k2, lambda_value)
    if rule == "sysu_mm01":
        result = sysu_mm01_cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    else:
        result = cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                         remove_same_camera=remove_same_camera)
    result["re_ranking"] = "dense"
    return result


def evaluate_standard(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric="cosine",
                      normalize=False, re_ranking=False, max_rank=50, remove_same_camera=True,
                      k1=20, k2=6, lambda_value=0.3, rerank_memory_budget=DEFAULT_DENSE_BUDGET):
    """Market-1501 protocol (Market-1501, DukeMTMC-reID, MSMT17, VeRi-776).

    Distances: :func:`~reid_tf.evaluation.distance.pairwise_distance` with ``metric`` and
    ``normalize`` (FlipReID: ``"cosine"``, no normalisation; MSINet: ``"sqeuclidean"`` with
    ``normalize=True``). With ``re_ranking``, k-reciprocal re-ranking (``k1, k2, lambda_value``)
    of the query–gallery distances using the query–query and gallery–gallery distances of the
    same metric. Metrics: :func:`~reid_tf.evaluation.metrics.cmc_map` with the
    same-identity-same-camera removal (unless ``remove_same_camera=False``). No Q × G matrix
    is built without re-ranking; re-ranking switches to the bounded-memory variant when the
    dense one would exceed ``rerank_memory_budget`` bytes (:func:`ranked_metrics`; the result's
    ``re_ranking`` says which ran).
    """
    q_feats = _check_rows(q_feats, {"q_pids": q_pids, "q_cams": q_cams}, "query")
    g_feats = _check_rows(g_feats, {"g_pids": g_pids, "g_cams": g_cams}, "gallery")
    depth = _depth(max_rank)
    result = ranked_metrics(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric,
                            normalize, re_ranking, depth, remove_same_camera, "market", k1, k2,
                            lambda_value, rerank_memory_budget)
    return _with_ranks(result, max_rank)


def evaluate_vehicleid(features, pids, trials, metric="cosine", normalize=False, max_rank=50):
    """VehicleID protocol: no camera removal, metrics averaged over query/gallery trials.

    ``features``/``pids`` hold every test image; each trial is ``(query_indices,
    gallery_indices)``, row positions into them (the VehicleID loader draws the splits: ``reid_tf.data.vehicleid``). Per trial:
    :func:`~reid_tf.evaluation.metrics.cmc_map` with ``remove_same_camera=False`` (VehicleID
    cameras are all 0) on :func:`~reid_tf.evaluation.distance.pairwise_distance` distances.
    Features are L2-normalised once (if ``normalize``) and each trial's distances are computed
    from them.
    """
    features = _check_rows(features, {"pids": pids}, "VehicleID")
    pids = np.asarray(pids)
    depth = _depth(max_rank)
    trials = list(trials)
    if not trials:
        raise ValueError("evaluate_vehicleid needs at least one (query, gallery) trial.")
    if normalize:
        features = l2_normalize(features)
    results = []
    for number, trial in enumerate(trials):
        if len(trial) != 2:
            raise ValueError(f"trial {number} must be a (query_indices, gallery_indices) pair.")
        query = _index_array(trial[0], f"trial {number} query_indices", features.shape[0])
        gallery = _index_array(trial[1], f"trial {number} gallery_indices", features.shape[0])
        result = cmc_map_from_features(features[query], features[gallery], pids[query],
                                       pids[gallery], None, None, metric=metric,
                                       max_rank=depth, remove_same_camera=False)
        results.append(_with_ranks(result, max_rank))
    return average_results(results)


def evaluate_sysu_mm01(query_features, query_pids, query_cams, pool_features, pool_pids,
                       pool_cams, gallery_trials, max_rank=20, metric="neg_dot",
                       normalize=True, re_ranking=False,
                       rerank_memory_budget=DEFAULT_DENSE_BUDGET):
    """SYSU-MM01 protocol of CM-NAS (§9.1–9.2), averaged over gallery trials.

    Query features (thermal, cameras 3 and 6) and the gallery pool features (visible) are
    extracted once; ``gallery_trials`` is a list of arrays of row positions into the pool (see
    ``reid_tf.data.sysu_mm01.sample_gallery``). Features are L2-normalised, similarity is the dot product
    and the gallery is ranked by descending similarity (ascending negated similarity, ties by
    gallery position). Per trial :func:`~reid_tf.evaluation.metrics.sysu_mm01_cmc_map`:
    camera-3 queries lose every camera-2 gallery item, CMC over distinct identities in
    first-occurrence order, mAP/mINP over the non-deduplicated list. Results are the mean over
    trials. ``metric``, ``normalize`` and ``re_ranking`` replace the reference's normalised dot
    product (its defaults) with :func:`ranked_distances`' choices.
    """
    query_features = _check_rows(query_features, {"query_pids": query_pids,
                                                  "query_cams": query_cams}, "SYSU-MM01 query")
    pool_features = _check_rows(pool_features, {"pool_pids": pool_pids,
                                                "pool_cams": pool_cams}, "SYSU-MM01 pool")
    pool_pids = np.asarray(pool_pids)
    pool_cams = np.asarray(pool_cams)
    depth = _depth(max_rank)
    trials = list(gallery_trials)
    if not trials:
        raise ValueError("evaluate_sysu_mm01 needs at least one gallery trial.")
    if normalize:
        query_features = l2_normalize(query_features)
        pool_features = l2_normalize(pool_features)
    results = []
    for number, trial in enumerate(trials):
        gallery = _index_array(trial, f"gallery trial {number}", pool_features.shape[0])
        result = ranked_metrics(query_features, pool_features[gallery], query_pids,
                                pool_pids[gallery], query_cams, pool_cams[gallery], metric,
                                re_ranking=re_ranking, max_rank=depth, rule="sysu_mm01",
                                rerank_memory_budget=rerank_memory_budget)
        results.append(_with_ranks(result, max_rank))
    return average_results(results)


def evaluate_regdb(query_features, gallery_features, query_pids, gallery_pids, max_rank=20,
                   metric="neg_dot", normalize=True, re_ranking=False,
                   rerank_memory_budget=DEFAULT_DENSE_BUDGET):
    """RegDB protocol of CM-NAS (§9.3) for ONE trial.

    Features are L2-normalised, similarity is the dot product (ranking by descending
    similarity, ties by gallery index); metrics are the standard image-level CMC, mAP and mINP
    with no camera exclusion (:func:`~reid_tf.evaluation.metrics.cmc_map` with
    ``remove_same_camera=False``). Average the 10 trials with :func:`average_results`.
    ``metric``, ``normalize`` and ``re_ranking`` as :func:`evaluate_sysu_mm01`.
    """
    query_features = _check_rows(query_features, {"query_pids": query_pids}, "RegDB query")
    gallery_features = _check_rows(gallery_features, {"gallery_pids": gallery_pids},
                                   "RegDB gallery")
    depth = _depth(max_rank)
    result = ranked_metrics(query_features, gallery_features, query_pids, gallery_pids, None,
                            None, metric, normalize, re_ranking, depth, False,
                            rerank_memory_budget=rerank_memory_budget)
    return _with_ranks(result, max_rank)


PROTOCOL_FUNCTIONS = {
    "standard": evaluate_standard,
    "vehicleid": evaluate_vehicleid,
    "sysu_mm01": evaluate_sysu_mm01,
    "regdb": evaluate_regdb,
}
