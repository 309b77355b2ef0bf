"""The command lines' side of reid-tf: absl flag values in, the library's typed settings out.

``solution.py`` -> :mod:`reid_tf.cli.train`; flag values -> settings: :mod:`reid_tf.cli.settings`;
their checks: :mod:`reid_tf.cli.validation`; running a command line: :mod:`reid_tf.cli.app`;
``python -m reid_tf.report`` -> :mod:`reid_tf.cli.report`. Nothing in the library imports this
package.
"""
