"""TCM: the twins split (msinet.md §6.1, §14.21-22) and ClusterMemory (§6.2, §14.18-19)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from nas.tcm import ClusterMemory, separate_trainval


def _training_table(num_identities, seed=0):
    """A shuffled training table: raw ids 1000 + 3 * pid, 1..7 images per identity."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(num_identities):
        for image in range(int(rng.integers(1, 8))):
            rows.append({"image_file_path": f"img_{pid:04d}_{image}.jpg",
                         "identity_ID": 1000 + 3 * pid, "camera_ID": image % 6 + 1,
                         "modality": "visible", "split": "train"})
    table = pd.DataFrame(rows)
    # Dataset order interleaves identities: the "first half" is by table order, not file name.
    return table.iloc[rng.permutation(len(table))].reset_index(drop=True)


def test_market_sized_split_classes_labels_and_twins():
    table = _training_table(751)
    split = separate_trainval(table)
    assert (split.q, split.num_train_classes, split.num_valid_classes) == (150, 450, 601)
    pid_of = {1000 + 3 * pid: pid for pid in range(751)}

    # Independent expectation: walk the table in order, counting images per identity.
    counts = table["identity_ID"].map(pid_of).value_counts().to_dict()
    seen = {}
    expected_train, expected_valid = [], []
    for path, identity in zip(table["image_file_path"], table["identity_ID"]):
        pid = pid_of[identity]
        rank = seen.get(pid, 0)
        seen[pid] = rank + 1
        if pid < 150 or (pid < 450 and rank < counts[pid] // 2):
            expected_train.append((path, pid))
        else:
            expected_valid.append((path, pid - 150))
    assert list(zip(split.train["image_file_path"], split.train["label"])) == expected_train
    assert list(zip(split.valid["image_file_path"], split.valid["label"])) == expected_valid

    train_pids = set(split.train["pid"])
    valid_pids = set(split.valid["pid"])
    assert train_pids <= set(range(450)) and set(range(150)) <= train_pids
    assert valid_pids <= set(range(150, 751)) and set(range(450, 751)) <= valid_pids
    assert set(split.train["label"]) <= set(range(450))
    assert split.valid["label"].min() >= 0 and split.valid["label"].max() <= 600
    assert (split.valid["label"] == split.valid["pid"] - 150).all()
    assert (split.train["label"] == split.train["pid"]).all()
    # Twins: first n // 2 images to train, the rest to valid.
    for pid in (150, 300, 449):
        n = counts[pid]
        assert (split.train["pid"] == pid).sum() == n // 2
        assert (split.valid["pid"] == pid).sum() == n - n // 2
    # Disjoint images whose union is the whole training set.
    train_paths, valid_paths = set(split.train["image_file_path"]), \
        set(split.valid["image_file_path"])
    assert not train_paths & valid_paths
    assert train_paths | valid_paths == set(table["image_file_path"])
    assert len(split.train) + len(split.valid) == len(table)
    # Label maps for the pipeline: raw identity -> subset label.
    assert split.train_label_map[1000 + 3 * 7] == 7
    assert split.valid_label_map[1000 + 3 * 700] == 550
    assert split.valid_label_map[1000 + 3 * 200] == 50 and split.train_label_map[1000 + 600] == 200


def test_msmt_sized_split_and_errors():
    split = separate_trainval(_training_table(1041, seed=1))
    assert (split.q, split.num_train_classes, split.num_valid_classes) == (208, 624, 833)
    assert split.valid["label"].max() == 832 and split.train["label"].max() == 623
    with pytest.raises(ValueError, match="at least 5 training identities"):
        separate_trainval(_training_table(4))
    with pytest.raises(ValueError, match="identity_ID"):
        separate_trainval(pd.DataFrame({"image_file_path": ["a.jpg"]}))


# ------------------------------------------------------------------------------------------
# ClusterMemory
# ------------------------------------------------------------------------------------------
def _numpy_update(memory, features, labels, momentum=0.2):
    memory = memory.astype(np.float64).copy()
    normalized = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    for x, y in zip(normalized, labels):
        memory[y] = momentum * memory[y] + (1 - momentum) * x
        memory[y] = memory[y] / np.linalg.norm(memory[y])
    return memory


def test_fresh_memory_loss_is_log_k_and_gradient_reaches_features_only():
    memory = ClusterMemory(8, 7, name="fresh")
    features = tf.constant(np.random.default_rng(0).normal(size=(5, 8)), tf.float32)
    loss, normalized = memory.loss(features, tf.constant([0, 1, 1, 6, 3]))
    assert float(loss) == pytest.approx(math.log(7), abs=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normalized.numpy(), axis=1), 1.0, atol=1e-6)

    rng = np.random.default_rng(1)
    slots = rng.normal(size=(7, 8))
    slots /= np.linalg.norm(slots, axis=1, keepdims=True)
    memory.features.assign(slots.astype(np.float32))
    labels = np.array([2, 0, 2, 5, 6])
    raw = rng.normal(size=(5, 8))
    x = tf.Variable(raw, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        loss, _ = memory.loss(x, labels)
    assert tape.gradient(loss, memory.features) is None

    # numpy: loss and the gradient with respect to the raw features (through the normalisation)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    unit = raw / norms
    logits = unit @ slots.T / 0.05
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    expected_loss = -np.mean(np.log(probabilities[np.arange(5), labels]))
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    one_hot = np.eye(7)[labels]
    grad_unit = (probabilities - one_hot) @ slots / 0.05 / 5
    grad_raw = (grad_unit - unit * np.sum(grad_unit * unit, axis=1, keepdims=True)) / norms
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), grad_raw, rtol=1e-4, atol=1e-6)


def test_sequential_update_matches_numpy_with_repeated_labels():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(8, 6)).astype(np.float32)
    labels = np.array([3, 3, 3, 3, 0, 0, 5, 3])  # PK-like runs and a late repeat
    memory = ClusterMemory(6, 9, name="sequential")
    _, normalized = memory.loss(features, labels)
    memory.update(normalized, labels)
    expected = _numpy_update(np.zeros((9, 6)), features, labels)
    updated = memory.features.numpy()
    np.testing.assert_allclose(updated, expected, atol=2e-6)
    touched = sorted(set(labels.tolist()))
    np.testing.assert_allclose(np.linalg.norm(updated[touched], axis=1), 1.0, atol=1e-6)
    untouched = [row for row in range(9) if row not in touched]
    assert not updated[untouched].any()
    # A vectorised (one-shot) update would differ: slot 3 sees 5 sequential updates.
    one_shot = 0.2 * 0 + 0.8 * features[labels == 3].mean(axis=0)
    assert not np.allclose(updated[3], one_shot / np.linalg.norm(one_shot), atol=1e-3)

    # Second round from a non-zero state, inside a tf.function (graph while loop).
    more = rng.normal(size=(4, 6)).astype(np.float32)
    more_labels = np.array([0, 0, 8, 3])

    @tf.function
    def step(x, y):
        _, unit = memory.loss(x, y)
        memory.update(unit, y)

    step(tf.constant(more), tf.constant(more_labels))
    np.testing.assert_allclose(memory.features.numpy(),
                               _numpy_update(expected, more, more_labels), atol=2e-6)


def test_memory_arguments_are_checked():
    with pytest.raises(ValueError, match="num_slots"):
        ClusterMemory(512, 0)
    with pytest.raises(ValueError, match="temperature"):
        ClusterMemory(512, 3, temperature=0.0)
