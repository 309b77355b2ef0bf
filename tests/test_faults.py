"""Faults survived with nothing lost: verified checkpoints (manifest, fallback to the previous
complete one), the run-folder lock, write errors during a checkpoint, and SIGKILLed
``solution.py`` trainings and ``python -m nas.search`` searches that resume to the weights of
an uninterrupted run."""
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from reid_tf.runtime import faults
from reid_tf.runtime.errors import (CheckpointError, CheckpointWriteError, RunFolderInUseError,
                                    UsageError)
from reid_tf.runtime.locks import RunLock
from reid_tf.training.checkpointing import VerifiedCheckpoints, verify_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- checkpoints
class Store:
    """A variable of 1000 floats, its checkpoint and a log."""

    def __init__(self, folder, max_to_keep=2):
        self.variable = tf.Variable(np.zeros(1000, np.float32))
        self.checkpoint = tf.train.Checkpoint(value=self.variable)
        self.directory = os.path.join(folder, "checkpoint")
        self.manager = VerifiedCheckpoints(self.checkpoint, self.directory, max_to_keep)
        self.lines = []

    def save(self, number):
        self.variable.assign(np.full(1000, float(number), np.float32))
        return self.manager.save(number)

    def restore(self):
        self.variable.assign(np.zeros(1000, np.float32))
        return self.manager.restore_latest(log=self.lines.append)

    def file(self, number, kind):
        names = [name for name in os.listdir(self.directory)
                 if name.startswith(f"ckpt-{number}.{kind}")]
        assert len(names) == 1, names
        return os.path.join(self.directory, names[0])


def test_manifest_lists_every_checkpoint_file_with_size_and_sha256(tmp_path):
    store = Store(str(tmp_path))
    for number in (1, 2, 3):
        store.save(number)
    entries = sorted(os.listdir(store.directory))
    # Two kept (ckpt-1 pruned with its manifest), each .index + one data shard + manifest.
    assert entries == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                       "ckpt-2.manifest.json", "ckpt-3.data-00000-of-00001", "ckpt-3.index",
                       "ckpt-3.manifest.json"]
    with open(os.path.join(store.directory, "ckpt-3.manifest.json")) as handle:
        manifest = json.load(handle)
    assert sorted(manifest["files"]) == ["ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    for name, entry in manifest["files"].items():
        with open(os.path.join(store.directory, name), "rb") as handle:
            content = handle.read()
        assert entry == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert tf.train.latest_checkpoint(store.directory).endswith("ckpt-3")
    assert [os.path.basename(path) for path in store.manager.checkpoints] == ["ckpt-2", "ckpt-3"]
    assert store.restore().endswith("ckpt-3") and store.lines == []
    assert store.variable.numpy()[0] == 3.0


def _flip_byte(path):
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage, kind, said", [
    (_truncate, "data", "truncated"),
    (_flip_byte, "data", "corrupted"),
    (os.remove, "index", "missing file"),
    (os.remove, "manifest", "no manifest"),
])
def test_bad_latest_checkpoint_is_named_and_the_previous_one_loaded(tmp_path, damage, kind,
                                                                    said):
    store = Store(str(tmp_path))
    store.save(1)
    store.save(2)
    bad = store.file(2, kind)
    damage(bad)
    assert verify_checkpoint(os.path.join(store.directory, "ckpt-2")) is not None
    assert store.restore().endswith("ckpt-1")
    np.testing.assert_array_equal(store.variable.numpy(), np.ones(1000, np.float32))
    assert said in store.lines[0] and os.path.basename(bad if kind != "manifest" else
                                                       "ckpt-2.manifest.json") in store.lines[0]
    assert "Falling back to the previous complete checkpoint" in store.lines[1]
    assert store.lines[1].endswith("ckpt-1.")


def test_no_complete_checkpoint_left_is_a_checkpoint_error(tmp_path):
    store = Store(str(tmp_path))
    store.save(1)
    store.save(2)
    _flip_byte(store.file(1, "data"))
    _truncate(store.file(2, "index"))
    with pytest.raises(CheckpointError) as caught:
        store.restore()
    message = str(caught.value)
    assert "ckpt-1: corrupted file" in message and "ckpt-2: truncated" in message
    assert store.directory in message and "--overwrite_output_folder" in message
    assert isinstance(caught.value, UsageError)  # one line at the command lines
    np.testing.assert_array_equal(store.variable.numpy(), 0.0)  # nothing was loaded


def test_interrupted_first_save_is_no_checkpoint(tmp_path):
    """Files of a save killed before its manifest and state: the run starts afresh."""
    store = Store(str(tmp_path))
    store.checkpoint.write(os.path.join(store.directory, "ckpt-1"))
    assert store.restore() is None and store.lines == []


def test_full_disk_during_a_checkpoint_is_an_error_and_keeps_the_previous(tmp_path,
                                                                         monkeypatch):
    store = Store(str(tmp_path))
    store.save(1)
    before = sorted(os.listdir(store.directory))
    monkeypatch.setenv(faults.ENVIRONMENT_VARIABLE, "checkpoint_write:ENOSPC@2")
    with pytest.raises(CheckpointWriteError) as caught:
        store.save(2)
    message = str(caught.value)
    assert store.directory in message and os.strerror(errno.ENOSPC) in message
    assert "ckpt-1 is intact" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert sorted(os.listdir(store.directory)) == before  # the partial ckpt-2 was removed
    monkeypatch.delenv(faults.ENVIRONMENT_VARIABLE)
    assert store.restore().endswith("ckpt-1") and store.lines == []
    assert store.variable.numpy()[0] == 1.0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_during_a_checkpoint_keeps_the_previous(tmp_path):
    store = Store(str(tmp_path))
    store.save(1)
    os.chmod(store.directory, 0o555)
    try:
        with pytest.raises(CheckpointWriteError, match="Could not write checkpoint 2 in "
                                                       + store.directory):
            store.save(2)
    finally:
        os.chmod(store.directory, 0o755)
    assert store.restore().endswith("ckpt-1") and store.variable.numpy()[0] == 1.0


# ---------------------------------------------------------------------------- the lock
HOLD_LOCK = ("import sys, time\n"
             "from reid_tf.runtime.locks import RunLock\n"
             "lock = RunLock(sys.argv[1]).acquire()\n"
             "print('locked', flush=True)\n"
             "time.sleep(600)\n")


def _environment(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def test_second_process_on_a_locked_folder_stops_and_a_killed_holder_leaves_no_lock(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, folder], cwd=ROOT,
                              env=_environment(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUseError) as caught:
            RunLock(folder).acquire()
        assert str(caught.value).startswith(f"{folder} is in use by another run "
                                            f"(pid {holder.pid})")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(folder).acquire()  # the kernel released the killed holder's lock
    assert lock.held
    lock.release()
