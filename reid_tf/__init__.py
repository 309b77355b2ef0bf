"""reid-tf: object re-identification and ReID architecture search in TensorFlow/Keras.

Importing this package selects tf-keras (the Keras 2 API) for ``tf.keras`` by setting
``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported. tf2cv (the ResNet-family backbones)
only runs on tf-keras, and tf-keras trains these networks faster on CPU than Keras 3.
"""
import os
import sys

__version__ = "0.1.0"

_KERAS3_ERROR = (
    "reid_tf needs tf-keras (the Keras 2 API) behind tf.keras, but TensorFlow was already "
    "imported and tf.keras resolved to Keras {version}. Import reid_tf before anything that "
    "uses tf.keras, or set the environment variable TF_USE_LEGACY_KERAS=1 before starting "
    "Python (e.g. `TF_USE_LEGACY_KERAS=1 python ...`)."
)


def _select_tf_keras():
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return
    # tf.keras is a lazy loader until first use; it reads TF_USE_LEGACY_KERAS at that moment.
    keras_attr = tf.__dict__.get("keras")
    if keras_attr is None or type(keras_attr).__name__ == "KerasLazyLoader":
        return
    module_name = getattr(keras_attr, "__name__", "")
    if not module_name.startswith("tf_keras"):
        raise ImportError(_KERAS3_ERROR.format(version=getattr(keras_attr, "__version__", "3")))


_select_tf_keras()
