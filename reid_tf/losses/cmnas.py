"""CM-NAS losses (spec ``cmnas.md`` §6): cross-modality triplet, SP, CMMD and their total.

With a mode-0 batch of ``2B`` samples (first ``B`` visible, last ``B`` thermal, row ``i`` of
both halves of the same identity):

* ``cross_modality_triplet`` (whole batch) / ``cross_modality_triplet_halves``: batch-hard
  triplet (margin 0.4) on the **unnormalised pre-BNNeck** features, the mean of V-V, T-T,
  V->T and T->V;
* ``sp_loss``: similarity-preserving loss on the post-BNNeck features;
* ``cmmd_loss``: class-specific MMD with the kernel ``(a.b)^2`` on chunks of ``num_pos`` rows of
  the L2-normalised post-BNNeck features;
* ``cmnas_total_loss`` = CE + tri + 5 * SP + 0.05 * CMMD.
"""
import tensorflow as tf

from reid_tf.losses.classification import cross_entropy
from reid_tf.losses.triplet import batch_hard_triplet

TRIPLET_MARGIN = 0.4
SP_WEIGHT = 5.0
CMMD_WEIGHT = 0.05
NUM_POS = 4
NORMALIZE_EPSILON = 1e-12


def _l2_normalize_rows(x):
    """``x / max(|x|, 1e-12)`` row-wise (``torch.nn.functional.normalize``)."""
    return x / tf.maximum(tf.norm(x, axis=1, keepdims=True), NORMALIZE_EPSILON)


def _first(value):
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"expected one tensor, got {len(value)}.")
        return value[0]
    return value


def _halves(x):
    half = tf.shape(x)[0] // 2
    return x[:half], x[half:]


def _triplet_term(anchors, candidates, labels, margin, normalize):
    # The reference's Tri(A, P, y) uses one label vector for anchors and candidates.
    margin = None if margin is not None and margin < 0 else margin
    return batch_hard_triplet(anchors, labels, candidates, labels, margin=margin,
                              normalize=normalize)


def cross_modality_triplet_halves(global_feat_v, global_feat_t, labels_v, labels_t,
                                  margin=TRIPLET_MARGIN, normalize=False, return_terms=False):
    """``1/4 [Tri(g_v, g_v, y_v) + Tri(g_t, g_t, y_t) + Tri(g_v, g_t, y_t) + Tri(g_t, g_v, y_v)]``.

    ``Tri(A, P, y)`` is the batch-hard triplet loss (Euclidean distances
    ``sqrt(max(|a|^2 + |p|^2 - 2 a.p, 1e-12))``, hardest positive = max over ``y_j = y_i``,
    hardest negative = min over ``y_j != y_i``, ``mean_i max(0, d+ - d- + margin)``), with the
    single label vector ``y`` for anchors and candidates, as in the reference (the sampler makes
    ``y_v == y_t``). A negative ``margin`` (or None) gives the soft margin
    ``softplus(d+ - d-)``. ``normalize`` L2-normalises the features first (reference
    ``triplet_feat_norm``, off). With ``return_terms`` the four terms come back too (in the
    order above).
    """
    terms = [
        _triplet_term(global_feat_v, global_feat_v, labels_v, margin, normalize),
        _triplet_term(global_feat_t, global_feat_t, labels_t, margin, normalize),
        _triplet_term(global_feat_v, global_feat_t, labels_t, margin, normalize),
        _triplet_term(global_feat_t, global_feat_v, labels_v, margin, normalize),
    ]
    loss = tf.add_n(terms) / 4.0
    return (loss, terms) if return_terms else loss


def cross_modality_triplet(global_feat, labels, margin=TRIPLET_MARGIN, normalize=False,
                           return_terms=False):
    """The four-term triplet loss of a whole mode-0 batch.

    ``global_feat`` (2B, d) holds the visible samples in its first half and the thermal ones in
    its second half, ``labels`` (2B,) is ``concat(y_v, y_t)``; both are cut at row B and passed
    to :func:`cross_modality_triplet_halves`.
    """
    global_feat = tf.convert_to_tensor(global_feat)
    labels = tf.reshape(labels, [-1])
    global_v, global_t = _halves(global_feat)
    labels_v, labels_t = _halves(labels)
    return cross_modality_triplet_halves(global_v, global_t, labels_v, labels_t, margin=margin,
                                         normalize=normalize, return_terms=return_terms)


def sp_loss(feat_v, feat_t):
    """Similarity-preserving loss: ``mean((G_v^ - G_t^)^2)`` with ``G = f f^T`` and every row
    of ``G`` L2-normalised (eps 1e-12)."""
    feat_v = tf.convert_to_tensor(feat_v)
    feat_t = tf.cast(feat_t, feat_v.dtype)
    feat_v = tf.reshape(feat_v, [tf.shape(feat_v)[0], -1])
    feat_t = tf.reshape(feat_t, [tf.shape(feat_t)[0], -1])
    gram_v = _l2_normalize_rows(tf.matmul(feat_v, feat_v, transpose_b=True))
    gram_t = _l2_normalize_rows(tf.matmul(feat_t, feat_t, transpose_b=True))
    return tf.reduce_mean(tf.square(gram_v - gram_t))


