"""--checkpoint_selection best: the record of the best evaluation, its files and its resume
(reid_tf.training.selection), on a two-layer model."""
import json
import math

import numpy as np
import pytest


def _models():
    import tf_keras as keras
    inputs = keras.Input((3,))
    features = keras.layers.Dense(4, name="embedding")(inputs)
    inference = keras.Model(inputs, features, name="inference")
    training = keras.Model(inputs, keras.layers.Dense(2, name="classifier")(features),
                           name="training")
    return training, inference


def _set(model, value):
    model.set_weights([np.full(w.shape, value, np.float32) for w in model.get_weights()])


def test_only_strict_improvements_are_kept_and_a_resumed_run_continues_from_them(tmp_path):
    from reid_tf.training.selection import STATE_FILE, BestCheckpoint
    training, inference = _models()
    messages = []
    best = BestCheckpoint(str(tmp_path), training, inference, log=messages.append)
    assert best.state is None and best.best_value == -math.inf
    _set(training, 1.0)
    assert best.consider({"mAP": 0.3, "rank1": 0.5, "cmc": [0.5, 0.6]}, phase="training_B",
                         epoch=2, global_epoch=4)
    _set(training, 2.0)
    assert not best.consider({"mAP": 0.3}, phase="training_B", epoch=3, global_epoch=5)
    assert not best.consider({"mAP": float("nan")}, phase="training_B", epoch=4, global_epoch=6)
    assert "did not improve on 0.300000" in messages[1] and "no finite mAP" in messages[2]
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state == {"metric": "mAP", "value": 0.3, "phase": "training_B", "epoch": 2,
                     "global_epoch": 4, "metrics": {"mAP": 0.3, "rank1": 0.5},
                     "files": ["training_model.h5", "inference_model.h5"]}
    assert not list(tmp_path.glob("*.tmp"))

    # A new run on the folder (resume) starts from the recorded best: a lower value is not kept.
    training_2, inference_2 = _models()
    _set(training_2, 3.0)
    resumed = BestCheckpoint(str(tmp_path), training_2, inference_2, log=messages.append)
    assert resumed.best_value == 0.3 and "best so far mAP 0.300000" in resumed.describe()
    assert not resumed.consider({"mAP": 0.25}, phase="training_B", epoch=5, global_epoch=7)
    # The best weights come back from training_model.h5 (this process kept none).
    resumed.restore_best_weights()
    assert all(np.all(w == 1.0) for w in training_2.get_weights())
    inference_2.load_weights(str(tmp_path / "inference_model.h5"))
    assert all(np.all(w == 1.0) for w in inference_2.get_weights())
    _set(training_2, 4.0)
    assert resumed.consider({"mAP": 0.31}, phase="training_B", epoch=6, global_epoch=8)
    _set(training_2, 5.0)
    resumed.restore_best_weights()  # from memory
    assert all(np.all(w == 4.0) for w in training_2.get_weights())
    assert json.loads((tmp_path / STATE_FILE).read_text())["global_epoch"] == 8


def test_bad_records_and_missing_best_are_clear_errors(tmp_path):
    from reid_tf.training.selection import STATE_FILE, BestCheckpoint
    training, inference = _models()
    with pytest.raises(RuntimeError, match="no evaluation of this run gave a finite mAP"):
        BestCheckpoint(str(tmp_path), training, inference).restore_best_weights()
    (tmp_path / STATE_FILE).write_text('{"metric": "mAP", "value": 0.2')
    with pytest.raises(ValueError, match=f"{STATE_FILE}: not a readable"):
        BestCheckpoint(str(tmp_path), training, inference)
    (tmp_path / STATE_FILE).write_text('{"metric": "rank1", "value": 0.2, "global_epoch": 1}')
    with pytest.raises(ValueError, match="selects by 'rank1', this run by 'mAP'"):
        BestCheckpoint(str(tmp_path), training, inference)
    (tmp_path / STATE_FILE).write_text(
        '{"metric": "mAP", "value": 0.2, "global_epoch": 1, "phase": "training_B", "epoch": 1}')
    with pytest.raises(FileNotFoundError, match="training_model.h5: the best checkpoint"):
        BestCheckpoint(str(tmp_path), training, inference).restore_best_weights()
