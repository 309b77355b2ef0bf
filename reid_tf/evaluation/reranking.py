"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), as used by FlipReID (flipreid.md §7.4).

This follows the Python version of ``person-re-ranking`` step by step, vectorised:

1. ``M = [[QQ, QG], [QGᵀ, GG]]`` squared (in the input precision) and cast to float32;
   ``D = transpose(M / column_max(M))`` — for the usual symmetric inputs this divides each row
   by its maximum. Rank lists are the rows of ``D`` in ascending order, ties broken by index
   (the reference's unstable ``argsort`` leaves tie order unspecified).
2. For each item ``i``: ``F`` = the first ``k1 + 1`` items of its rank list; ``R(i)`` = the
   members of ``F`` whose own first ``k1 + 1`` contain ``i``. For each ``c`` in ``R(i)``, its
   k-reciprocal set ``H(c)`` with ``round(k1/2) + 1`` neighbours (numpy rounding, half to even)
   is added when ``|H(c) ∩ R(i)| > 2/3·|H(c)|``. Over the deduplicated union ``S``:
   ``V[i, j] = exp(−D[i, j]) / Σ_{j' ∈ S} exp(−D[i, j'])``, zero elsewhere.
3. Local query expansion (``k2 != 1``): ``V[i]`` ← mean of the rows ``V[j]`` for the first ``k2``
   items ``j`` of ``i``'s rank list (``i`` included).
4. Jaccard distance between query ``i`` and gallery item ``j``: ``s = Σ_k min(V[i,k], V[j,k])``,
   ``1 − s / (2 − s)``.
5. Result ``(1 − λ)·Jaccard + λ·D`` on the query rows and gallery columns, float32.

