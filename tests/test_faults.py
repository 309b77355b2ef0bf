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


@pytest.mark.parametrize("error", ["ENOSPC", "EACCES", "EROFS"])
def test_full_disk_during_a_checkpoint_is_an_error_and_keeps_the_previous(tmp_path,
                                                                         monkeypatch, error):
    """A full disk, and (as root, where chmod cannot make a folder unwritable) the errors of an
    unwritable or read-only folder, raised inside the checkpoint write."""
    store = Store(str(tmp_path))
    store.save(1)
    before = sorted(os.listdir(store.directory))
    monkeypatch.setenv(faults.ENVIRONMENT_VARIABLE, f"checkpoint_write:{error}@2")
    code = getattr(errno, error)
    with pytest.raises(CheckpointWriteError) as caught:
        store.save(2)
    message = str(caught.value)
    assert store.directory in message and os.strerror(code) in message
    assert "ckpt-1 is intact" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == code
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


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    from reid_tf.runtime import files
    path = str(tmp_path / "results.json")
    files.write_json(path, {"mAP": 0.5})
    os.chmod(path, 0o640)
    with pytest.raises(RuntimeError):
        with files.atomic_open(path) as handle:
            handle.write('{"mAP": 0.')
            raise RuntimeError("killed half way")
    assert json.loads(open(path).read()) == {"mAP": 0.5}
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left
    files.write_json(path, {"mAP": 0.7})
    assert json.loads(open(path).read()) == {"mAP": 0.7}
    assert os.stat(path).st_mode & 0o777 == 0o640  # the file keeps its mode


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


# ---------------------------------------------------------------------------- kill and resume
SYNTHETIC = "num_train_identities=10,num_test_identities=3,images_per_identity=6"
TRAINING_FLAGS = [
    "--dataset_name=Synthetic", "--backbone_model_name=msinet", "--image_height=64",
    "--image_width=32", "--identity_num_per_batch=4", "--image_num_per_identity=2",
    "--steps_per_epoch=2", "--epoch_num=3", "--freeze_backbone_for_N_epochs=0",
    "--deterministic", "--optimizer_name=sgd", "--learning_rate_mode=warmup_multistep",
    "--learning_rate_base=0.01", "--learning_rate_warmup_epochs=2",
    "--learning_rate_milestones=2", "--momentum=0.9", "--weight_decay=5e-4",
    "--testing_size=0", "--sampler_policy=msinet", "--augmentation_recipe=msinet",
    "--cache_images", "--workers=1"]
SEARCH_FLAGS = [
    "--dataset_name=Synthetic", "--image_height=64", "--image_width=32",
    "--identity_num_per_batch=2", "--image_num_per_identity=2", "--steps_per_epoch=2",
    "--epoch_num=2", "--workers=1", "--genotype_interval=5", "--evaluation_interval=0",
    "--search_warmup_epochs=1", "--clean_bilevel", "--deterministic", "--cache_images"]
TRAINING_STEPS, SEARCH_STEPS = 3 * 2, 2 * 2


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic_cache"))


def _command(kind, output, cache):
    options = f"--dataset_options=cache_folder_path={cache},{SYNTHETIC}"
    if kind == "training":
        return [sys.executable, "solution.py", *TRAINING_FLAGS, options,
                f"--output_folder_path={output}"]
    return [sys.executable, "-m", "nas.search", *SEARCH_FLAGS, options,
            f"--output_folder_path={output}"]


def _launch(kind, output, cache, fault=""):
    """Run the command line to its end (or its SIGKILL); returns the CompletedProcess."""
    environment = _environment(**{faults.ENVIRONMENT_VARIABLE: fault})
    return subprocess.run(_command(kind, output, cache), cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)


def _run_folder(kind, output):
    return os.path.join(output, "Synthetic_msinet" if kind == "training" else "Synthetic_search")


