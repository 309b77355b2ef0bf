"""Importing reid_tf selects tf-keras, and refuses a TensorFlow already bound to Keras 3."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code):
    environment = {key: value for key, value in os.environ.items()
                   if key != "TF_USE_LEGACY_KERAS"}
    environment["PYTHONPATH"] = ROOT
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=300)


def test_import_selects_tf_keras():
    result = _python("import reid_tf, os, tensorflow as tf; "
                     "print(os.environ['TF_USE_LEGACY_KERAS'], "
                     "tf.keras.layers.Dense.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "tf_keras.src.layers.core.dense"]


def test_import_after_keras3_was_bound_raises_with_advice():
    result = _python("import tensorflow as tf; tf.keras.layers.Dense; import reid_tf")
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr and "Import reid_tf before" in result.stderr


def test_import_after_tensorflow_without_keras_use_is_fine():
    result = _python("import tensorflow as tf; import reid_tf; "
                     "print(tf.keras.layers.Dense.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tf_keras.src.layers.core.dense"
