"""Errors that are the user's to fix: a bad flag value, a missing or malformed file, a dataset
folder laid out wrongly. The command lines print them as one line (``error: ...``) without a
traceback (:mod:`reid_tf.cli.app`); every other exception is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input: the message names the flag, file or value and what is accepted."""


class CheckpointError(UsageError):
    """No complete checkpoint to resume from: the message names the checkpoint folder, every
    bad file and what to do (remove the folder or start afresh)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, read-only folder): the message names the
    folder and the operating system's error; the previous checkpoint is left intact."""


class RunFolderInUseError(UsageError):
    """Another process holds the run folder's lock (``.run.lock``)."""
