"""Shared test helpers: running solution.py's job in-process with parsed flags."""
from reid_tf.flags import FLAGS, define_flags


def parse_flags(*arguments):
    """Parse ``solution.py`` flags from scratch (every other flag at its default)."""
    define_flags()
    FLAGS.unparse_flags()
    FLAGS(["solution.py", *arguments])
    return FLAGS


def run_solution(*arguments):
    """Run solution.py's job in-process; returns the results dict of ``run``."""
    from reid_tf.training.run import run
    return run(parse_flags(*arguments))
