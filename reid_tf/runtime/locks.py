"""The run-folder lock: one run at a time writes a run folder.

:class:`RunLock` takes an exclusive ``fcntl.flock`` on ``<folder>/.run.lock`` without waiting
and writes the holder's pid into it. A second run on the same folder stops at once with
:class:`~reid_tf.runtime.errors.RunFolderInUseError`. The kernel releases the lock when the
holder's process ends in any way (SIGKILL included), so a killed run leaves no stuck lock: the
file stays, unlocked, and the next run takes it.
"""
import os

from reid_tf.runtime.errors import RunFolderInUseError

LOCK_FILE_NAME = ".run.lock"

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None


class RunLock:
    """``RunLock(folder).acquire()``; :meth:`release` (or the process ending) frees it."""

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE_NAME)
        self._handle = None

    @property
    def held(self):
        return self._handle is not None

    def acquire(self):
        """Take the lock; raises :class:`RunFolderInUseError` naming the holder's pid."""
        if self.held or fcntl is None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderInUseError(
                f"{self.folder} is in use by another run (pid {holder}): two runs must not "
                "write the same run folder; wait for it to end, or choose another "
                "--output_folder_path.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self):
        if self._handle is not None:
            handle, self._handle = self._handle, None
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
