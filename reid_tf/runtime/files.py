"""Files written whole or not at all: every file a run rewrites (``history.csv``, weight
files, JSON results, checkpoint manifests) goes to a temporary file in the same folder, is
flushed to disk (``fsync``) and then renamed over its name (``os.replace``, atomic on POSIX), so
that a run killed at any moment leaves either the previous version or the new one, never half
a file.
"""
import contextlib
import hashlib
import json
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# New files get the mode open() would give them (mkstemp's are private: 0600).
_NEW_FILE_MODE = 0o666 & ~_umask()


def fsync_directory(folder):
    """Flush ``folder``'s entries (a rename inside it) to disk; a no-op where directories
    cannot be opened (not POSIX)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fsync_file(path):
    """Flush a file written by someone else (e.g. TensorFlow's checkpoint writer) to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same folder, same extension, so writers that
    choose the format by extension, like Keras' ``save_weights``, keep working); when the
    block ends without an exception the file is synced and renamed to ``path``, otherwise
    removed."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    extension = os.path.splitext(name)[1]
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{extension}",
                                             dir=folder)
    os.close(descriptor)
    try:
        os.chmod(temporary, os.stat(path).st_mode & 0o7777 if os.path.exists(path)
                 else _NEW_FILE_MODE)
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    fsync_directory(folder)


@contextlib.contextmanager
def atomic_open(path, mode="w", **options):
    """``open`` for writing whose content replaces ``path`` only when the block succeeds."""
    with atomic_path(path) as temporary:
        with open(temporary, mode, **options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_text(path, text, encoding="utf-8"):
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)


def write_json(path, value, **options):
    """``json.dump(value)`` into ``path`` atomically (``options``: ``json.dump``'s)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, **options)


def file_digest(path, chunk_size=1 << 20):
    """``(size in bytes, SHA-256 hex digest)`` of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(chunk_size)
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()
