"""The command lines' side of reid-tf: absl flag values in, the library's typed settings out.

``solution.py`` -> :mod:`reid_tf.cli.train`; flag values -> settings: :mod:`reid_tf.cli.settings`.
Nothing in the library imports this package.
"""
