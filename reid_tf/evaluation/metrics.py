"""Ranking metrics for re-identification: CMC, mAP and mINP.

Every function here takes a query × gallery **distance** matrix (smaller = more similar) and the
identity/camera arrays of both sides, and is pure numpy.

Ranking order
-------------
For every query the gallery is ranked by **ascending distance, ties broken by gallery index**
(the lower index first). This is exactly ``np.argsort(row, kind="stable")``; the reference
implementations use numpy's default (unstable) quicksort, whose tie order is unspecified, so the
two agree whenever a row has no ties among the items that matter. The distance matrix is cast to
float32 first (as the FlipReID reference does), so values that differ only beyond float32
precision count as ties. ``-0.0`` and ``+0.0`` are equal; NaN distances are rejected.

Implementation
--------------
No per-query Python loop: rows are processed in blocks. Each distance is turned into an
order-preserving unsigned 32-bit key, shifted into the high half of a 64-bit word whose low half
holds ``gallery_index << 2 | flags`` (bit 0: true match, bit 1: removed from the ranking). One
``np.sort`` of these words per block (numpy's SIMD sort; the keys are unique, so any sort gives
the stable order) yields, for every query, the ranked list of flags. Only the flagged entries
(true matches and removed items, a few per row) are then looked at. Blocks are shared between
``num_threads`` threads: numpy's sorting and element-wise kernels release the GIL.
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["cmc_map", "cmc_map_blocks", "sysu_mm01_cmc_map"]

_MATCH = np.uint32(1)
_REMOVED = np.uint32(2)
_SIGN = np.int32(np.iinfo(np.int32).min)
_LOW_MASK = np.uint64(0xFFFFFFFF)
# Order-preserving keys of +inf and -inf; keys outside this range are NaNs.
_KEY_PLUS_INF = 0xFF800000
_KEY_MINUS_INF = 0x007FFFFF
# Gallery indices share the low 32 bits with 2 flag bits.
_MAX_GALLERY = 1 << 30
# Target size (elements) of one block of rows.
_BLOCK_ELEMENTS = 1 << 20


def _default_threads():
    return max(1, min(2, os.cpu_count() or 1))


def _as_vector(values, name, length=None, length_name=None):
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}.")
    if length is not None and array.shape[0] != length:
        raise ValueError(
            f"{name} has {array.shape[0]} entries but the distance matrix has {length} "
            f"{length_name}."
        )
    return array


def _check_distmat(distmat):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(
            f"distmat must be a 2-D (queries x gallery) matrix, got shape {distmat.shape}."
        )
    if distmat.shape[0] == 0 or distmat.shape[1] == 0:
        raise ValueError(f"distmat is empty (shape {distmat.shape}): no queries or no gallery.")
    if distmat.shape[1] >= _MAX_GALLERY:
        raise ValueError(f"A gallery of {distmat.shape[1]} items is too large (limit 2**30).")
    if not (np.issubdtype(distmat.dtype, np.floating) or np.issubdtype(distmat.dtype, np.integer)):
        raise ValueError(f"distmat must hold real numbers, got dtype {distmat.dtype}.")
    return distmat


def _check_max_rank(max_rank):
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}.")
    return int(max_rank)


def _order_keys(block, out=None):
    """Order-preserving uint32 keys of a float32 block (-0.0 and +0.0 get the same key).

    Non-negative floats get ``bits | 2**31``; negative floats get ``~bits``. ``-0.0`` is first
    turned into ``+0.0`` (by adding 0). NaNs get keys above ``+inf`` or below ``-inf``.
    """
    block = np.add(block, np.float32(0), dtype=np.float32)  # canonical zero (and a copy)
    signed = block.view(np.int32)
    mask = np.right_shift(signed, 31)  # -1 for negative values, 0 otherwise
    np.bitwise_or(mask, _SIGN, out=mask)
    if out is None:
        out = np.empty(block.shape, dtype=np.uint32)
    np.bitwise_xor(signed, mask, out=out.view(np.int32))
    return out


_HIGH, _LOW = (1, 0) if sys.byteorder == "little" else (0, 1)
# Byte of a uint64 word that holds its 8 least significant bits.
_LOW_BYTE = 0 if sys.byteorder == "little" else 7


def _sorted_words(block, flags, base):
    """Sort the words ``key(distance) << 32 | gallery_index << 2 | flags`` along each row.

    ``flags`` (uint8, same shape as ``block``) holds the two flag bits of every item, ``base``
    (uint32, one per gallery column) ``gallery_index << 2``. Since the gallery index makes every
    word of a row unique, the order is ascending distance with ties broken by gallery index
    whatever sort algorithm numpy uses. Returns the sorted uint64 words.
    """
    block = np.ascontiguousarray(block, dtype=np.float32)
    num_rows, num_columns = block.shape
    words = np.empty((num_rows, num_columns), dtype=np.uint64)
    halves = words.view(np.uint32).reshape(num_rows, num_columns, 2)
    if block.min() >= 0:
        # Fast path: setting the sign bit is order preserving for x >= 0 and maps -0.0 (the
        # only value with the sign bit set that passes the test) to the key of +0.0.
        np.bitwise_or(block.view(np.uint32), np.uint32(0x80000000), out=halves[:, :, _HIGH])
    else:  # negative values, or NaN (min is NaN)
        _order_keys(block, out=halves[:, :, _HIGH])
    np.bitwise_or(base, flags, out=halves[:, :, _LOW])
    words.sort(axis=1)
    high = words[:, [0, -1]] >> np.uint64(32)
    if np.any(high[:, 1] > _KEY_PLUS_INF) or np.any(high[:, 0] < _KEY_MINUS_INF):
        raise ValueError("distmat contains NaN values; distances must be real numbers.")
    return words


def _flagged_entries(words):
    """Row, column and flag bits of every sorted entry whose flags are not 0 (row-major).

    The flag bytes are copied into a zero-padded uint8 buffer whose rows are a multiple of 8
    long, so the search for non-zero flags runs over 8-byte groups (viewed as uint64) first and
    only looks at the bytes of the groups that hold something.
    """
    num_rows, num_columns = words.shape
    padded_columns = -(-num_columns // 8) * 8
    flags = np.zeros((num_rows, padded_columns), dtype=np.uint8)
    low_bytes = words.view(np.uint8).reshape(num_rows, num_columns, 8)[:, :, _LOW_BYTE]
    np.bitwise_and(low_bytes, np.uint8(3), out=flags[:, :num_columns])
    groups = np.flatnonzero(flags.view(np.uint64))
    group_bytes = flags.reshape(-1, 8)[groups]
    group_index, offset = np.nonzero(group_bytes)
    rows, cols = np.divmod(groups[group_index] * 8 + offset, padded_columns)
    return rows, cols, group_bytes[group_index, offset]


def _segment_cumsum(values, rows, starts):
    """Inclusive cumulative sum of ``values`` restarted at every row (``rows`` sorted)."""
    total = np.cumsum(values)
    before_row = np.concatenate(([0], total))[starts]
    return total - before_row[rows]


def _match_ranks(rows, cols, flags, num_rows):
    """Ranks of the valid true matches from the flagged entries of sorted rows.

    ``rows, cols, flags`` list (row-major) the entries of the sorted rows whose flag bits are
    not 0. Items with the removed bit are dropped from the ranked list; the valid matches are
    the items with the match bit and without the removed bit. Returns, for every valid match in
    row-major order: its query row, its 1-based rank in the remaining list, its 1-based index
    among the valid matches of its row and its 0-based column in the full sorted row; plus per
    row the number of valid matches.
    """
    removed = ((flags & _REMOVED) != 0).astype(np.int64)
    row_starts = np.searchsorted(rows, np.arange(num_rows))
    # Removed items strictly before each flagged entry of the same row.
    removed_before = _segment_cumsum(removed, rows, row_starts) - removed
    valid = ((flags & _MATCH) != 0) & (removed == 0)
    rows_v = rows[valid]
    cols_v = cols[valid]
    ranks = cols_v + 1 - removed_before[valid]
    valid_starts = np.searchsorted(rows_v, np.arange(num_rows))
    counts = _segment_cumsum(np.ones(rows_v.shape[0], dtype=np.int64), rows_v, valid_starts)
    n_rel = np.bincount(rows_v, minlength=num_rows)
    return rows_v, ranks, counts, cols_v, n_rel


def _summarise(rows, cols, flags, num_rows):
    """Per-query AP, INP, rank of the first match (and its column in the full sorted row)."""
    rows_v, ranks, counts, cols_v, n_rel = _match_ranks(rows, cols, flags, num_rows)
    valid = n_rel > 0
    precision_sum = np.bincount(rows_v, weights=counts / ranks, minlength=num_rows)
    safe_n_rel = np.maximum(n_rel, 1)
    average_precision = np.where(valid, precision_sum / safe_n_rel, 0.0)
    first = counts == 1
    first_rank = np.zeros(num_rows, dtype=np.int64)
    first_rank[rows_v[first]] = ranks[first]
    first_col = np.full(num_rows, -1, dtype=np.int64)
    first_col[rows_v[first]] = cols_v[first]
    last = counts == n_rel[rows_v]
    last_rank = np.ones(num_rows, dtype=np.int64)
    last_rank[rows_v[last]] = ranks[last]
    inverse_negative_penalty = np.where(valid, n_rel / last_rank, 0.0)
    return {
        "valid": valid,
        "ap": average_precision,
        "inp": inverse_negative_penalty,
        "first_rank": first_rank,
        "first_col": first_col,
    }


def _row_blocks(num_rows, num_columns):
    step = max(1, _BLOCK_ELEMENTS // max(num_columns, 1))
    return [(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def _map_blocks(function, blocks, num_threads):
    if num_threads is None:
        num_threads = _default_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
            or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}.")
    if num_threads == 1 or len(blocks) == 1:
        return [function(start, stop) for start, stop in blocks]
    with ThreadPoolExecutor(max_workers=int(num_threads)) as executor:
        return list(executor.map(lambda bounds: function(*bounds), blocks))


def _merge(parts):
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _aggregate(per_query, ranks, max_rank, what):
    valid = per_query["valid"]
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"{what}: no query has a true match left in the gallery (after the camera rules), "
            "so CMC/mAP are undefined. Check that query and gallery identities overlap."
        )
    histogram = np.bincount(np.minimum(ranks[valid], max_rank + 1) - 1, minlength=max_rank + 1)
    cmc = np.cumsum(histogram[:max_rank]) / num_valid
    return {
        "cmc": cmc.astype(np.float64),
        "mAP": float(per_query["ap"][valid].sum() / num_valid),
        "mINP": float(per_query["inp"][valid].sum() / num_valid),
        "num_valid_queries": num_valid,
    }


def _with_per_query(result, per_query, ranks, wanted):
    """Add the ``per_query`` arrays (valid, ap, inp, rank) to ``result`` when ``wanted``."""
    if wanted:
        valid = per_query["valid"]
        result["per_query"] = {"valid": valid, "ap": per_query["ap"], "inp": per_query["inp"],
                               "rank": np.where(valid, ranks, 0).astype(np.int64)}
    return result


def _prepare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, need_cameras):
    distmat = _check_distmat(distmat)
    labels = _labels(q_pids, g_pids, q_camids, g_camids, *distmat.shape, max_rank, need_cameras,
                     "rows (queries)", "columns (gallery items)")
    return (distmat, *labels)


def _labels(q_pids, g_pids, q_camids, g_camids, num_query, num_gallery, max_rank, need_cameras,
            query_name, gallery_name):
    """The label vectors checked against the query and gallery counts (cameras only when the
    camera rule needs them) and ``max_rank`` capped at the gallery size."""
    q_pids = _as_vector(q_pids, "q_pids", num_query, query_name)
    g_pids = _as_vector(g_pids, "g_pids", num_gallery, gallery_name)
    if need_cameras:
        if q_camids is None or g_camids is None:
            raise ValueError("q_camids and g_camids are required by the camera rule.")
        q_camids = _as_vector(q_camids, "q_camids", num_query, query_name)
        g_camids = _as_vector(g_camids, "g_camids", num_gallery, gallery_name)
    max_rank = min(_check_max_rank(max_rank), num_gallery)
    return q_pids, g_pids, q_camids, g_camids, max_rank


def cmc_map(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, remove_same_camera=True,
            num_threads=None, return_per_query=False):
    """CMC curve, mAP and mINP with Market-1501 semantics.

    For every query the gallery is ranked by ascending distance (float32; ties broken by gallery
    index, i.e. a stable sort). With ``remove_same_camera`` every gallery item with the same
    identity AND the same camera as the query is removed from its list (items of other
    identities from that camera stay). A query with no true match left is skipped: it is not
    counted in any denominator. For a valid query with true matches at 1-based ranks
    ``r_1 < ... < r_R`` of the remaining list:

    * ``CMC_q[k] = 1`` if ``r_1 <= k + 1`` else 0 (cumulative matches clipped at 1);
    * ``AP_q = (1/R) * sum_k k / r_k``;
    * ``INP_q = R / r_R`` (mINP, Ye et al. 2021).

    Args:
      distmat: (Q, G) distances, smaller = more similar. Cast to float32; NaN is an error.
      q_pids, g_pids: identities of the Q queries and G gallery items (any comparable dtype).
      q_camids, g_camids: cameras; may be None when ``remove_same_camera`` is False.
      max_rank: length of the CMC curve, capped at G (the rank beyond the list is 1 for every
        valid query, so the trailing entries of a short filtered list are 1).
      remove_same_camera: apply the same-identity-same-camera rule (False for VehicleID/RegDB).
      num_threads: threads sharing the row blocks (default ``min(2, cpu_count)``).
      return_per_query: also return ``per_query`` (see below).

    Returns:
      dict with ``cmc`` (float64 array of length ``min(max_rank, G)``, fractions), ``mAP`` and
      ``mINP`` (floats in [0, 1]) and ``num_valid_queries`` (int). With ``return_per_query``,
      ``per_query`` holds Q-long arrays: ``valid`` (bool: the query has a true match left),
      ``ap``, ``inp`` and ``rank`` (1-based rank of its first true match; 0 for invalid
      queries); ``mAP`` is the mean of ``ap`` over the valid queries.

    Raises:
      ValueError: for shapes that disagree, NaN distances, a bad ``max_rank``, or when no query
        has a valid match.
    """
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank = _prepare(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, bool(remove_same_camera))
    num_query, num_gallery = distmat.shape
    block_summary = _standard_block_rule(g_pids, g_camids, remove_same_camera)

    def block_metrics(start, stop):
        return block_summary(distmat[start:stop], q_pids[start:stop],
                             _q_cams_or_none(q_camids, start, stop))

    parts = _map_blocks(block_metrics, _row_blocks(num_query, num_gallery), num_threads)
    return _finish(parts, max_rank, return_per_query, "cmc_map")


def _q_cams_or_none(q_camids, start, stop):
    return None if q_camids is None else q_camids[start:stop]


def _standard_block_rule(g_pids, g_camids, remove_same_camera):
    """``summary(block, q_pids, q_camids)`` (:func:`_summarise`) of blocks of distance rows
    under the Market-1501 rules of :func:`cmc_map`."""
    base = np.arange(g_pids.shape[0], dtype=np.uint32) << np.uint32(2)

    def block_summary(block, q_pids, q_camids):
        match = g_pids[np.newaxis, :] == q_pids[:, np.newaxis]
        flags = match.view(np.uint8)
        if remove_same_camera:
            same_camera = g_camids[np.newaxis, :] == q_camids[:, np.newaxis]
            np.logical_and(match, same_camera, out=same_camera)
            flags = flags | (same_camera.view(np.uint8) << np.uint8(1))
        words = _sorted_words(block, flags, base)
        return _summarise(*_flagged_entries(words), block.shape[0])

    return block_summary


def _finish(parts, max_rank, return_per_query, what, rank_key="first_rank"):
    per_query = _merge(parts)
    result = _aggregate(per_query, per_query[rank_key], max_rank, what)
    return _with_per_query(result, per_query, per_query[rank_key], return_per_query)


def cmc_map_blocks(distance_rows, num_query, num_gallery, q_pids, g_pids, q_camids, g_camids,
                   max_rank=50, remove_same_camera=True, chunk_rows=None, num_threads=None,
                   return_per_query=False, what="cmc_map_blocks", rule="market"):
    """:func:`cmc_map` (``rule="market"``) or :func:`sysu_mm01_cmc_map` (``rule="sysu_mm01"``;
    ``remove_same_camera`` is then ignored: the SYSU-MM01 camera rule applies) of a distance
    matrix that is never held whole.

    ``distance_rows(start, stop)`` returns the (stop - start, num_gallery) distance rows of
    queries ``start:stop``; it is called for consecutive chunks of ``chunk_rows`` queries
    (default: as many as 64 MiB of float32 distances hold), each chunk is ranked by the same
    block code as :func:`cmc_map` (threads share its row blocks) and dropped. The result is
    identical to ``cmc_map`` on the stacked rows. Memory: one chunk plus the per-query values.
    """
    if rule not in ("market", "sysu_mm01"):
        raise ValueError(f"rule must be 'market' or 'sysu_mm01', got {rule!r}.")
    if rule == "sysu_mm01":
        remove_same_camera = True  # the cameras are required
    if isinstance(num_gallery, bool) or not isinstance(num_gallery, (int, np.integer)) \
            or num_gallery < 1 or num_query < 1:
        raise ValueError(f"{what}: no queries or no gallery ({num_query} x {num_gallery}).")
    if num_gallery >= _MAX_GALLERY:
        raise ValueError(f"A gallery of {num_gallery} items is too large (limit 2**30).")
    q_pids, g_pids, q_camids, g_camids, max_rank = _labels(
        q_pids, g_pids, q_camids, g_camids, num_query, num_gallery, max_rank,
        remove_same_camera, "queries", "gallery items")
    if chunk_rows is None:
        chunk_rows = max(1, (64 << 20) // (4 * num_gallery))
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
            or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
    if rule == "sysu_mm01":
        block_summary, rank_key = _sysu_block_rule(g_pids, g_camids), "distinct_rank"
    else:
        block_summary = _standard_block_rule(g_pids, g_camids, remove_same_camera)
        rank_key = "first_rank"
    parts = []
    for chunk_start in range(0, num_query, int(chunk_rows)):
        chunk_stop = min(chunk_start + int(chunk_rows), num_query)
        block = _check_distmat(distance_rows(chunk_start, chunk_stop))
        if block.shape != (chunk_stop - chunk_start, num_gallery):
            raise ValueError(f"{what}: distance_rows({chunk_start}, {chunk_stop}) returned "
                             f"shape {block.shape}, expected "
                             f"{(chunk_stop - chunk_start, num_gallery)}.")
        chunk_pids = q_pids[chunk_start:chunk_stop]
        chunk_cams = _q_cams_or_none(q_camids, chunk_start, chunk_stop)

        def block_metrics(start, stop, block=block, chunk_pids=chunk_pids,
                          chunk_cams=chunk_cams):
            return block_summary(block[start:stop], chunk_pids[start:stop],
                                 _q_cams_or_none(chunk_cams, start, stop))

        parts.extend(_map_blocks(block_metrics, _row_blocks(block.shape[0], num_gallery),
                                 num_threads))
    return _finish(parts, max_rank, return_per_query, what, rank_key)


def _sysu_block_rule(g_pids, g_camids):
    """``summary(block, q_pids, q_camids)`` of blocks of distance rows under the SYSU-MM01
    rules (:func:`sysu_mm01_cmc_map`): :func:`_summarise` plus ``distinct_rank``."""
    num_gallery = g_pids.shape[0]
    base = np.arange(num_gallery, dtype=np.uint32) << np.uint32(2)
    _, g_codes = np.unique(g_pids, return_inverse=True)
    g_codes = g_codes.reshape(-1).astype(np.int64)
    sentinel = int(g_codes.max()) + 1
    gallery_camera_2 = g_camids == 2

    def block_summary(block, q_pids, q_camids):
        num_rows = block.shape[0]
        match = g_pids[np.newaxis, :] == q_pids[:, np.newaxis]
        excluded = (q_camids[:, np.newaxis] == 3) & gallery_camera_2[np.newaxis, :]
        flags = match.view(np.uint8) | (excluded.view(np.uint8) << np.uint8(1))
        words = _sorted_words(block, flags, base)
        rows, cols, flag_values = _flagged_entries(words)
        summary = _summarise(rows, cols, flag_values, num_rows)
        # Distinct-identity rank: identities (not excluded) whose first occurrence in the
        # ranked list is at or before the first valid true match.
        codes = g_codes[((words & _LOW_MASK) >> np.uint64(2)).astype(np.intp)]
        removed = (flag_values & _REMOVED) != 0
        codes[rows[removed], cols[removed]] = sentinel
        row_offsets = np.arange(num_rows, dtype=np.int64)[:, np.newaxis] * (sentinel + 1)
        composite, first_flat = np.unique(codes + row_offsets, return_index=True)
        first_rows = first_flat // num_gallery
        first_cols = first_flat % num_gallery
        keep = (composite % (sentinel + 1) != sentinel) & \
            (first_cols <= summary["first_col"][first_rows])
        summary["distinct_rank"] = np.bincount(first_rows[keep], minlength=num_rows)
        return summary

    return block_summary


def sysu_mm01_cmc_map(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20,
                      num_threads=None, return_per_query=False):
    """SYSU-MM01 metrics (CM-NAS reference variant) from a query × gallery distance matrix.

    * Camera rule: for a query from camera 3 every gallery item from camera 2 is removed from
      its ranked list, whatever its identity (cameras 2 and 3 share a scene). Nothing else is
      removed (queries from camera 6 keep the whole gallery).
    * CMC over **distinct identities**: the remaining ranked identity list is reduced to its
      distinct identities in first-occurrence order; ``CMC_q[k] = 1`` if the query identity is
      among the first ``k + 1`` of them.
    * mAP and mINP: standard AP / INP (see :func:`cmc_map`) over the remaining, non-deduplicated
      ranked list.
    * Queries without a true match in the remaining list are skipped.

    Ranking: ascending distance, ties broken by gallery index (pass negated similarities to
    rank by descending similarity). Arguments and return value as in :func:`cmc_map`
    (``max_rank`` default 20, capped at the gallery size; ``per_query["rank"]`` is the
    distinct-identity rank).
    """
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank = _prepare(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, True)
    num_query, num_gallery = distmat.shape
    block_summary = _sysu_block_rule(g_pids, g_camids)

    def block_metrics(start, stop):
        return block_summary(distmat[start:stop], q_pids[start:stop], q_camids[start:stop])

    parts = _map_blocks(block_metrics, _row_blocks(num_query, num_gallery), num_threads)
    per_query = _merge(parts)
    result = _aggregate(per_query, per_query["distinct_rank"], max_rank, "sysu_mm01_cmc_map")
    return _with_per_query(result, per_query, per_query["distinct_rank"], return_per_query)
