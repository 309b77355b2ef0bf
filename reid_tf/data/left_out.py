"""What a loader or sampler leaves out, said aloud: every such decision is logged (WARNING on
the ``reid_tf.data`` logger) and handed to the :func:`collect_left_out` collectors that are
open, so that a run can record it (``results.json``: ``left_out``).

A record is a dict: ``source`` (dataset or sampler), ``identities`` and ``images`` left out
(``None`` when not known), ``reason`` and ``changed_by`` (the flag that changes it, or ``""``
when nothing does).
"""
import contextlib
import logging

LOGGER = logging.getLogger("reid_tf.data")
_COLLECTORS = []


@contextlib.contextmanager
def collect_left_out():
    """``with collect_left_out() as records:`` gathers the records reported inside."""
    records = []
    _COLLECTORS.append(records)
    try:
        yield records
    finally:
        _COLLECTORS.remove(records)


def report_left_out(source, identities, images, reason, changed_by=""):
    """Log one left-out decision and hand it to the open collectors; returns the record."""
    record = {"source": str(source),
              "identities": None if identities is None else int(identities),
              "images": None if images is None else int(images),
              "reason": str(reason), "changed_by": str(changed_by)}
    counts = []
    if identities is not None:
        counts.append(f"{int(identities)} identities")
    if images is not None:
        counts.append(f"{int(images)} images")
    LOGGER.warning("%s: left out %s: %s%s", source, " and ".join(counts) or "entries", reason,
                   f" ({changed_by})" if changed_by else "")
    for records in _COLLECTORS:
        records.append(record)
    return record