Memory: ``D`` is a dense float32 (Q+G)² matrix (plus the caller's three input matrices, which
together are (Q+G)² as well): about 1.5 GB for Market-1501 (19,281 items). ``V`` is kept sparse
(at most a few hundred non-zeros per row before query expansion), the rank lists are computed
only up to the depth needed, and the Jaccard step walks the sparse structure in bounded chunks.
"""
import numpy as np
import scipy.sparse

from reid_tf.evaluation.metrics import _order_keys

__all__ = ["re_ranking"]

# Bound on the elements of the temporary arrays of one chunk.
_CHUNK_ELEMENTS = 1 << 22


def _check_square(matrix, name, size):
    if matrix.shape != (size, size):
        raise ValueError(f"{name} must have shape ({size}, {size}), got {matrix.shape}.")


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _normalised_squared_distances(q_g_dist, q_q_dist, g_g_dist):
    """``D`` of step 1: squared full matrix divided by its column maxima, transposed."""
    full = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    full = np.power(full, 2).astype(np.float32)
    column_max = full.max(axis=0)
    if not np.all(np.isfinite(full)):
        raise ValueError("re_ranking: the distance matrices contain NaN or infinite values.")
    zero = np.flatnonzero(column_max <= 0)
    if zero.size:
        raise ValueError(
            f"re_ranking: item {int(zero[0])} of the concatenated query+gallery set is at "
            "distance 0 from every item (all-zero column), so rows cannot be normalised."
        )
    full /= column_max
    return np.ascontiguousarray(full.T)


def _rank_lists(distances, depth):
    """First ``depth`` columns of the stable ascending argsort of every row."""
    num_items = distances.shape[0]
    step = max(1, _CHUNK_ELEMENTS // num_items)
    index = np.arange(num_items, dtype=np.uint64)
    ranks = np.empty((num_items, depth), dtype=np.int64)
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        words = _order_keys(distances[start:stop]).astype(np.uint64) << np.uint64(32)
        words |= index
        if depth < num_items:
            words = np.partition(words, depth - 1, axis=1)[:, :depth]
        words.sort(axis=1)
        ranks[start:stop] = (words & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return ranks


def _reciprocal_mask(ranks, width):
    """``mask[i, a]``: item ``i`` is among the first ``width`` neighbours of ``ranks[i, a]``."""
    forward = ranks[:, :width]
    num_items = forward.shape[0]
    mask = np.empty(forward.shape, dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // (width * width))
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        backward = forward[forward[start:stop]]  # (rows, width, width)
        items = np.arange(start, stop)[:, np.newaxis, np.newaxis]
        mask[start:stop] = np.any(backward == items, axis=2)
    return mask


def _encoding(pair_distances, ranks, k1):
    """Sparse ``V`` of step 2 (k-reciprocal sets with expansion, Gaussian weights).

    ``pair_distances(rows, cols)`` gives ``D[rows, cols]`` (the dense matrix, or distances
    computed from features for the bounded-memory variant); ``ranks`` the rank lists."""
    num_items = ranks.shape[0]
    width = min(k1 + 1, num_items)
    half_width = min(int(np.around(k1 / 2.0)) + 1, num_items)
    forward = ranks[:, :width]
    reciprocal = _reciprocal_mask(ranks, width)
    half_forward = ranks[:, :half_width]
    half_reciprocal = _reciprocal_mask(ranks, half_width)
    half_sizes = half_reciprocal.sum(axis=1)

    # Members of R(i), padded with -1 (never an item index).
    members = np.where(reciprocal, forward, -1)
    all_rows, all_cols, all_values = [], [], []
    step = max(1, _CHUNK_ELEMENTS // (width * width * half_width))
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        rows = np.arange(start, stop)
        candidates = forward[start:stop]  # (n, width); only reciprocal ones are candidates
        candidate_sets = np.where(half_reciprocal[candidates], half_forward[candidates], -2)
        # |H(c) ∩ R(i)|: members of H(c) (padding -2) found among R(i) (padding -1).
        inside = candidate_sets[:, :, :, np.newaxis] == members[start:stop, np.newaxis,
                                                               np.newaxis, :]
        overlap = inside.any(axis=3).sum(axis=2)
        accepted = reciprocal[start:stop] & (overlap > 2.0 / 3 * half_sizes[candidates])

        # Membership of the expanded set S(i): R(i) plus every accepted H(c).
        selected = np.zeros((stop - start, num_items), dtype=bool)
        member_rows, member_cols = np.nonzero(reciprocal[start:stop])
        selected[member_rows, forward[start:stop][member_rows, member_cols]] = True
        pair_rows, pair_cols = np.nonzero(accepted)
        expansion = candidate_sets[pair_rows, pair_cols]  # (pairs, half_width)
        expansion_rows = np.broadcast_to(pair_rows[:, np.newaxis], expansion.shape)
        keep = expansion >= 0
        selected[expansion_rows[keep], expansion[keep]] = True

        local, cols = np.nonzero(selected)
        weights = np.exp(-pair_distances(rows[local], cols))
        totals = np.bincount(local, weights=weights, minlength=stop - start).astype(np.float32)
        all_rows.append(rows[local])
        all_cols.append(cols)
        all_values.append(weights / totals[local])
    return scipy.sparse.csr_matrix(
        (np.concatenate(all_values).astype(np.float32),
         (np.concatenate(all_rows), np.concatenate(all_cols))),
        shape=(num_items, num_items), dtype=np.float32,
    )


def _query_expansion(encoding, ranks, k2):
    """Step 3: mean of the ``V`` rows of each item's first ``k2`` neighbours (float32)."""
    num_items = encoding.shape[0]
    neighbours = ranks[:, :k2]
    averaging = scipy.sparse.csr_matrix(
        (np.ones(neighbours.size, dtype=np.float32),
         (np.repeat(np.arange(num_items), neighbours.shape[1]), neighbours.reshape(-1))),
        shape=(num_items, num_items), dtype=np.float32,
    )
    expanded = (averaging @ encoding).tocsr()
    expanded.data /= np.float32(neighbours.shape[1])
    expanded.eliminate_zeros()
    return expanded