def cmmd_loss(feat_v, feat_t, num_pos=NUM_POS):
    """Class-specific MMD (biased estimator, kernel ``k(a, b) = (a.b)^2``).

    Rows of both inputs are L2-normalised (eps 1e-12) and cut into consecutive chunks of
    ``num_pos`` rows (the last chunk may be shorter, as with ``torch.split``); per chunk
    ``MMD^2 = mean k(v_i, v_j) + mean k(t_i, t_j) - 2 mean k(v_i, t_j)`` (all pairs, diagonals
    included), which equals ``|S_v - S_t|_F^2`` with ``S = mean_i x_i x_i^T``. The loss is the
    mean over chunks. Both inputs must have the same number of rows.
    """
    if int(num_pos) < 1:
        raise ValueError(f"cmmd_loss: num_pos must be a positive integer, got {num_pos}.")
    feat_v = tf.convert_to_tensor(feat_v)
    feat_t = tf.cast(feat_t, feat_v.dtype)
    feat_v = _l2_normalize_rows(tf.reshape(feat_v, [tf.shape(feat_v)[0], -1]))
    feat_t = _l2_normalize_rows(tf.reshape(feat_t, [tf.shape(feat_t)[0], -1]))
    rows_v, rows_t = feat_v.shape[0], feat_t.shape[0]
    if rows_v is not None and rows_t is not None and rows_v != rows_t:
        raise ValueError(f"cmmd_loss: the visible and thermal features need the same number of "
                         f"rows, got {rows_v} and {rows_t}.")
    n = tf.shape(feat_v)[0]
    chunk = tf.range(n) // int(num_pos)
    num_chunks = (n + int(num_pos) - 1) // int(num_pos)
    same_chunk = tf.cast(tf.equal(chunk[:, None], chunk[None, :]), feat_v.dtype)

    def block_sums(a, b):
        kernel = tf.square(tf.matmul(a, b, transpose_b=True)) * same_chunk
        return tf.math.unsorted_segment_sum(tf.reduce_sum(kernel, axis=1), chunk, num_chunks)

    sizes = tf.math.unsorted_segment_sum(tf.ones([n], feat_v.dtype), chunk, num_chunks)
    mmd = (block_sums(feat_v, feat_v) + block_sums(feat_t, feat_t)
           - 2.0 * block_sums(feat_v, feat_t)) / tf.square(sizes)
    return tf.reduce_mean(mmd)


def cmnas_total_loss(outputs, labels, margin=TRIPLET_MARGIN, sp_weight=SP_WEIGHT,
                     cmmd_weight=CMMD_WEIGHT, num_pos=NUM_POS, label_smoothing=0.0,
                     triplet_normalize=False):
    """CM-NAS's training objective on one mode-0 batch (spec §6.5, §8.3).

    Args:
      outputs: the training model's dict ``{"embeddings": [global_feat], "logits": [logits],
        "bnneck": [feat]}`` (single tensors instead of one-element lists are accepted), for a
        batch whose first half is visible and second half thermal.
      labels: (2B,) integer labels ``concat(y_v, y_t)``.
      margin, sp_weight, cmmd_weight, num_pos, label_smoothing, triplet_normalize: reference
        values 0.4, 5.0, 0.05, 4, 0.0, False.

    Returns:
      ``(total, parts)``: ``total = ce + triplet + sp_weight * sp + cmmd_weight * cmmd`` and
      ``parts = {"ce", "triplet", "sp", "cmmd"}`` holding the **unweighted** terms.
    """
    global_feat = _first(outputs["embeddings"])
    feat = _first(outputs["bnneck"])
    logits = _first(outputs["logits"])
    labels = tf.reshape(labels, [-1])
    global_v, global_t = _halves(global_feat)
    feat_v, feat_t = _halves(feat)
    labels_v, labels_t = _halves(labels)
    parts = {
        "ce": cross_entropy(logits, labels, label_smoothing=label_smoothing),
        "triplet": cross_modality_triplet_halves(global_v, global_t, labels_v, labels_t,
                                                 margin=margin, normalize=triplet_normalize),
        "sp": sp_loss(feat_v, feat_t),
        "cmmd": cmmd_loss(feat_v, feat_t, num_pos=num_pos),
    }
    parts = {name: tf.cast(value, tf.float32) for name, value in parts.items()}
    total = (parts["ce"] + parts["triplet"] + sp_weight * parts["sp"]
             + cmmd_weight * parts["cmmd"])
    return total, parts


def cmnas_objective(outputs, labels, **options):
    """:func:`cmnas_total_loss` in the trainer's form: ``{"total": ..., "ce": ...,
    "triplet": ..., "sp": ..., "cmmd": ...}`` (parts unweighted). ``options`` are passed on."""
    total, parts = cmnas_total_loss(outputs, labels, **options)
    result = {"total": total}
    result.update(parts)
    return result
