"""Exact k nearest neighbours by brute force, in bounded memory: :func:`nearest_neighbors`.

The query rows are taken a chunk at a time; a chunk's distances to the whole gallery are
computed by :func:`reid_tf.evaluation.distance.pairwise_distance` (the metrics, the float32
result and the normalisation are the evaluation's) and reduced to the ``k`` smallest per row with
``np.argpartition`` (linear in the gallery size, no full sort). The chunk is sized so that one
chunk's distances fit in ``memory_budget`` bytes, so memory is bounded by that budget plus the
``(Q, k)`` result, never by ``Q × G``.

Order: ascending distance, ties broken by the lower gallery index (a stable sort), so the result
is a deterministic function of the inputs. This is the order a full ``np.argsort(...,
kind="stable")`` of each distance row gives.
"""
import numpy as np

from reid_tf.evaluation.distance import (DEFAULT_CHUNK_SIZE, METRICS, l2_normalize,
                                         pairwise_distance)

__all__ = ["nearest_neighbors", "DEFAULT_MEMORY_BUDGET"]

# Bytes of float32 distances one query chunk may hold (256 MiB).
DEFAULT_MEMORY_BUDGET = 256 << 20


def _chunk_rows(num_gallery, memory_budget):
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) \
            or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got "
                         f"{memory_budget!r}.")
    return max(1, int(memory_budget) // (4 * max(num_gallery, 1)))


def _nonzero_sparse(mask):
    """``np.nonzero`` of a 2-D boolean ``mask`` with few True entries: the search runs over
    8-byte groups (viewed as uint64) and looks only at the bytes of groups that hold one."""
    rows, columns = mask.shape
    flat = np.ascontiguousarray(mask).reshape(-1).view(np.uint8)
    whole = flat.size - flat.size % 8
    groups = np.flatnonzero(flat[:whole].view(np.uint64))
    group_bytes = flat[:whole].reshape(-1, 8)[groups]
    group_index, offset = np.nonzero(group_bytes)
    positions = np.concatenate([groups[group_index] * 8 + offset,
                                whole + np.flatnonzero(flat[whole:])])
    return np.divmod(positions, columns)


def smallest_per_row(distances, k):
    """``(values, columns)`` of the ``k`` smallest entries of every row of ``distances``, in
    ascending order with ties broken by the lower column (``k`` at most the row length)."""
    rows, columns = distances.shape
    if k >= columns:
        order = np.argsort(distances, axis=1, kind="stable")
        return np.take_along_axis(distances, order, axis=1), order
    # The k-th smallest value of every row (np.partition moves no index array: several times
    # faster than np.argpartition on long rows).
    threshold = np.partition(distances, k - 1, axis=1)[:, k - 1]
    # Every entry up to the k-th value is a candidate (ties at the threshold included), so the
    # lowest columns among equal distances are the ones kept.
    candidate_rows, candidate_columns = _nonzero_sparse(distances <= threshold[:, np.newaxis])
    values = distances[candidate_rows, candidate_columns]
    order = np.lexsort((candidate_columns, values, candidate_rows))
    candidate_rows = candidate_rows[order]
    counts = np.bincount(candidate_rows, minlength=rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = (starts[:, np.newaxis] + np.arange(k)[np.newaxis, :]).ravel()
    return (values[order][take].reshape(rows, k),
            candidate_columns[order][take].reshape(rows, k))


def nearest_neighbors(query_features, gallery_features, k, metric="euclidean",
                      normalize=False, memory_budget=DEFAULT_MEMORY_BUDGET):
    """The ``k`` nearest gallery rows of every query row.

    Args:
      query_features: (Q, D) array.
      gallery_features: (G, D) array.
      k: neighbours per query; more than G gives all G.
      metric: one of :data:`reid_tf.evaluation.distance.METRICS`.
      normalize: L2-normalise both sides first.
      memory_budget: bytes one query chunk's distances may take.

    Returns:
      ``(distances, indices)``: float32 ``(Q, min(k, G))`` and int64 ``(Q, min(k, G))``, each row
      in ascending distance, ties by lower gallery index.
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    query = np.asarray(query_features)
    gallery = np.asarray(gallery_features)
    if query.ndim != 2 or gallery.ndim != 2:
        raise ValueError(f"features must be 2-D arrays, got shapes {query.shape} and "
                         f"{gallery.shape}.")
    k = min(int(k), gallery.shape[0])
    rows = _chunk_rows(gallery.shape[0], memory_budget)
    distances = np.empty((query.shape[0], k), np.float32)
    indices = np.empty((query.shape[0], k), np.int64)
    if k == 0:
        return distances, indices
    if normalize:  # once here, not once per chunk
        query, gallery = l2_normalize(query), l2_normalize(gallery)
    for start in range(0, query.shape[0], rows):
        chunk = query[start:start + rows]
        block = pairwise_distance(chunk, gallery, metric=metric,
                                  chunk_size=max(1, min(rows, DEFAULT_CHUNK_SIZE)))
        values, columns = smallest_per_row(block, k)
        distances[start:start + len(chunk)] = values
        indices[start:start + len(chunk)] = columns
    return distances, indices
