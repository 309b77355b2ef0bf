"""Running a command line: absl flags, with every usage error printed as one line.

``run(main)`` is ``absl.app.run(main)`` where a bad flag (also one absl itself cannot parse), a
missing file or a badly laid-out dataset folder prints ``error: <message>`` on stderr and exits
with status 2, without a traceback. A traceback is for bugs, and for debugging: with
``--verbosity=1`` (or higher) the usage error is raised as usual.
"""
import sys

from absl import app, flags

from reid_tf.runtime.errors import UsageError

USAGE_ERRORS = (UsageError, flags.Error, app.UsageError, FileNotFoundError)
USAGE_EXIT_STATUS = 2


def fail(error):
    """Print ``error: <message>`` (one line) and exit with the usage status."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT_STATUS)


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(error)


def _debugging():
    try:
        return int(flags.FLAGS["verbosity"].value) >= 1
    except (KeyError, flags.UnparsedFlagAccessError, ValueError):
        return False


def run(main, argv=None):
    """``absl.app.run(main, argv)`` with usage errors as one line (module docstring)."""
    def guarded(arguments):
        try:
            return main(arguments)
        except USAGE_ERRORS as error:
            if _debugging():
                raise
            fail(error)

    app.run(guarded, argv=argv, flags_parser=_parse_flags)
