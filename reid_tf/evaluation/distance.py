"""Query × gallery distance matrices, computed in chunks of query rows.

Only one chunk of intermediate values (``chunk_size`` query rows × all gallery items) exists at
a time besides the float32 result, so a large gallery needs no Q × G float64 temporaries.
Arithmetic is in float32 for float32 (or narrower) features and float64 for float64 features;
the result is always float32.

Metrics (``metric=``):

* ``"euclidean"``: ``sqrt(max(|q|² + |g|² − 2⟨q, g⟩, 0))``;
* ``"sqeuclidean"``: ``max(|q|² + |g|² − 2⟨q, g⟩, 0)`` — MSINet's distance (no root);
* ``"cosine"``: ``1 − cos(q, g)`` clipped to [0, 2], as scikit-learn's ``cosine_distances``
  (FlipReID); a zero vector has cosine 0 with everything (distance 1);
* ``"neg_dot"``: ``−⟨q, g⟩``, i.e. ranking by descending dot-product similarity (CM-NAS, with
  ``normalize=True``). Not a metric in the mathematical sense; smaller is more similar.

``normalize=True`` first divides every feature by ``max(|x|, 1e-12)`` (L2 normalisation as
``torch.nn.functional.normalize``).
"""
import numpy as np

__all__ = ["METRICS", "l2_normalize", "pairwise_distance"]

METRICS = ("euclidean", "sqeuclidean", "cosine", "neg_dot")
DEFAULT_CHUNK_SIZE = 1024


def l2_normalize(features, epsilon=1e-12):
    """Rows of ``features`` divided by ``max(‖row‖₂, epsilon)`` (float32 or float64 kept)."""
    features = _as_features(features, "features")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, features.dtype.type(epsilon))


def _as_features(features, name):
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (items, dimensions) array, got shape {features.shape}.")
    if not (np.issubdtype(features.dtype, np.floating)
            or np.issubdtype(features.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {features.dtype}.")
    dtype = np.float64 if features.dtype == np.float64 else np.float32
    return features.astype(dtype, copy=False)


def pairwise_distance(query_features, gallery_features, metric="euclidean", normalize=False,
                      chunk_size=DEFAULT_CHUNK_SIZE):
    """Distances between every query row and every gallery row, as a (Q, G) float32 matrix.

    Args:
      query_features: (Q, D) array.
      gallery_features: (G, D) array.
      metric: one of :data:`METRICS` (see the module docstring).
      normalize: L2-normalise both feature sets first.
      chunk_size: query rows per chunk (bounds the intermediate memory).

    Returns:
      float32 (Q, G) distances.
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    # The queries are normalised chunk by chunk below; only the gallery is normalised here.
    query, gallery = prepared_features(query_features, gallery_features, metric, False)
    if normalize:
        gallery = l2_normalize(gallery)
    terms = gallery_terms(gallery, metric)
    result = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    for start in range(0, query.shape[0], chunk_size):
        chunk = query[start:start + chunk_size]
        if normalize:
            chunk = l2_normalize(chunk)
        dot = distance_chunk(chunk, gallery, terms, metric)
        result[start:start + chunk.shape[0]] = dot
    return result


def gallery_terms(gallery, metric):
    """What :func:`distance_chunk` needs of the gallery besides its rows (squared norms, and
    the norms for ``cosine``), computed once for many query chunks."""
    gallery_squared = np.einsum("ij,ij->i", gallery, gallery)
    gallery_norm = None
    if metric == "cosine":
        gallery_norm = np.sqrt(gallery_squared)
        gallery_norm[gallery_norm == 0] = 1  # zero vectors: cosine 0, as scikit-learn
    return gallery_squared, gallery_norm


def distance_chunk(chunk, gallery, terms, metric):
    """Distances of the query rows ``chunk`` to every row of ``gallery`` (both already
    converted and, if wanted, normalised; ``terms`` from :func:`gallery_terms`), in the
    features' precision: one matrix product and element-wise passes in place."""
    gallery_squared, gallery_norm = terms
    dot = chunk @ gallery.T
    if metric == "neg_dot":
        np.negative(dot, out=dot)
    elif metric == "cosine":
        chunk_norm = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        chunk_norm[chunk_norm == 0] = 1
        dot /= chunk_norm[:, np.newaxis]
        dot /= gallery_norm[np.newaxis, :]
        np.subtract(1, dot, out=dot)
        np.clip(dot, 0, 2, out=dot)
    else:
        chunk_squared = np.einsum("ij,ij->i", chunk, chunk)
        dot *= -2
        dot += chunk_squared[:, np.newaxis]
        dot += gallery_squared[np.newaxis, :]
        np.maximum(dot, 0, out=dot)
        if metric == "euclidean":
            np.sqrt(dot, out=dot)
    return dot


def prepared_features(query_features, gallery_features, metric, normalize):
    """``(query, gallery)`` checked, in their common precision and (``normalize``)
    L2-normalised once: the inputs of :func:`distance_chunk`."""
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")
    query = _as_features(query_features, "query_features")
    gallery = _as_features(gallery_features, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query_features have {query.shape[1]} dimensions but gallery_features have "
            f"{gallery.shape[1]}."
        )
    dtype = np.result_type(query.dtype, gallery.dtype)
    query = query.astype(dtype, copy=False)
    gallery = gallery.astype(dtype, copy=False)
    if normalize:
        query, gallery = l2_normalize(query), l2_normalize(gallery)
    return query, gallery


def paired_distances(query, gallery, rows, cols, metric, chunk=1 << 15):
    """float32 distances of the pairs ``(query[rows[n]], gallery[cols[n]])`` (features
    prepared as for :func:`distance_chunk`), by row-wise dot products: the same metric, without
    any matrix (values agree with the matrix product's to rounding)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    cols = np.asarray(cols, dtype=np.int64).reshape(-1)
    out = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), chunk):
        a, b = query[rows[start:start + chunk]], gallery[cols[start:start + chunk]]
        dot = np.einsum("ij,ij->i", a, b)
        if metric == "neg_dot":
            value = -dot
        elif metric == "cosine":
            norm_a = np.sqrt(np.einsum("ij,ij->i", a, a))
            norm_b = np.sqrt(np.einsum("ij,ij->i", b, b))
            norm_a[norm_a == 0] = 1
            norm_b[norm_b == 0] = 1
            value = np.clip(1 - dot / (norm_a * norm_b), 0, 2)
        else:
            value = np.maximum(np.einsum("ij,ij->i", a, a) + np.einsum("ij,ij->i", b, b)
                               - 2 * dot, 0)
            if metric == "euclidean":
                value = np.sqrt(value)
        out[start:start + len(value)] = value
    return out
