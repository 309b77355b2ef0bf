"""Where an epoch's wall time goes: waiting for input, the traced step, everything else.

:class:`EpochTimer` splits one epoch of :class:`reid_tf.training.engine.Engine` into

* ``input_seconds``: waiting for the next batch (``next()`` on the epoch's dataset iterator,
  including building the dataset (:meth:`EpochTimer.waiting`), its first batch and releasing
  the iterator at the end);
* ``step_seconds``: the calls of :meth:`Engine.train_step`: the traced step, reading its losses
  back to Python (which waits for the step to finish) and the per-step progress bar;
* ``other_seconds``: the rest of the epoch's wall time (``begin_epoch``, summing the losses,
  evaluation, the checkpoint, the history row, TensorBoard, ``after_checkpoint``).

``input + step + other == total`` by construction. The cost is a few ``time.perf_counter``
calls per step. ``other`` is further split into named ``parts`` (:meth:`EpochTimer.part`; the
engine times ``begin_epoch``, ``end_epoch`` (evaluation), ``checkpoint``, ``history``,
``tensorboard`` and ``after_checkpoint``); what no part covers (``other`` minus the parts) is
the loop's own per-step bookkeeping.

When the environment variable ``REID_TF_EPOCH_TIMING`` names a file, every epoch appends one
JSON line to it: ``{"global_epoch", "steps", "images", "total_seconds", "input_seconds",
"step_seconds", "other_seconds", "parts", "step_traces", "cpu_seconds"}`` (``parts``:
``{name: seconds}``; ``cpu_seconds``: the process's CPU time over the epoch, all threads;
``step_traces``: how many times the phase's traced step had been traced by the end of the
epoch, ``null`` when it is not a ``tf.function``; ``images``: ``steps x`` the batch's leading dimension, per
process).
"""
import contextlib
import json
import os
import time

ENVIRONMENT_VARIABLE = "REID_TF_EPOCH_TIMING"

__all__ = ["ENVIRONMENT_VARIABLE", "EpochTimer", "timed_batches"]


class EpochTimer:
    """Accumulates the three parts of one epoch (see the module docstring)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.input_seconds = 0.0
        self.step_seconds = 0.0
        self.steps = 0
        self.images = 0
        self.total_seconds = None
        self.cpu_seconds = None
        self.parts = {}
        self.step_traces = None

    def add_input(self, seconds):
        self.input_seconds += seconds

    def add_step(self, seconds, images=0):
        self.step_seconds += seconds
        self.steps += 1
        self.images += int(images)

    @contextlib.contextmanager
    def waiting(self):
        """Time the ``with`` block as waiting for input (e.g. building the epoch's dataset)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add_input(time.perf_counter() - started)

    @contextlib.contextmanager
    def part(self, name):
        """Time the ``with`` block as the named part of ``other`` (repeated names add up)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - started

    def stop(self):
        """Close the epoch; returns :meth:`as_dict`."""
        self.total_seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started
        return self.as_dict()

    def as_dict(self):
        total = self.total_seconds if self.total_seconds is not None \
            else time.perf_counter() - self.started
        return {"steps": self.steps, "images": self.images, "total_seconds": total,
                "input_seconds": self.input_seconds, "step_seconds": self.step_seconds,
                "other_seconds": max(total - self.input_seconds - self.step_seconds, 0.0),
                "parts": dict(self.parts), "step_traces": self.step_traces,
                "cpu_seconds": self.cpu_seconds if self.cpu_seconds is not None
                else time.process_time() - self.cpu_started}

    def write(self, global_epoch, path=None):
        """Append the epoch's JSON line to ``path`` (default: ``$REID_TF_EPOCH_TIMING``, nothing
        when unset)."""
        path = path or os.environ.get(ENVIRONMENT_VARIABLE)
        if not path:
            return
        record = {"global_epoch": int(global_epoch), **self.as_dict()}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _leading_dimension(batch):
    value = batch[0] if isinstance(batch, (tuple, list)) else batch
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) == 0 or shape[0] is None:
        return 0
    return int(shape[0])


_END = object()


def timed_batches(batches, timer):
    """Iterate ``batches``, adding the wait for each one (and for the end) to ``timer``."""
    started = time.perf_counter()
    iterator = iter(batches)
    timer.add_input(time.perf_counter() - started)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            batch = _END
        if batch is _END:
            # Releasing the exhausted iterator (a tf.data iterator's resources) is input too.
            # Outside the except block: its exception's traceback still refers to the
            # iterator, which would then be released later, untimed.
            del iterator
            timer.add_input(time.perf_counter() - started)
            return
        timer.add_input(time.perf_counter() - started)
        yield batch, _leading_dimension(batch)