class _SharedMass:
    """``s[i, j] = Σ_k min(V[i,k], V[j,k])`` between query rows and gallery columns of ``V``,
    produced a bounded chunk of query rows at a time (:meth:`rows`)."""

    def __init__(self, encoding, num_query):
        self.num_query = num_query
        self.num_gallery = encoding.shape[0] - num_query
        self.queries = encoding[:num_query].tocsr()
        self.queries.sort_indices()
        self.gallery = encoding[num_query:].tocsc()
        self.gallery.sort_indices()
        self.column_counts = np.diff(self.gallery.indptr)
        # Pairs (query entry, gallery entry sharing its column) generated per query row.
        query_rows = np.repeat(np.arange(num_query), np.diff(self.queries.indptr))
        self.pair_counts = np.bincount(query_rows,
                                       weights=self.column_counts[self.queries.indices],
                                       minlength=num_query).astype(np.int64)

    def rows(self, first, last):
        """float32 ``(last - first, G)`` shared mass of queries ``first:last``."""
        queries, gallery, num_gallery = self.queries, self.gallery, self.num_gallery
        column_counts, pair_counts = self.column_counts, self.pair_counts
        rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(num_gallery, 1))
        similarity = np.zeros((last - first, num_gallery), dtype=np.float32)
        start = first
        while start < last:
            stop = start + 1
            budget = pair_counts[start]
            while stop < last and stop - start < rows_per_chunk \
                    and budget + pair_counts[stop] <= _CHUNK_ELEMENTS:
                budget += pair_counts[stop]
                stop += 1
            lo, hi = queries.indptr[start], queries.indptr[stop]
            entry_rows = np.repeat(np.arange(stop - start),
                                   np.diff(queries.indptr[start:stop + 1]))
            entry_cols = queries.indices[lo:hi]
            entry_values = queries.data[lo:hi]
            counts = column_counts[entry_cols]
            entry_index = np.repeat(np.arange(hi - lo), counts)
            offsets = np.arange(entry_index.size) - np.repeat(np.cumsum(counts) - counts,
                                                              counts)
            positions = gallery.indptr[entry_cols][entry_index] + offsets
            minimum = np.minimum(entry_values[entry_index], gallery.data[positions])
            target = entry_rows[entry_index] * num_gallery + gallery.indices[positions]
            sums = np.bincount(target, weights=minimum,
                               minlength=(stop - start) * num_gallery)
            similarity[start - first:stop - first] = sums.reshape(stop - start, num_gallery)
            start = stop
        return similarity


def _jaccard_from_shared(similarity):
    return 1 - similarity / (np.float32(2) - similarity)


def _jaccard(encoding, num_query):
    """Step 4, query rows × gallery columns: ``1 − s/(2 − s)``, ``s = Σ_k min(V_ik, V_jk)``."""
    return _jaccard_from_shared(_SharedMass(encoding, num_query).rows(0, num_query))


def _combine(jaccard, original, lambda_value):
    """Step 5: ``(1 − λ)·Jaccard + λ·D`` in float32."""
    return (jaccard * (1 - lambda_value) + original * lambda_value).astype(np.float32)


def _check_parameters(k1, k2, lambda_value):
    k1 = _check_positive_int(k1, "k1")
    k2 = _check_positive_int(k2, "k2")
    lambda_value = float(lambda_value)
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value}.")
    return k1, k2, lambda_value


def _rank_depth(num_items, k1, k2):
    return min(num_items, max(k1 + 1, k2, int(np.around(k1 / 2.0)) + 1))


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking of a query × gallery distance matrix (see the module docstring).

    Args:
      q_g_dist: (Q, G) query–gallery distances (FlipReID: cosine distances).
      q_q_dist: (Q, Q) query–query distances.
      g_g_dist: (G, G) gallery–gallery distances.
      k1: depth of the k-reciprocal neighbour sets (20).
      k2: depth of the local query expansion (6; 1 disables it).
      lambda_value: weight of the original distance, in [0, 1] (0.3).

    Returns:
      (Q, G) float32 re-ranked distances ``(1 − λ)·Jaccard + λ·D``. With ``lambda_value = 1``
      this is ``D``: the squared distances divided by their row maximum over the full
      (Q+G)² matrix.

    Memory grows with (Q+G)² (see the module docstring).
    """
    q_g_dist = np.asarray(q_g_dist)
    q_q_dist = np.asarray(q_q_dist)
    g_g_dist = np.asarray(g_g_dist)
    if q_g_dist.ndim != 2 or 0 in q_g_dist.shape:
        raise ValueError(f"q_g_dist must be a non-empty 2-D (Q, G) matrix, got {q_g_dist.shape}.")
    num_query, num_gallery = q_g_dist.shape
    _check_square(q_q_dist, "q_q_dist", num_query)
    _check_square(g_g_dist, "g_g_dist", num_gallery)
    k1, k2, lambda_value = _check_parameters(k1, k2, lambda_value)

    distances = _normalised_squared_distances(q_g_dist, q_q_dist, g_g_dist)
    num_items = distances.shape[0]
    ranks = _rank_lists(distances, _rank_depth(num_items, k1, k2))
    encoding = _encoding(lambda rows, cols: distances[rows, cols], ranks, k1)
    if k2 != 1:
        encoding = _query_expansion(encoding, ranks, min(k2, num_items))
    jaccard = _jaccard(encoding, num_query)
    original = distances[:num_query, num_query:]
    return _combine(jaccard, original, lambda_value)
