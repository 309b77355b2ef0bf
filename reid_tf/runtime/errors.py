"""Errors that are the user's to fix: a bad flag value, a missing or malformed file, a dataset
folder laid out wrongly. The command lines print them as one line (``error: ...``) without a
traceback (:mod:`reid_tf.cli.app`); every other exception is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input: the message names the flag, file or value and what is accepted."""
