"""The one engine of reid-tf: the epoch loop and the run-folder bookkeeping shared by training
(:class:`reid_tf.training.trainer.Trainer`) and the architecture search
(:class:`nas.searcher.Searcher`): a search is a training whose step is bilevel.

:class:`Engine` owns

* the run folder (:class:`RunFolder`): only the chief (``chief`` task, or worker 0, or the
  only process) writes it; the other workers of a multi-worker run write into a temporary
  folder removed at the end, and resume from the chief's checkpoint;
* the loop: phases of epochs (:class:`Phase`; FlipReID's frozen-backbone phase then the full
  one; one phase for a search), each epoch one pass over the subclass's batches through its
  traced step, with the stop on a non-finite loss (:class:`NonFiniteLossError`);
* the run-folder lock (``RUN/.run.lock``, :mod:`reid_tf.runtime.locks`): the chief holds it
  from :class:`RunFolder` until :meth:`RunFolder.close`, so a second run on the same folder
  stops at once (:class:`~reid_tf.runtime.errors.RunFolderInUseError`);
* the resumable checkpoint (``checkpoint/``): the subclass's objects plus the position
  (phase, epoch) and the state text of every resumable data source, saved after every epoch
  with a manifest of its files' sizes and SHA-256 (:mod:`reid_tf.training.checkpointing`);
  :meth:`Engine.restore` continues from the latest complete one, passing over a truncated or
  corrupted one with a log line (the workers of a multi-worker run must all resume from the
  same position);
* ``history.csv`` (one row per epoch, truncated to the restored position on resume; rewritten
  atomically, :mod:`reid_tf.runtime.files`) and TensorBoard scalars (``tensorboard/``);
* the per-replica step under a ``tf.distribute`` strategy (:func:`on_replicas`) and the
  refusal of ``jit_compile`` with one (:func:`check_jit_compile`).

A subclass provides the phases, the step and the row of an epoch through the hooks
``_make_train_step``, ``epoch_batches``, ``train_step``, ``begin_epoch``, ``epoch_row``,
``end_epoch`` and ``after_checkpoint`` (see each).
"""
import csv
import dataclasses
import math
import os
import shutil
import time

import tensorflow as tf

from reid_tf.runtime import distribute, faults
from reid_tf.runtime import files as atomic_files
from reid_tf.runtime.locks import LOCK_FILE_NAME, RunLock
from reid_tf.training.checkpointing import VerifiedCheckpoints
from reid_tf.training.timing import EpochTimer, timed_batches


class NonFiniteLossError(RuntimeError):
    """Raised when a step produced a NaN or infinite loss."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of epochs run with one traced step (its epochs count from 0)."""

    name: str
    epochs: int
    freeze_backbone: bool = False


def check_jit_compile(jit_compile, strategy):
    """Refuse ``--jit_compile`` under a distribution strategy (its collectives are not
    XLA-compiled)."""
    if jit_compile and distribute.is_distributed(strategy):
        raise ValueError("--jit_compile is not available with --strategy mirrored or "
                         "multi_worker (the distributed step's collective operations are not "
                         "XLA-compiled); drop one of the two flags.")


def on_replicas(strategy, step, reduction="mean"):
    """``step`` itself, or under a distribution strategy: ``step`` on every replica
    (``strategy.run``) with each returned value reduced over the replicas (``mean``: values
    equal on every replica or averaged; ``sum``: each replica returns its share)."""
    if not distribute.is_distributed(strategy):
        return step
    op = {"mean": tf.distribute.ReduceOp.MEAN, "sum": tf.distribute.ReduceOp.SUM}[reduction]

    def distributed_step(*args):
        values = strategy.run(step, args=args)
        return {name: strategy.reduce(op, value, axis=None) for name, value in values.items()}

    return distributed_step


