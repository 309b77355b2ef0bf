"""The engine's per-epoch split of wall time into input / step / other (reid_tf.training.timing)."""
import json
import time

import numpy as np
import pytest

from reid_tf.training.engine import Engine, Phase
from reid_tf.training.timing import ENVIRONMENT_VARIABLE, EpochTimer, timed_batches

INPUT_WAIT, STEP_WAIT, OTHER_WAIT, STEPS = 0.06, 0.04, 0.25, 3


class _SleepyEngine(Engine):
    """Batches that take INPUT_WAIT to arrive, steps of STEP_WAIT, an end_epoch of OTHER_WAIT."""

    def _make_train_step(self):
        return lambda batch: time.sleep(STEP_WAIT)

    def epoch_batches(self, global_epoch):
        for _ in range(STEPS):
            time.sleep(INPUT_WAIT)
            yield np.zeros((5, 2), np.float32), np.zeros(5, np.int32)

    def train_step(self, train_step, step_index, batch):
        train_step(batch)
        return {"total": 1.0}

    def epoch_row(self, phase, epoch, global_epoch, sums, count, seconds):
        return {"global_epoch": global_epoch + 1, "steps": count}

    def end_epoch(self, phase, epoch, row):
        time.sleep(OTHER_WAIT)


def _fit(engine_class, tmp_path, epochs):
    """Fit a fresh ``engine_class`` for ``epochs`` epochs in ``tmp_path/run``; the engine."""
    engine = engine_class(str(tmp_path / "run"), [Phase("main", epochs)], verbose=0)
    engine.track({}, {})
    engine.fit()
    engine.close()
    return engine


def _records(record_path):
    return [json.loads(line) for line in record_path.read_text().splitlines()]


def test_epoch_split_is_written_per_epoch_and_adds_up(tmp_path, monkeypatch):
    record_path = tmp_path / "timing.jsonl"
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(record_path))
    engine = _fit(_SleepyEngine, tmp_path, 2)
    records = _records(record_path)
    assert [record["global_epoch"] for record in records] == [1, 2]
    for record in records:
        assert record["steps"] == STEPS and record["images"] == 5 * STEPS
        parts = record["input_seconds"] + record["step_seconds"] + record["other_seconds"]
        assert parts == pytest.approx(record["total_seconds"], abs=1e-9)
        # Sleeps are lower bounds; each part must hold its own sleeps and not the others'.
        assert STEPS * INPUT_WAIT <= record["input_seconds"] < STEPS * INPUT_WAIT + OTHER_WAIT
        assert STEPS * STEP_WAIT <= record["step_seconds"] < STEPS * STEP_WAIT + OTHER_WAIT
        assert record["other_seconds"] >= OTHER_WAIT
    assert engine.last_epoch_timing["steps"] == STEPS


def test_no_file_without_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    engine = _fit(_SleepyEngine, tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert engine.last_epoch_timing["images"] == 5 * STEPS


def test_timed_batches_counts_the_wait_for_the_end():
    def batches():
        yield (np.zeros((4, 1)),)
        time.sleep(0.05)

    timer = EpochTimer()
    assert [size for _, size in timed_batches(batches(), timer)] == [4]
    assert timer.input_seconds >= 0.05


def test_other_is_split_into_named_parts(tmp_path, monkeypatch):
    record_path = tmp_path / "timing.jsonl"
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(record_path))
    _fit(_SleepyEngine, tmp_path, 1)
    (record,) = _records(record_path)
    parts = record["parts"]
    assert set(parts) == {"begin_epoch", "end_epoch", "checkpoint", "history", "tensorboard",
                          "after_checkpoint"}
    # end_epoch sleeps OTHER_WAIT; the parts are inside "other" and (nearly) fill it.
    assert OTHER_WAIT <= parts["end_epoch"] < OTHER_WAIT + 0.2
    assert sum(parts.values()) <= record["other_seconds"] + 1e-9
    assert record["other_seconds"] - sum(parts.values()) < 0.05
    assert record["step_traces"] is None  # the step is a plain Python function


class _TracedEngine(_SleepyEngine):
    """The step is a tf.function; epochs 0 and 1 have batches of one shape, epoch 2 another
    (one more trace)."""

    def _make_train_step(self):
        import tensorflow as tf
        return tf.function(lambda images: tf.reduce_sum(images))

    def epoch_batches(self, global_epoch):
        for _ in range(STEPS):
            rows = 5 if global_epoch < 2 else 6
            yield np.full((rows, 2), global_epoch, np.float32), np.zeros(rows, np.int32)

    def train_step(self, train_step, step_index, batch):
        return {"total": float(train_step(batch[0]))}

    def end_epoch(self, phase, epoch, row):
        pass


def test_the_records_count_the_traces_of_the_step(tmp_path, monkeypatch):
    record_path = tmp_path / "timing.jsonl"
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(record_path))
    _fit(_TracedEngine, tmp_path, 3)
    records = _records(record_path)
    assert [record["step_traces"] for record in records] == [1, 1, 2]


def test_waiting_counts_as_input():
    timer = EpochTimer()
    with timer.waiting():
        time.sleep(0.05)
    with timer.part("x"):
        time.sleep(0.02)
    record = timer.stop()
    assert record["input_seconds"] >= 0.05 and record["parts"]["x"] >= 0.02
    assert record["other_seconds"] >= 0.02 and record["step_seconds"] == 0.0
