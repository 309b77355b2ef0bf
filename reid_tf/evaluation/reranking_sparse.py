"""k-reciprocal re-ranking in bounded memory, straight from features.

:func:`rerank_cmc_map_from_features` gives the CMC/mAP/mINP of the dense
:func:`reid_tf.evaluation.reranking.re_ranking` (same steps, same float32 arithmetic) without
any (Q+G)² or Q×G matrix:

1. One pass over the N = Q+G items, a chunk of rows at a time: the chunk's distances to all N
   items (one matrix product, :func:`~reid_tf.evaluation.distance.distance_chunk`), squared,
   divided by their row maximum (``D`` of the dense step 1; for the symmetric inputs of the
   dense version its column maximum is this row maximum), reduced to the row maximum and the
   first ``k1 + 1`` neighbours (:func:`~reid_tf.evaluation.neighbors.smallest_per_row`: ascending,
   ties by lower index, no full sort).
2. The k-reciprocal encoding ``V`` and the local query expansion are the dense version's own
   code (:func:`reid_tf.evaluation.reranking._encoding`), fed with ``D`` of the few pairs it
   needs, computed from the features.
3. The Jaccard term is non-zero only between items whose ``V`` rows share support; it is
   computed per query chunk from the sparse ``V`` only (``_SharedMass``). Every other gallery
   item keeps Jaccard distance 1, so its final distance is ``(1 − λ) + λ·D``: the ranking of
   those items is the original distance's, after the items that share neighbours. The final
   distance rows of a query chunk are ``(1 − λ)·Jaccard + λ·D`` (``D`` from a matrix product of
   the chunk with the gallery) and go straight to the ranking code of
   :func:`~reid_tf.evaluation.metrics.cmc_map_blocks`.

This is exact, not a candidate-list approximation: the re-ranked distance of every query-gallery
pair is computed (only ever a chunk of them at once). Memory: a chunk of ``memory_budget``
bytes of distances, the features, the (N, k1+1) rank lists and the sparse ``V`` (a few hundred
non-zeros per row). Time: the N² matrix products of step 1 dominate.

:func:`dense_re_ranking_bytes` estimates what the dense version needs; :func:`use_sparse` is the
switch the protocols apply (``memory_budget`` of the setting ``rerank_memory_budget``).
"""
import numpy as np

from reid_tf.evaluation.chunked import chunk_rows_for
from reid_tf.evaluation.distance import (distance_chunk, gallery_terms, paired_distances,
                                         prepared_features)
from reid_tf.evaluation.metrics import cmc_map_blocks
from reid_tf.evaluation.neighbors import smallest_per_row
from reid_tf.evaluation.reranking import (_SharedMass, _check_parameters, _combine, _encoding,
                                          _jaccard_from_shared, _query_expansion, _rank_depth)

__all__ = ["DEFAULT_DENSE_BUDGET", "dense_re_ranking_bytes", "use_sparse",
           "rerank_cmc_map_from_features"]

# Bytes of float32 distances one chunk of rows may hold here (the neighbour search keeps a few
# temporaries of a chunk's size).
DEFAULT_MEMORY_BUDGET = 256 << 20
# Bytes the dense re-ranking may take before the protocols switch to this one (8 GiB).
DEFAULT_DENSE_BUDGET = 8 << 30
# float32 (Q+G)² matrices alive at the dense version's peak: the three input blocks (together
# one), ``np.block``, its square, and the transposed copy.
_DENSE_MATRICES = 4


def dense_re_ranking_bytes(num_query, num_gallery):
    """Estimated peak bytes of :func:`reid_tf.evaluation.reranking.re_ranking` (float32
    (Q+G)² matrices alive at once)."""
    return _DENSE_MATRICES * 4 * (int(num_query) + int(num_gallery)) ** 2