class RunFolder:
    """Where a run writes (see the module docstring).

    Attributes:
      chief: the run folder itself (absolute).
      path: where this process writes: ``chief`` on the chief, a fresh temporary folder on
        the other workers.
      restore_path: where this process resumes from: ``chief``, or ``path`` when the run
        starts afresh (``overwrite``: the chief first empties the run folder).

    The chief takes the run folder's lock (``.run.lock``) before touching anything in it
    (also before ``overwrite`` empties it) and holds it until :meth:`close`; another run on
    the same folder raises :class:`~reid_tf.runtime.errors.RunFolderInUseError`.
    """

    def __init__(self, chief, strategy=None, overwrite=False):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = os.path.abspath(os.path.expanduser(chief))
        self.path = distribute.worker_output_folder(self.chief, self.strategy)
        self.lock = RunLock(self.chief) if self.path == self.chief else None
        self.acquire()
        if overwrite and self.path == self.chief:
            for entry in os.listdir(self.chief):
                if entry == LOCK_FILE_NAME:
                    continue
                entry = os.path.join(self.chief, entry)
                if os.path.isdir(entry) and not os.path.islink(entry):
                    shutil.rmtree(entry)
                else:
                    os.remove(entry)
        os.makedirs(self.path, exist_ok=True)
        self.restore_path = self.path if overwrite else self.chief

    @property
    def is_chief(self):
        return self.path == self.chief

    def acquire(self):
        """Take the run folder's lock again after :meth:`release` (chief only)."""
        if self.lock is not None:
            self.lock.acquire()

    def release(self):
        """Release the run folder's lock (the end of a run; the process ending does too)."""
        if self.lock is not None:
            self.lock.release()

    def close(self):
        """Release the lock; remove a non-chief worker's temporary folder."""
        self.release()
        distribute.remove_worker_output_folder(self.path, self.strategy)


class History:
    """``history.csv``: one row per epoch. With ``columns`` the header is fixed; otherwise a
    row with new columns rewrites the file with the union of the columns."""

    def __init__(self, path, columns=None):
        self.path = path
        self.columns = list(columns) if columns else None

    def _read(self):
        if not os.path.isfile(self.path):
            return [], []
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)

    def _write(self, header, rows):
        # The whole file, atomically: a kill never leaves half a row.
        with atomic_files.atomic_open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, restval="",
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row):
        header, rows = self._read()
        if not header:
            header = self.columns or list(row)
        elif self.columns is None and set(row) - set(header):
            # A new column (e.g. evaluation metrics): the union of the columns.
            header = header + [name for name in row if name not in header]
        self._write(header, rows + [row])

    def truncate(self, column, last):
        """Keep the rows whose ``column`` is at most ``last`` (a resumed run rewrites the
        epochs after its checkpoint)."""
        header, rows = self._read()
        if header:
            self._write(header, [row for row in rows if int(row[column]) <= last])


