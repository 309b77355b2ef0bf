"""Verified checkpoints (``RUN/checkpoint/``), written by :class:`VerifiedCheckpoints` for the
engine (:mod:`reid_tf.training.engine`).

Saving checkpoint N (the completed epochs):

1. TensorFlow writes ``ckpt-N.index`` and ``ckpt-N.data-*`` (``tf.train.Checkpoint.write``);
2. both are synced to disk and ``ckpt-N.manifest.json`` is written atomically
   (:mod:`reid_tf.runtime.files`) with the size and SHA-256 of every file of the checkpoint;
3. the state file ``checkpoint`` (TensorFlow's format: ``tf.train.latest_checkpoint`` reads
   it) is rewritten atomically to point to ckpt-N and the kept checkpoints;
4. the older checkpoints beyond ``max_to_keep`` (and the leftovers of an interrupted save) are
   deleted.

A run killed at any point thus leaves the state file naming complete checkpoints only. A
failed write (full disk, read-only folder) raises
:class:`~reid_tf.runtime.errors.CheckpointWriteError` naming the folder and the OS error; the
partial files are removed and the previous checkpoint is untouched.

Restoring verifies the latest checkpoint against its manifest (every file present, of its
size and SHA-256) before loading anything: a truncated, corrupted or incomplete one is logged
with the bad file and the previous complete one is loaded instead; when none is left a
:class:`~reid_tf.runtime.errors.CheckpointError` names every bad file. Half a state is never
loaded.
"""
import contextlib
import os
import re
import shutil

import tensorflow as tf

from reid_tf.runtime import faults, files
from reid_tf.runtime.errors import CheckpointError, CheckpointWriteError

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
STATE_FILE_NAME = "checkpoint"
_ENTRY = re.compile(r"^ckpt-(\d+)(?:\.|_temp)")
_MANIFEST = re.compile(r"^ckpt-(\d+)" + re.escape(MANIFEST_SUFFIX) + "$")


def _prefix(directory, number):
    return os.path.join(directory, f"ckpt-{number}")


def _number(prefix):
    return int(os.path.basename(prefix).rsplit("-", 1)[1])


def checkpoint_files(prefix):
    """The file names (in the checkpoint folder) of the checkpoint ``prefix`` written by
    TensorFlow: its ``.index`` and ``.data-*`` files."""
    directory, name = os.path.split(prefix)
    if not os.path.isdir(directory):
        return []
    return sorted(entry for entry in os.listdir(directory)
                  if entry == f"{name}.index" or entry.startswith(f"{name}.data-"))


def manifest_path(prefix):
    return prefix + MANIFEST_SUFFIX


def verify_checkpoint(prefix):
    """``None`` when the checkpoint ``prefix`` is complete (its manifest lists every file with
    the size and SHA-256 found on disk); otherwise the reason, naming the bad file."""
    import json
    path = manifest_path(prefix)
    if not os.path.isfile(path):
        return (f"no manifest {os.path.basename(path)} (its save was interrupted, or it was "
                "written by a reid-tf without manifests)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        listed = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable manifest {path}: {error}"
    if not any(name.endswith(".index") for name in listed):
        return f"manifest {path} lists no .index file"
    directory = os.path.dirname(prefix)
    for name, expected in sorted(listed.items()):
        file_path = os.path.join(directory, name)
        if not os.path.isfile(file_path):
            return f"missing file {file_path}"
        size, digest = files.file_digest(file_path)
        if size != expected["size"]:
            return (f"truncated or overwritten file {file_path} ({size} bytes, the manifest "
                    f"says {expected['size']})")
        if digest != expected["sha256"]:
            return f"corrupted file {file_path} (SHA-256 differs from the manifest)"
    return None


def _read_state(directory):
    """The checkpoint prefixes the state file names, oldest first (the latest last), or
    ``None`` without a readable state file."""
    if not os.path.isfile(os.path.join(directory, STATE_FILE_NAME)):
        return None
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError, UnicodeDecodeError) as error:
        print(f"Unreadable checkpoint state file in {directory} ({error}); using the "
              "manifests instead.", flush=True)
        return None
    if state is None or not state.model_checkpoint_path:
        return None

    def absolute(path):
        return path if os.path.isabs(path) else os.path.join(directory, path)

    latest = absolute(state.model_checkpoint_path)
    others = [absolute(path) for path in state.all_model_checkpoint_paths]
    return [path for path in others if path != latest] + [latest]


def _manifested(directory):
    if not os.path.isdir(directory):
        return []
    numbers = sorted(int(match.group(1)) for match in map(_MANIFEST.match, os.listdir(directory))
                     if match)
    return [_prefix(directory, number) for number in numbers]