def _final_state(kind, output):
    """Every tensor of the final checkpoint (weights, optimiser slots, the data sources'
    state text; search: α and the memories) but the save counter, and for training the
    weights of training_model.h5."""
    folder = _run_folder(kind, output)
    reader = tf.train.load_checkpoint(os.path.join(folder, "checkpoint"))
    state = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if not name.startswith("save_counter")}
    if kind == "training":
        import h5py
        with h5py.File(os.path.join(folder, "training_model.h5"), "r") as handle:
            handle.visititems(lambda name, item: state.__setitem__("h5/" + name, item[()])
                              if hasattr(item, "shape") else None)
    return state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_cache):
    """One uninterrupted run of each command line (the baselines of every kill below)."""
    runs = {}
    for kind in ("training", "search"):
        output = str(tmp_path_factory.mktemp(f"straight_{kind}"))
        completed = _launch(kind, output, synthetic_cache)
        assert completed.returncode == 0, completed.stderr[-3000:]
        runs[kind] = _final_state(kind, output)
    return runs


@pytest.mark.parametrize("kind, steps", [("training", TRAINING_STEPS),
                                         ("search", SEARCH_STEPS)])
def test_killed_at_a_random_step_then_during_a_checkpoint_resumes_to_the_same_weights(
        kind, steps, uninterrupted, synthetic_cache, tmp_path):
    output = str(tmp_path)
    folder = _run_folder(kind, output)
    # Seeded: any step of the first two epochs (checkpoint 2 is then still to be written).
    step = random.Random(f"{kind}-11").randint(1, 4)
    killed = _launch(kind, output, synthetic_cache, f"kill_at_step@{step}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    directory = os.path.join(folder, "checkpoint")
    if kind == "training":
        # The disk fills up while checkpoint 2 is written: one line, ckpt-1 kept intact.
        full = _launch(kind, output, synthetic_cache, "checkpoint_write:ENOSPC@2")
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
        line = [line for line in full.stderr.splitlines() if line.startswith("error: ")][-1]
        assert line.startswith(f"error: Could not write checkpoint 2 in {directory}: "
                               f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}")
        assert "The previous checkpoint ckpt-1 is intact" in line
        assert sorted(os.listdir(directory)) == ["checkpoint", "ckpt-1.data-00000-of-00001",
                                                 "ckpt-1.index", "ckpt-1.manifest.json"]

    # The same command resumes, and is killed again in the middle of writing checkpoint 2.
    killed = _launch(kind, output, synthetic_cache, "kill_during_checkpoint@2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(directory, "ckpt-2.manifest.json"))
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-1")  # still the complete one
    assert any(name.startswith("ckpt-2.data") for name in os.listdir(directory))  # the half

    resumed = _launch(kind, output, synthetic_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = ("Resuming from checkpoint: phase 0, epoch 1." if kind == "training"
            else "Resuming the search from its checkpoint after epoch 1.")
    assert said in resumed.stdout
    state = _final_state(kind, output)
    expected = uninterrupted[kind]
    assert state.keys() == expected.keys() and len(state) > 50
    for name, value in expected.items():
        if isinstance(value, bytes):  # the samplers' state text
            assert state[name] == value, name
        else:
            np.testing.assert_array_equal(state[name], value, err_msg=name)
    history = os.path.join(folder, "history.csv")
    with open(history) as handle:
        epochs = [line.split(",") for line in handle.read().splitlines()[1:]]
    assert len(epochs) == steps // 2  # one row per epoch, none twice, none lost


@pytest.mark.parametrize("kind", ["training", "search"])
def test_second_run_on_the_same_folder_stops_at_once(kind, synthetic_cache, tmp_path):
    folder = _run_folder(kind, str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, folder], cwd=ROOT,
                              env=_environment(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.time()
        second = _launch(kind, str(tmp_path), synthetic_cache)
        seconds = time.time() - started
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: {folder} is in use by another run (pid {holder.pid}): two "
                         "runs must not write the same run folder; wait for it to end, or "
                         "choose another --output_folder_path.")
    assert not os.path.exists(os.path.join(folder, "checkpoint"))  # nothing written
    assert seconds < 60, seconds