class Engine:
    """The epoch loop and run-folder bookkeeping (see the module docstring).

    Args:
      folder: the folder this process writes (:attr:`RunFolder.path`).
      phases: the :class:`Phase` list of the run.
      strategy: the ``tf.distribute`` strategy the models were built under (default: the
        current one).
      restore_folder: the folder whose checkpoint :meth:`restore` reads (default ``folder``;
        :attr:`RunFolder.restore_path`: a multi-worker run's non-chief workers resume from
        the chief's).
      jit_compile: XLA-compile the step (one device only).
      history_columns: a fixed header of ``history.csv`` (default: the rows' keys).
      position_column: the history column holding the completed epochs (``global_epoch``
        for training, ``epoch`` for a search); a resumed run truncates the history to it.
      log_file: a file name in the run folder that :meth:`log` also appends to.
      verbose: print progress (0: silent).
      checkpoint_max_to_keep: checkpoints kept.
    """

    def __init__(self, folder, phases, strategy=None, restore_folder=None, jit_compile=False,
                 history_columns=None, position_column="global_epoch", log_file=None,
                 verbose=1, checkpoint_max_to_keep=2):
        self.strategy = strategy or tf.distribute.get_strategy()
        check_jit_compile(jit_compile, self.strategy)
        self.distributed = distribute.is_distributed(self.strategy)
        self.replicas = distribute.num_replicas(self.strategy)
        self.jit_compile = bool(jit_compile)
        self.phases = list(phases)
        self.restore_folder = restore_folder or folder
        self.output_folder = folder
        os.makedirs(self.output_folder, exist_ok=True)
        self.history_path = os.path.join(self.output_folder, "history.csv")
        self.history = History(self.history_path, history_columns)
        self.position_column = position_column
        self.log_path = os.path.join(self.output_folder, log_file) if log_file else None
        self.verbose = verbose
        self.checkpoint_max_to_keep = checkpoint_max_to_keep
        self.summary_writer = tf.summary.create_file_writer(
            os.path.join(self.output_folder, "tensorboard"))
        self._position = tf.Variable([0, 0], dtype=tf.int64, trainable=False, name="position")
        self._state_sources = {}
        self.checkpoint = None
        self.checkpoint_manager = None
        self.last_epoch_timing = None

    # ------------------------------------------------------------------ checkpoint
    def track(self, objects, state_sources):
        """Build the checkpoint of ``objects`` (``{name: trackable}``) and of the state text
        of ``state_sources`` (``{name: object with get_state() / set_state(text)}``)."""
        self._state_sources = {name: (source, tf.Variable("", dtype=tf.string,
                                                          trainable=False, name=name))
                               for name, source in state_sources.items()}
        tracked = dict(objects, position=self._position)
        tracked.update({name: variable for name, (_, variable) in self._state_sources.items()})
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.checkpoint_manager = VerifiedCheckpoints(
            self.checkpoint, os.path.join(self.output_folder, "checkpoint"),
            max_to_keep=self.checkpoint_max_to_keep)

    def _global_epoch(self, phase_index, epoch):
        return sum(phase.epochs for phase in self.phases[:phase_index]) + epoch

    def save_checkpoint(self, phase_index, epoch):
        """Save the state after ``epoch`` completed epochs of phase ``phase_index`` (checkpoint
        number: the completed epochs of the run). Raises
        :class:`~reid_tf.runtime.errors.CheckpointWriteError` when it cannot be written."""
        self._position.assign([phase_index, epoch])
        for source, variable in self._state_sources.values():
            variable.assign(source.get_state())
        self.checkpoint_manager.save(self._global_epoch(phase_index, epoch))

    def restore(self):
        """Restore the latest complete checkpoint of ``restore_folder`` if there is one;
        returns the position ``(phase_index, epoch)`` to continue from. A truncated or
        corrupted checkpoint is logged and passed over for the previous one; raises
        :class:`~reid_tf.runtime.errors.CheckpointError` when none is complete."""
        directory = os.path.join(self.restore_folder, "checkpoint")
        latest = self.checkpoint_manager.restore_latest(directory, log=self.log)
        position = (0, 0)
        if latest is not None:
            for source, variable in self._state_sources.values():
                state = variable.numpy().decode()
                if state:
                    source.set_state(state)
            position = tuple(int(value) for value in self._position.numpy())
        task_type, _ = distribute.worker_task(self.strategy)
        if self.distributed and task_type is not None:
            # Every worker must resume at the same place (collectives would hang otherwise).
            encoded = float(position[0] * 1_000_000 + position[1])
            if float(distribute.mean_over_workers(self.strategy, encoded)) != encoded:
                raise RuntimeError(
                    f"The workers of this multi-worker run resume from different checkpoints "
                    f"(this one: phase {position[0]}, epoch {position[1]}; checkpoint folder "
                    f"{directory}). Put the run folder (--output_folder_path) on storage every "
                    "machine sees, or start afresh with --overwrite_output_folder.")
        return position

    # ------------------------------------------------------------------ logging
    def log(self, text):
        """Print ``text`` (when verbose) and append it to the log file if there is one."""
        if self.verbose:
            print(text, flush=True)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")

    def write_scalars(self, row, step):
        """The row's finite numbers as TensorBoard scalars at ``step`` (not the position)."""
        with self.summary_writer.as_default():
            for name, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and name not in ("epoch", self.position_column) \
                        and math.isfinite(value):
                    tf.summary.scalar(name, float(value), step=step)
        self.summary_writer.flush()

    def check_finite(self, values, names, where):
        """Raise :class:`NonFiniteLossError` when one of ``values[names]`` is NaN or inf."""
        for name in names:
            if name in values and not math.isfinite(values[name]):
                raise NonFiniteLossError(
                    f"Non-finite {name} ({values[name]}) at {where}; stopping. The last good "
                    f"checkpoint in {self.checkpoint_manager.directory} is kept.")

    def close(self):
        """Release the TensorBoard writer."""
        self.summary_writer.close()

    # ------------------------------------------------------------------ hooks
    def begin_fit(self, phase_index, epoch):
        """Called once before the loop with the position it starts from."""

    def begin_phase(self, phase):
        """Called before the first epoch run of ``phase`` (also when resuming inside it)."""

    def end_phase(self, phase):
        """Called after the last epoch of ``phase`` ran."""

    def _make_train_step(self):
        """The traced step of the phase about to run (called after :meth:`begin_phase`)."""
        raise NotImplementedError

    def begin_epoch(self, phase, epoch, global_epoch):
        """Before the epoch's steps (learning rates, logging)."""

    def epoch_batches(self, global_epoch):
        """The epoch's batches (per-replica values under a strategy)."""
        raise NotImplementedError

    def train_step(self, train_step, step_index, batch):
        """Run one step on ``batch``; returns ``{name: float}``. Raise
        :class:`NonFiniteLossError` (:meth:`check_finite`) on a non-finite loss."""
        raise NotImplementedError

    def epoch_row(self, phase, epoch, global_epoch, sums, count, seconds):
        """The history row of an epoch from the sums of its step values."""
        raise NotImplementedError

    def end_epoch(self, phase, epoch, row):
        """After the epoch's steps and before its checkpoint (evaluation); may add to
        ``row``."""

    def after_checkpoint(self, phase, epoch, row):
        """After the epoch's checkpoint and history row."""

    def end_fit(self, rows):
        """The value :meth:`fit` returns (default: the history rows written by this call)."""
        return rows

    # ------------------------------------------------------------------ the loop
    def fit(self):
        """Run (or continue, from the latest checkpoint) every phase; returns
        :meth:`end_fit`."""
        start_phase, start_epoch = self.restore()
        start_global = self._global_epoch(start_phase, start_epoch)
        if os.path.isfile(self.history_path):
            self.history.truncate(self.position_column, start_global)
        self.begin_fit(start_phase, start_epoch)
        rows = []
        global_epoch = start_global
        # Steps of the run so far (for the fault injection of the tests).
        self._steps_done = self._steps_before(start_global)
        for phase_index in range(start_phase, len(self.phases)):
            phase = self.phases[phase_index]
            first_epoch = start_epoch if phase_index == start_phase else 0
            if first_epoch >= phase.epochs:
                continue
            self.begin_phase(phase)
            train_step = self._make_train_step()
            for epoch in range(first_epoch, phase.epochs):
                rows.append(self._run_epoch(train_step, phase, phase_index, epoch,
                                            global_epoch))
                global_epoch += 1
            self.end_phase(phase)
        return self.end_fit(rows)

    def _steps_before(self, global_epoch):
        """Steps the run made in its first ``global_epoch`` epochs (from ``history.csv``)."""
        _, rows = self.history._read()  # noqa: SLF001
        return sum(int(row.get("steps") or 0) for row in rows
                   if int(row[self.position_column]) <= global_epoch)

    def _run_epoch(self, train_step, phase, phase_index, epoch, global_epoch):
        """One epoch: its steps, then :meth:`end_epoch`, the checkpoint, the history row, the
        TensorBoard scalars and :meth:`after_checkpoint`. Returns the row."""
        timer = EpochTimer()
        with timer.part("begin_epoch"):
            self.begin_epoch(phase, epoch, global_epoch)
        sums, count = {}, 0
        started = time.time()
        with timer.waiting():
            batches = self.epoch_batches(global_epoch)
        for step_index, (batch, images) in enumerate(timed_batches(batches, timer)):
            step_started = time.perf_counter()
            values = self.train_step(train_step, step_index, batch)
            timer.add_step(time.perf_counter() - step_started, images)
            self._steps_done += 1
            faults.kill_if_armed("kill_at_step", self._steps_done)
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
        row = self.epoch_row(phase, epoch, global_epoch, sums, count, time.time() - started)
        with timer.part("end_epoch"):
            self.end_epoch(phase, epoch, row)
        with timer.part("checkpoint"):
            self.save_checkpoint(phase_index, epoch + 1)
        with timer.part("history"):
            self.history.append(row)
        with timer.part("tensorboard"):
            self.write_scalars(row, global_epoch + 1)
        with timer.part("after_checkpoint"):
            self.after_checkpoint(phase, epoch, row)
        # Input / step / other split of the epoch (reid_tf.training.timing), and how often the
        # phase's traced step has been traced so far (a retrace per epoch would show here).
        tracing_count = getattr(train_step, "experimental_get_tracing_count", None)
        if tracing_count is not None:
            timer.step_traces = int(tracing_count())
        self.last_epoch_timing = timer.stop()
        timer.write(global_epoch + 1)
        return row
