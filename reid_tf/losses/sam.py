"""Spatial alignment loss of MSINet's SAM (msinet.md §7.2)."""
import tensorflow as tf


def batch_cosine_distance(x, y):
    """``D[b, s, t] = 1 - <x[b, s], y[b, t]> / (|x[b, s]| |y[b, t]|)`` (no epsilon).

    Args:
      x: ``(b, n1, M)``; y: ``(b, n2, M)``.

    Returns:
      ``(b, n1, n2)`` cosine distances.
    """
    dot = tf.matmul(x, y, transpose_b=True)
    norm_x = tf.norm(x, axis=-1)[:, :, tf.newaxis]
    norm_y = tf.norm(y, axis=-1)[:, tf.newaxis, :]
    return 1.0 - dot / (norm_x * norm_y)


def _gather_rows(values, mask, batch):
    """``values[g, p, :]`` for the p with ``mask[g, p]``, ascending p, as ``(B, count, M)``.

    Every row of ``mask`` must select the same number of entries (PK batches).
    """
    counts = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    with tf.control_dependencies([tf.debugging.assert_equal(
            counts, counts[0],
            message="spatial_alignment_loss needs the same number of positives for every "
                    "sample (a PK batch)")]):
        indices = tf.where(mask)  # row-major: grouped by g, ascending p
    gathered = tf.gather_nd(values, indices)
    return tf.reshape(gathered, [batch, -1, tf.shape(values)[-1]])


def spatial_alignment_loss(scores, labels, mode="pos_neg"):
    """Spatial alignment loss between the QAConv maps and the PAM maps of SAM.

    Args:
      scores: ``(B + 1, B, M)`` SAM output; ``scores[:B]`` are the QAConv maps ``U[g, p]``,
        ``scores[B]`` the PAM maps.
      labels: ``(B,)`` identity labels; every identity present must have the same number of
        images in the batch (PK sampling), since positives include the sample itself.
      mode: substring tests as in the reference: ``"pos"`` in mode adds
        ``mean(D(PAM_g, U[g, pos(g)]))``; ``"neg"`` in mode adds
        ``mean(D(U[g, neg(g)], U[g, neg(g)]))`` (zero diagonal included). So ``pos``,
        ``neg`` and ``pos_neg``.

    Returns:
      Scalar loss.
    """
    if not isinstance(mode, str) or ("pos" not in mode and "neg" not in mode):
        raise ValueError(f"spatial_alignment_loss mode must contain 'pos' and/or 'neg' "
                         f"('pos', 'neg', 'pos_neg'), got {mode!r}.")
    scores = tf.convert_to_tensor(scores)
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    batch = tf.shape(labels)[0]
    unsupervised = scores[:-1]
    position = scores[-1][:, tf.newaxis, :]
    same = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    loss = tf.zeros([], dtype=scores.dtype)
    if "pos" in mode:
        positives = _gather_rows(unsupervised, same, batch)
        loss += tf.reduce_mean(batch_cosine_distance(position, positives))
    if "neg" in mode:
        negatives = _gather_rows(unsupervised, tf.logical_not(same), batch)
        loss += tf.reduce_mean(batch_cosine_distance(negatives, negatives))
    return loss
