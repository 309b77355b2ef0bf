"""Fault injection for the fault tests: ``REID_TF_FAULT_INJECTION`` names faults that the
write and training paths trigger on purpose (a test sets it for a subprocess; unset, every
hook is a no-op).

The value is a comma-separated list of ``point[:argument][@number]``:

* ``checkpoint_write:ENOSPC`` (any ``errno`` name) — the checkpoint write raises
  ``OSError(ENOSPC)`` after TensorFlow wrote the checkpoint's files, before its manifest;
* ``kill_during_checkpoint`` — the process SIGKILLs itself in the middle of a checkpoint:
  its files are written, the data file cut to half its size, no manifest, no state;
* ``kill_at_step`` — SIGKILL after a training step.

``@number`` fires only at that checkpoint number (the completed epochs) or, for
``kill_at_step``, after that many steps of the run (counted from its first epoch, also
across a resume); without it the fault fires every time.
"""
import errno
import os
import signal

ENVIRONMENT_VARIABLE = "REID_TF_FAULT_INJECTION"
POINTS = ("checkpoint_write", "kill_during_checkpoint", "kill_at_step")


def _specs():
    text = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    specs = []
    for part in [part.strip() for part in text.split(",") if part.strip()]:
        head, _, number = part.partition("@")
        point, _, argument = head.partition(":")
        if point not in POINTS:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}={text!r}: unknown fault {point!r} "
                             f"(known: {', '.join(POINTS)}).")
        specs.append((point, argument, int(number) if number else None))
    return specs


def armed(point, number=None):
    """The argument of the fault ``point`` armed for ``number`` (``""`` when it has none), or
    ``None`` when it is not armed."""
    for name, argument, at in _specs():
        if name == point and (at is None or at == number):
            return argument
    return None


def kill_now():
    """SIGKILL this process (no cleanup, no ``finally``: as the kernel's OOM killer would)."""
    os.kill(os.getpid(), signal.SIGKILL)


def raise_os_error(point, number, path):
    """Raise the ``OSError`` of an armed ``point:ERRNO`` fault (e.g. ENOSPC) for ``path``."""
    argument = armed(point, number)
    if argument is None:
        return
    code = getattr(errno, argument or "EIO", None)
    if not isinstance(code, int):
        raise ValueError(f"{ENVIRONMENT_VARIABLE}: {point}:{argument}: not an errno name.")
    raise OSError(code, f"{os.strerror(code)} (injected by {ENVIRONMENT_VARIABLE})", path)


def kill_if_armed(point, number=None, before=None):
    """SIGKILL this process when ``point`` is armed for ``number``; ``before()`` runs first
    (e.g. to damage a file the way an interrupted write would)."""
    if armed(point, number) is None:
        return
    if before is not None:
        before()
    kill_now()
