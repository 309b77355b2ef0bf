"""The process-wide set-up of a run: seeds, op determinism and the Keras mixed-precision policy.

``solution.py`` and ``python -m nas.search`` call :func:`configure` once, after the strategy
exists (a multi-worker strategy must be made before TensorFlow runs anything) and before any
model is built.
"""
import tensorflow as tf
import tf_keras as keras

from reid_tf.runtime.choices import MIXED_PRECISION_POLICIES


def configure(seed=0, deterministic=False, mixed_precision=""):
    """Seed Python, numpy and TensorFlow; enable deterministic ops; set the dtype policy."""
    if mixed_precision not in MIXED_PRECISION_POLICIES:
        raise ValueError(f"--mixed_precision={mixed_precision!r}: expected one of "
                         f"{', '.join(repr(name) for name in MIXED_PRECISION_POLICIES)}.")
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if mixed_precision:
        keras.mixed_precision.set_global_policy(mixed_precision)
