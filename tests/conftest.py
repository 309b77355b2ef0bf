"""Test configuration: tf-keras before TensorFlow, quiet logs, a shared synthetic dataset."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import reid_tf  # noqa: E402,F401  (selects tf-keras before TensorFlow is imported)
