"""Batch-hard triplet loss (Hermans et al.), soft or hard margin, dense (XLA friendly) form."""
import tensorflow as tf


def pairwise_euclidean(a, b, epsilon=1e-12, clamp=True):
    """Euclidean distances between the rows of ``a`` (n, d) and ``b`` (m, d).

    ``clamp=True`` computes ``sqrt(max(|a|^2 + |b|^2 - 2ab, epsilon))`` (the PyTorch reference
    form used by MSINet and CM-NAS); ``clamp=False`` computes ``sqrt(sum((a-b)^2) + epsilon)``
    exactly (the FlipReID form).
    """
    a = tf.convert_to_tensor(a)
    b = tf.cast(b, a.dtype)
    if clamp:
        squared = (tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
                   + tf.reduce_sum(tf.square(b), axis=1)[tf.newaxis, :]
                   - 2.0 * tf.matmul(a, b, transpose_b=True))
        return tf.sqrt(tf.maximum(squared, epsilon))
    difference = a[:, tf.newaxis, :] - b[tf.newaxis, :, :]
    return tf.sqrt(tf.reduce_sum(tf.square(difference), axis=-1) + epsilon)


def batch_hard_triplet(anchors, labels, candidates=None, candidate_labels=None, margin=None,
                       normalize=False, exclude_self=False, clamp=True):
    """Mean over anchors of the batch-hard triplet loss.

    For each anchor i: ``d_ap = max_j D_ij`` over candidates with the same label and
    ``d_an = min_j D_ij`` over candidates with another label. The loss is
    ``softplus(d_ap - d_an)`` when ``margin`` is None (soft margin, FlipReID) and
    ``max(0, d_ap - d_an + margin)`` otherwise (MSINet 0.3, CM-NAS 0.4).

    Args:
      anchors: (n, d) features; labels: (n,) integer labels.
      candidates, candidate_labels: the set searched for positives and negatives; default the
        anchors themselves (intra-batch). CM-NAS's cross-modality terms pass the other modality.
      normalize: L2-normalise both sets first (``x / max(|x|, 1e-12)``, MSINet).
      exclude_self: leave the anchor itself out of its positives (FlipReID: an anchor without
        another positive then has ``d_ap = 0``). The reference MSINet/CM-NAS losses keep it.
      clamp: distance form, see :func:`pairwise_euclidean` (FlipReID uses ``clamp=False``).
    """
    anchors = tf.convert_to_tensor(anchors)
    dtype = anchors.dtype
    if candidates is None:
        candidates, candidate_labels = anchors, labels
    candidates = tf.cast(candidates, dtype)
    if normalize:
        anchors = anchors / tf.maximum(tf.norm(anchors, axis=1, keepdims=True), 1e-12)
        candidates = candidates / tf.maximum(tf.norm(candidates, axis=1, keepdims=True), 1e-12)
    distances = pairwise_euclidean(anchors, candidates, clamp=clamp)
    labels = tf.reshape(labels, [-1, 1])
    candidate_labels = tf.reshape(candidate_labels, [1, -1])
    positive = tf.equal(labels, candidate_labels)
    if exclude_self:
        n = tf.shape(anchors)[0]
        positive = tf.logical_and(positive, tf.logical_not(tf.eye(n, tf.shape(candidates)[0],
                                                                  dtype=tf.bool)))
    # Hardest positive: masked multiply, so an anchor without positives gets 0.
    hardest_positive = tf.reduce_max(distances * tf.cast(positive, dtype), axis=1)
    # Hardest negative: same-label entries pushed to +inf (dense form of a boolean mask).
    same_label = tf.equal(labels, candidate_labels)
    infinity = tf.constant(float("inf"), dtype)
    hardest_negative = tf.reduce_min(tf.where(same_label, infinity, distances), axis=1)
    difference = hardest_positive - hardest_negative
    if margin is None:
        per_anchor = tf.math.softplus(difference)
    else:
        per_anchor = tf.nn.relu(difference + margin)
    return tf.reduce_mean(per_anchor)
