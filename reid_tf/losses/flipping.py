"""FlipReID's flipping loss: MSE between the embeddings of an image and of its mirror."""
import tensorflow as tf


def flipping_loss(original_embeddings, flipped_embeddings):
    """``sum_i mean_batch(mean_dims((f_i - g_i)^2))`` over the embedding lists."""
    total = 0.0
    for original, flipped in zip(original_embeddings, flipped_embeddings):
        total += tf.reduce_mean(tf.square(tf.cast(original, tf.float32)
                                          - tf.cast(flipped, tf.float32)))
    return total