class VerifiedCheckpoints:
    """The checkpoints of ``checkpoint`` (a ``tf.train.Checkpoint``) in ``directory``, the
    last ``max_to_keep`` kept (module docstring)."""

    def __init__(self, checkpoint, directory, max_to_keep=2):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep}: keep at least one checkpoint.")
        self.checkpoint = checkpoint
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep

    @property
    def checkpoints(self):
        """The kept checkpoints' prefixes, oldest first (as the state file lists them)."""
        return _read_state(self.directory) or []

    @property
    def latest_checkpoint(self):
        kept = self.checkpoints
        return kept[-1] if kept else None

    # ------------------------------------------------------------------ saving
    def save(self, number):
        """Write checkpoint ``number``; returns its prefix. Raises
        :class:`CheckpointWriteError` when it cannot be written (the previous one is kept)."""
        prefix = _prefix(self.directory, number)
        kept = [path for path in self.checkpoints if _number(path) != number]
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._remove(number)  # leftovers of an interrupted save of the same number
            # Written with the checkpoint (as tf.train.Checkpoint.save does), so that
            # restore() finds every object it creates.
            self.checkpoint.save_counter.assign(number)
            self.checkpoint.write(prefix)
            names = checkpoint_files(prefix)
            faults.kill_if_armed("kill_during_checkpoint", number,
                                 before=lambda: self._damage(prefix, names))
            faults.raise_os_error("checkpoint_write", number, prefix)
            manifest = {"version": MANIFEST_VERSION, "checkpoint": os.path.basename(prefix),
                        "files": {}}
            for name in names:
                path = os.path.join(self.directory, name)
                files.fsync_file(path)
                size, digest = files.file_digest(path)
                manifest["files"][name] = {"size": size, "sha256": digest}
            files.fsync_directory(self.directory)
            files.write_json(manifest_path(prefix), manifest, indent=1, sort_keys=True)
            kept = (kept + [prefix])[-self.max_to_keep:] if self.max_to_keep else kept + [prefix]
            self._write_state(kept)
        except (OSError, tf.errors.OpError) as error:
            with contextlib.suppress(OSError, tf.errors.OpError):
                self._remove(number)
            previous = kept[-1] if kept else None
            reason = getattr(error, "message", None) or str(error)
            raise CheckpointWriteError(
                f"Could not write checkpoint {number} in {self.directory}: {reason}. "
                + (f"The previous checkpoint {os.path.basename(previous)} is intact; free "
                   "space or make the folder writable and run the same command again to "
                   "resume from it." if previous else
                   "No checkpoint was kept; free space or make the folder writable.")) from error
        for entry in os.listdir(self.directory):
            match = _ENTRY.match(entry)
            if match and int(match.group(1)) not in {_number(path) for path in kept}:
                self._remove_entry(entry)
        return prefix

    def _damage(self, prefix, names):
        """For ``kill_during_checkpoint``: cut the data file to half, as an interrupted write
        leaves it."""
        for name in names:
            if ".data-" in name:
                path = os.path.join(self.directory, name)
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)

    def _write_state(self, kept):
        names = [os.path.basename(path) for path in kept]
        lines = [f'model_checkpoint_path: "{names[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
        files.write_text(os.path.join(self.directory, STATE_FILE_NAME), "\n".join(lines) + "\n")

    def _remove(self, number):
        for entry in os.listdir(self.directory):
            match = _ENTRY.match(entry)
            if match and int(match.group(1)) == number:
                self._remove_entry(entry)

    def _remove_entry(self, entry):
        path = os.path.join(self.directory, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    # ------------------------------------------------------------------ restoring
    def restore_latest(self, directory=None, log=print):
        """Load the latest complete checkpoint of ``directory`` (default: this one's); returns
        its prefix, or ``None`` when there is no checkpoint. ``log(text)`` reports every
        checkpoint passed over. Raises :class:`CheckpointError` when checkpoints exist but
        none is complete."""
        directory = os.path.abspath(directory or self.directory)
        candidates = _read_state(directory)
        if candidates is None:
            candidates = _manifested(directory)
        problems = []
        for prefix in reversed(candidates):
            problem = verify_checkpoint(prefix)
            if problem is not None:
                problems.append(f"{os.path.basename(prefix)}: {problem}")
                log(f"Checkpoint {prefix} is not usable: {problem}.")
                continue
            if problems:
                log(f"Falling back to the previous complete checkpoint {prefix}.")
            self.checkpoint.restore(prefix).assert_existing_objects_matched()
            return prefix
        if problems:
            raise CheckpointError(
                f"No complete checkpoint to resume from in {directory}: "
                + "; ".join(problems) + ". Remove that folder (or start afresh with "
                "--overwrite_output_folder) to train from the start.")
        return None
