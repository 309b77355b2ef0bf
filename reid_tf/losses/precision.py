"""The dtype the losses compute in: at least float32, float64 kept (parity checks run in it)."""
import tensorflow as tf


def at_least_float32(tensor):
    """``tensor`` as float32 when it is 16-bit (mixed precision) or an integer, else unchanged.

    float64 stays float64, so a model built with ``floatx`` float64 gets float64 losses and
    gradients (``benchmarks/parity_msinet.py --dtype float64``).
    """
    tensor = tf.convert_to_tensor(tensor)
    if tensor.dtype in (tf.float32, tf.float64):
        return tensor
    return tf.cast(tensor, tf.float32)