def use_sparse(num_query, num_gallery, memory_budget=DEFAULT_DENSE_BUDGET):
    """True when the dense re-ranking's matrices would not fit ``memory_budget`` bytes."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) \
            or memory_budget < 1:
        raise ValueError(f"rerank memory budget must be a positive number of bytes, got "
                         f"{memory_budget!r}.")
    return dense_re_ranking_bytes(num_query, num_gallery) > memory_budget


def _neighbourhoods(items, terms, metric, depth, memory_budget):
    """Row maxima of the squared distances and the first ``depth`` neighbours of every item."""
    num_items = items.shape[0]
    rows = chunk_rows_for(num_items, memory_budget)
    row_max = np.empty(num_items, np.float32)
    ranks = np.empty((num_items, depth), np.int64)
    for start in range(0, num_items, rows):
        stop = min(start + rows, num_items)
        block = distance_chunk(items[start:stop], items, terms, metric).astype(np.float32,
                                                                              copy=False)
        np.power(block, 2, out=block)
        if not np.all(np.isfinite(block)):
            raise ValueError("re-ranking: the features give NaN or infinite distances.")
        maximum = block.max(axis=1)
        zero = np.flatnonzero(maximum <= 0)
        if zero.size:
            raise ValueError(
                f"re-ranking: item {start + int(zero[0])} of the concatenated query+gallery "
                "set is at distance 0 from every item, so rows cannot be normalised.")
        block /= maximum[:, np.newaxis]
        row_max[start:stop] = maximum
        ranks[start:stop] = smallest_per_row(block, depth)[1]
    return row_max, ranks


def rerank_cmc_map_from_features(query_features, gallery_features, q_pids, g_pids, q_camids,
                                 g_camids, metric="cosine", normalize=False, k1=20, k2=6,
                                 lambda_value=0.3, max_rank=50, remove_same_camera=True,
                                 memory_budget=DEFAULT_MEMORY_BUDGET, num_threads=None,
                                 return_per_query=False, rule="market"):
    """CMC/mAP/mINP of the k-reciprocal re-ranked distances, in bounded memory (see the module
    docstring). ``metric``/``normalize`` as :func:`~reid_tf.evaluation.distance.pairwise_distance`
    (``neg_dot`` is re-ranked as ``cosine``, as :func:`reid_tf.evaluation.protocols.
    ranked_distances` does); ``k1, k2, lambda_value`` as :func:`~reid_tf.evaluation.reranking.
    re_ranking`; the rest as :func:`~reid_tf.evaluation.metrics.cmc_map` (``rule`` as
    :func:`~reid_tf.evaluation.chunked.cmc_map_from_features`). ``memory_budget``:
    bytes of one chunk of float32 distances."""
    k1, k2, lambda_value = _check_parameters(k1, k2, lambda_value)
    if metric == "neg_dot":
        metric = "cosine"
    query, gallery = prepared_features(query_features, gallery_features, metric, normalize)
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"re-ranking: no queries or no gallery ({num_query} x {num_gallery}).")
    items = np.concatenate([query, gallery])
    terms = gallery_terms(items, metric)
    num_items = items.shape[0]
    row_max, ranks = _neighbourhoods(items, terms, metric, _rank_depth(num_items, k1, k2),
                                     memory_budget)

    def pair_distances(rows, cols):
        values = paired_distances(items, items, rows, cols, metric)
        return np.power(values, 2) / row_max[rows]

    encoding = _encoding(pair_distances, ranks, k1)
    if k2 != 1:
        encoding = _query_expansion(encoding, ranks, min(k2, num_items))
    shared = _SharedMass(encoding, num_query)
    del encoding, ranks
    gallery_part = gallery_terms(gallery, metric)

    def distance_rows(start, stop):
        original = distance_chunk(query[start:stop], gallery, gallery_part,
                                  metric).astype(np.float32, copy=False)
        np.power(original, 2, out=original)
        original /= row_max[start:stop, np.newaxis]
        return _combine(_jaccard_from_shared(shared.rows(start, stop)), original, lambda_value)

    return cmc_map_blocks(distance_rows, num_query, num_gallery, q_pids, g_pids, q_camids,
                          g_camids, max_rank=max_rank, remove_same_camera=remove_same_camera,
                          chunk_rows=chunk_rows_for(num_gallery, memory_budget),
                          num_threads=num_threads, return_per_query=return_per_query,
                          what="re-ranking", rule=rule)
