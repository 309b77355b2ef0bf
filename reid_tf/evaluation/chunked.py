"""CMC/mAP/mINP straight from features, one query chunk at a time: :func:`cmc_map_from_features`.

The full query × gallery distance matrix is never built: for each chunk of query rows the
distances to the whole gallery are one matrix product (:func:`reid_tf.evaluation.distance.
distance_chunk`, the arithmetic of :func:`~reid_tf.evaluation.distance.pairwise_distance`) and
are ranked by the block code of :func:`reid_tf.evaluation.metrics.cmc_map`
(:func:`~reid_tf.evaluation.metrics.cmc_map_blocks`), then dropped. Memory is bounded by
``chunk_size × G`` float32 distances (plus the sort words of the blocks in flight), never
``Q × G``; the result is the one ``cmc_map(pairwise_distance(...))`` gives.
"""
import numpy as np

from reid_tf.evaluation.distance import (distance_chunk, gallery_terms, paired_distances,
                                         prepared_features)
from reid_tf.evaluation.metrics import cmc_map_blocks

__all__ = ["cmc_map_from_features", "DEFAULT_MEMORY_BUDGET", "FeatureDistances",
           "chunk_rows_for"]

# Bytes of float32 distances one query chunk may hold (1 GiB: with a 10^6 gallery that is 268
# query rows, enough for the matrix product to run near the machine's GEMM rate; 67 rows ran it
# at about half that rate, benchmarks/NOTES.md).
DEFAULT_MEMORY_BUDGET = 1 << 30


def chunk_rows_for(num_gallery, memory_budget):
    """Query rows whose float32 distances to ``num_gallery`` items fit ``memory_budget`` bytes
    (at least 1)."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) \
            or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got "
                         f"{memory_budget!r}.")
    return max(1, int(memory_budget) // (4 * max(int(num_gallery), 1)))


def cmc_map_from_features(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids,
                          metric="euclidean", normalize=False, max_rank=50,
                          remove_same_camera=True, chunk_size=None,
                          memory_budget=DEFAULT_MEMORY_BUDGET, num_threads=None,
                          return_per_query=False, rule="market"):
    """``cmc_map(pairwise_distance(query_features, gallery_features, metric, normalize), ...)``
    computed query chunk by query chunk (see the module docstring).

    Args:
      query_features, gallery_features: (Q, D) and (G, D) arrays.
      q_pids, g_pids, q_camids, g_camids, max_rank, remove_same_camera, num_threads,
        return_per_query: as :func:`reid_tf.evaluation.metrics.cmc_map`.
      metric, normalize: as :func:`reid_tf.evaluation.distance.pairwise_distance`.
      chunk_size: query rows per chunk; None: as many as ``memory_budget`` bytes of float32
        distances hold.
      memory_budget: bytes of one chunk's distances when ``chunk_size`` is None.
      rule: ``"market"`` (:func:`~reid_tf.evaluation.metrics.cmc_map`) or ``"sysu_mm01"``
        (:func:`~reid_tf.evaluation.metrics.sysu_mm01_cmc_map`, whose camera rule replaces
        ``remove_same_camera``).

    Returns:
      the dict of :func:`~reid_tf.evaluation.metrics.cmc_map`.
    """
    query, gallery = prepared_features(query_features, gallery_features, metric, normalize)
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"cmc_map_from_features: no queries or no gallery "
                         f"({num_query} x {num_gallery}).")
    if chunk_size is None:
        chunk_size = chunk_rows_for(num_gallery, memory_budget)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    terms = gallery_terms(gallery, metric)

    def distance_rows(start, stop):
        return distance_chunk(query[start:stop], gallery, terms, metric).astype(np.float32,
                                                                               copy=False)

    return cmc_map_blocks(distance_rows, num_query, num_gallery, q_pids, g_pids, q_camids,
                          g_camids, max_rank=max_rank, remove_same_camera=remove_same_camera,
                          chunk_rows=int(chunk_size), num_threads=num_threads,
                          return_per_query=return_per_query, what="cmc_map_from_features",
                          rule=rule)


class FeatureDistances:
    """The query × gallery distances of :func:`~reid_tf.evaluation.distance.pairwise_distance`,
    computed from the features when asked for, for galleries whose full matrix is too large to
    keep (the report and the rank list read only some rows and pairs).

    ``distances[q]`` is the float32 row of query ``q``; ``distances[rows, cols]`` (two integer
    arrays of one shape) the distances of those pairs; :meth:`subset` the same object for some
    queries and gallery items; :meth:`metrics` its CMC/mAP (:func:`cmc_map_from_features`).
    ``shape`` is ``(Q, G)``.
    """

    def __init__(self, query_features, gallery_features, metric="euclidean", normalize=False):
        self.query, self.gallery = prepared_features(query_features, gallery_features, metric,
                                                     normalize)
        self.metric = metric
        self.shape = (self.query.shape[0], self.gallery.shape[0])
        self._terms = None

    def _gallery_terms(self):
        if self._terms is None:
            self._terms = gallery_terms(self.gallery, self.metric)
        return self._terms

    def rows(self, rows):
        """float32 distances of the query rows ``rows`` (integer array) to the gallery."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return distance_chunk(self.query[rows], self.gallery, self._gallery_terms(),
                              self.metric).astype(np.float32, copy=False)

    def pairs(self, rows, cols):
        """float32 distances of the pairs ``(rows[n], cols[n])`` (row-wise dot products)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.shape != cols.shape:
            raise ValueError(f"pairs: rows {rows.shape} and cols {cols.shape} differ in shape.")
        return paired_distances(self.query, self.gallery, rows, cols,
                                self.metric).reshape(rows.shape)

    def __getitem__(self, key):
        if isinstance(key, tuple) and len(key) == 2:
            return self.pairs(*key)
        if isinstance(key, (int, np.integer)):
            return self.rows([key])[0]
        raise TypeError("FeatureDistances supports [query_row] and [rows, cols] only.")

    def subset(self, rows, columns):
        """The distances of queries ``rows`` to gallery items ``columns``."""
        part = FeatureDistances.__new__(FeatureDistances)
        part.query, part.gallery = self.query[rows], self.gallery[columns]
        part.metric = self.metric
        part.shape = (part.query.shape[0], part.gallery.shape[0])
        part._terms = None
        return part

    def metrics(self, q_pids, g_pids, q_camids, g_camids, **options):
        """:func:`cmc_map_from_features` of these distances (``options`` as its)."""
        return cmc_map_from_features(self.query, self.gallery, q_pids, g_pids, q_camids,
                                     g_camids, metric=self.metric, **options)
