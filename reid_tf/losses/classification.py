"""Softmax cross-entropy with optional label smoothing (MSINet 0.1; FlipReID and CM-NAS 0)."""
import tensorflow as tf

from reid_tf.losses.precision import at_least_float32


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean over the batch of ``sum_k -t_k log softmax(z)_k`` with
    ``t = (1 - eps) onehot + eps / K`` (the MSINet CrossEntropyLabelSmooth form)."""
    logits = at_least_float32(logits)
    num_classes = tf.shape(logits)[-1]
    targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=logits.dtype)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / tf.cast(
            num_classes, logits.dtype)
    log_probabilities = tf.nn.log_softmax(logits, axis=-1)
    return tf.reduce_mean(-tf.reduce_sum(targets * log_probabilities, axis=-1))
