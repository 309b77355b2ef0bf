"""CM-NAS's BN-split search (``nas.spaces.bn_split``, cmnas.md §11.2): the mixed layer, the data split,
the objective, the grouped weight optimiser, derivation, a short search on a tiny synthetic
SYSU-MM01 set with the ResNet-50 supernet (outputs, warm-up, step isolation, exact resume), the
MSINet supernet, training the searched config through ``reid_tf.cli.train.run`` and the
flagfiles.

Tracing and instantiating the ResNet-50 steps costs minutes on two CPU cores, so this module
runs the ``tf.function`` s eagerly (same operations, same order); that the search's step
functions are each traced once is checked on a tiny search space instead."""
import reid_tf  # noqa: F401  (selects tf-keras)

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nas.spaces.bn_split import BnSplitSearchSpace, bn_split_objective
from nas.spaces.bn_split_data import split_official_val, split_per_identity_half, sysu_split_file
from nas.spaces.bn_split_optimizer import GroupedWeightOptimizer
from nas.config import SearchConfig
from nas.searcher import Searcher
from nas.spaces.base import SearchSpace
from reid_tf.data import load_dataset
from reid_tf.data.sysu_mm01 import read_id_file
from reid_tf.losses.cmnas import cmnas_total_loss
from reid_tf.models import cmnas, msinet, msinet_switchable
from reid_tf.models.cmnas_config import derive_config, read_config
from reid_tf.models.switchable_bn import SwitchableBatchNormalization

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHT, WIDTH = 64, 32
SIZES = {
    "Synthetic_SYSU": dict(num_train_identities=6, num_val_identities=2, num_test_identities=4,
                           images_per_camera=2, image_size=(HEIGHT, WIDTH)),
    "Synthetic_RegDB": dict(num_identities=8, images_per_identity=3, image_size=(HEIGHT, WIDTH)),
}
LEARNING_RATE = 0.01
EMA_DECAY = 0.9


@pytest.fixture(scope="module", autouse=True)
def eager_functions():
    """Run tf.functions eagerly in this module (see the module docstring); restored after."""
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    from tensorflow.python.framework import config as tf_config
    tf_config.disable_op_determinism()
    tf.config.run_functions_eagerly(previous)


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic_cache"))


def dataset_options(name, cache_folder):
    return dict(cache_folder_path=cache_folder, **SIZES[name]) if name in SIZES else {}


def load_tiny(name, cache_folder):
    return load_dataset(name, "", **dataset_options(name, cache_folder))


def make_config(cache_folder, folder, dataset_name="Synthetic_SYSU", **overrides):
    values = dict(dataset_name=dataset_name,
                  dataset_options=dataset_options(dataset_name, cache_folder),
                  image_height=HEIGHT, image_width=WIDTH, identity_num_per_batch=2,
                  image_num_per_identity=2, steps_per_epoch=1, epoch_num=2,
                  run_folder_path=folder, workers=1, test_batch_size=64, verbose=0,
                  learning_rate=LEARNING_RATE)
    values.update(overrides)
    return SearchConfig.for_space("bn_split", **values)


def numpy_state(searcher):
    """Every value a resumed search must restore: network (weights, α, BN statistics), both
    optimisers and the EMA shadow."""
    space = searcher.space
    variables = (space.weights_model.weights + searcher.weight_optimizer.variables
                 + searcher.arch_optimizer.variables + list(space.ema.shadow))
    return [variable.numpy().copy() for variable in variables]


def read_history(folder):
    with open(os.path.join(folder, "history.csv"), newline="") as handle:
        return [{key: value for key, value in row.items() if key != "seconds"}
                for row in csv.DictReader(handle)]


def read_npz(path):
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


# ------------------------------------------------------------------------------ the mixed layer
def numpy_bn(x, gamma, beta):
    mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    return gamma * (x - mean) / np.sqrt(variance + 1e-5) + beta


def test_mixed_layer_output_is_the_pi_weighted_mix_of_split_and_share():
    shape = (4, 3, 2, 5)
    layer = SwitchableBatchNormalization(1, with_relu=True, mixed=True, name="mixed_bn")
    layer.build(shape)
    rng = np.random.default_rng(0)
    params = {}
    for set_name, bn in layer.bn_sets.items():
        params[set_name] = (rng.uniform(0.5, 1.5, 5).astype(np.float32),
                            rng.normal(size=5).astype(np.float32))
        bn.gamma.assign(params[set_name][0])
        bn.beta.assign(params[set_name][1])
    alpha = np.array([0.7, -0.4], np.float32)
    layer.alpha.assign(alpha)
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)

    output = layer(x, 0, training=True).numpy()
    pi = np.exp(alpha) / np.exp(alpha).sum()
    split = np.concatenate([numpy_bn(x[:2], *params["visible_bn"]),
                            numpy_bn(x[2:], *params["thermal_bn"])])
    share = numpy_bn(x, *params["sharable_bn"])
    np.testing.assert_allclose(output, np.maximum(pi[0] * split + pi[1] * share, 0.0),
                               atol=1e-5)
    # Both paths ran in training mode: every BN set took its own batch's statistics.
    for set_name, part in (("visible_bn", x[:2]), ("thermal_bn", x[2:]), ("sharable_bn", x)):
        np.testing.assert_allclose(layer.bn_sets[set_name].moving_mean.numpy(),
                                   0.1 * part.mean(axis=(0, 1, 2)), atol=1e-6)


def test_derivation_is_the_argmax_with_ties_to_split():
    alpha = np.array([[0.0, 0.0], [0.1, 0.2], [3.0, -1.0], [-0.5, -0.5], [1e-3, 2e-3]])
    assert derive_config(alpha) == [0, 1, 0, 0, 1]


# ------------------------------------------------------------------------------ data split
def test_per_identity_half_split(cache_folder):
    frame = load_tiny("Synthetic_SYSU", cache_folder)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    weights, architecture = split_per_identity_half(train, seed=3)
    assert len(weights) + len(architecture) == len(train)
    assert not set(weights["image_file_path"]) & set(architecture["image_file_path"])
    counts = train.groupby(["identity_ID", "modality"]).size().unstack(fill_value=0)
    halvable = counts[(counts["visible"] >= 2) & (counts["infrared"] >= 2)].index
    assert 0 < len(halvable) < len(counts)  # the tiny set has both kinds of identity
    for table, rounding in ((weights, math.ceil), (architecture, math.floor)):
        got = table.groupby(["identity_ID", "modality"]).size()
        for identity in counts.index:
            for modality in ("visible", "infrared"):
                n = counts.loc[identity, modality]
                expected = rounding(n / 2) if identity in halvable else (
                    n if table is weights else 0)
                assert got.get((identity, modality), 0) == expected
    # Row order of the input is kept; another seed draws other halves.
    positions = train.reset_index().set_index("image_file_path")["index"]
    assert positions[weights["image_file_path"]].is_monotonic_increasing
    other, _ = split_per_identity_half(train, seed=4)
    assert set(other["image_file_path"]) != set(weights["image_file_path"])


def test_official_val_split_uses_the_sysu_validation_identities(cache_folder, tmp_path):
    frame = load_tiny("Synthetic_SYSU", cache_folder)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    path = sysu_split_file(train, "val")
    val_ids = read_id_file(path)
    train_ids = read_id_file(sysu_split_file(train, "train"))
    assert len(val_ids) == 2 and len(train_ids) == 6
    weights, architecture = split_official_val(train, val_ids)
    assert set(weights["identity_ID"]) == set(train_ids)
    assert set(architecture["identity_ID"]) == set(val_ids)
    assert len(weights) + len(architecture) == len(train)

    # The space's data with this split (no network built): classifier-free α loss, labels of
    # each part from its own identities.
    space = BnSplitSearchSpace.__new__(BnSplitSearchSpace)
    space.protocol = "sysu_mm01"
    space._make_data(make_config(cache_folder, str(tmp_path / "run"),
                                 bn_split_data_split="official_val"), train)
    assert not space.arch_uses_classifier
    assert sorted(space.weight_label_map) == sorted(train_ids)
    assert sorted(space.arch_label_map.values()) == [0, 1]
    images, labels = space.valid_data.next()
    assert images.shape == (8, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(labels[:4], labels[4:])  # identity-aligned halves


def test_space_rejects_unsuitable_data(cache_folder, tmp_path):
    regdb = load_tiny("Synthetic_RegDB", cache_folder)
    config = make_config(cache_folder, str(tmp_path / "a"), "Synthetic_RegDB",
                         bn_split_data_split="official_val")
    with pytest.raises(ValueError, match="official_val"):
        BnSplitSearchSpace(config, regdb, (HEIGHT, WIDTH, 3))
    config = make_config(cache_folder, str(tmp_path / "b"), "Market1501")
    with pytest.raises(ValueError, match="visible-infrared"):
        BnSplitSearchSpace(config, regdb, (HEIGHT, WIDTH, 3))
    config = make_config(cache_folder, str(tmp_path / "c"), "Synthetic_RegDB",
                         identity_num_per_batch=5)
    with pytest.raises(ValueError, match="identity_num_per_batch=5"):
        BnSplitSearchSpace(config, regdb, (HEIGHT, WIDTH, 3))
    with pytest.raises(ValueError, match="--bn_split_backbone="):
        make_config(cache_folder, "x", bn_split_backbone="resnet18").validate()


# ------------------------------------------------------------------------------ objective
def test_objective_is_the_cmnas_total_loss_and_the_classifier_free_form_drops_ce():
    rng = np.random.default_rng(1)
    labels = tf.constant(np.tile(np.repeat([3, 0], 4), 2), tf.int32)  # y_v == y_t, K = 4
    outputs = {"embeddings": [tf.constant(rng.normal(size=(16, 6)), tf.float32)],
               "bnneck": [tf.constant(rng.normal(size=(16, 6)), tf.float32)],
               "logits": [tf.constant(rng.normal(size=(16, 5)), tf.float32)]}
    total, parts = cmnas_total_loss(outputs, labels)
    objective = bn_split_objective(4)
    space = type("Space", (), {"objective": objective})()
    with_ce = BnSplitSearchSpace.objective_terms(space, outputs, labels)
    without_ce = BnSplitSearchSpace.objective_terms(space, outputs, labels,
                                                    with_classifier=False)
    assert float(parts["sp"]) > 0 and float(parts["cmmd"]) > 0
    np.testing.assert_allclose(float(with_ce["total"]), float(total), rtol=1e-6)
    np.testing.assert_allclose(float(without_ce["total"]), float(total - parts["ce"]),
                               rtol=1e-6)


# ------------------------------------------------------------------------------ weight optimiser
def test_grouped_optimizer_steps_each_group_at_its_rate_then_the_ema():
    from reid_tf.training.ema import WeightEMA
    backbone = tf.Variable([1.0, -2.0, 0.5])
    head = tf.Variable([[0.3, -0.1]])
    ema = WeightEMA([backbone, head], decay=0.9)
    optimizer = GroupedWeightOptimizer([backbone], [head], 0.02, 0.1, 5e-4, ema=ema)
    optimizer.build([backbone, head])
    optimizer.learning_rate = 0.04
    assert float(optimizer.learning_rate) == pytest.approx(0.04)
    gradients = [tf.constant([0.5, 0.0, -3.0]), tf.constant([[-1e-3, 2.0]])]
    optimizer.apply_gradients(zip(gradients, [backbone, head]))
    # First Adam step with coupled decay: lr * g' / (|g'| + 1e-8), g' = g + 5e-4 * w.
    for variable, start, gradient, rate in ((backbone, [1.0, -2.0, 0.5], gradients[0], 0.004),
                                            (head, [[0.3, -0.1]], gradients[1], 0.04)):
        g = gradient.numpy() + 5e-4 * np.asarray(start)
        expected = np.asarray(start) - rate * g / (np.abs(g) + 1e-8)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5)
        shadow = ema.shadow[0 if variable is backbone else 1].numpy()
        np.testing.assert_allclose(shadow, 0.9 * np.asarray(start) + 0.1 * expected, rtol=1e-5)
    with pytest.raises(ValueError, match="neither"):
        optimizer.apply_gradients([(tf.constant(1.0), tf.Variable(1.0))])


# ------------------------------------------------------------------------------ the search
@pytest.fixture(scope="module")
def searched(cache_folder, tmp_path_factory):
    """A 2-epoch search (1 step each) of the ResNet-50 supernet on the tiny synthetic
    SYSU-MM01 set: epoch 1 weights only, epoch 2 alternating; EMA 0.9 reset every epoch;
    evaluation at the end; deterministic ops; the result published to a configs/cmnas path."""
    folder = str(tmp_path_factory.mktemp("search") / "Synthetic_SYSU_search_bn_split")
    published = str(tmp_path_factory.mktemp("published") / "configs" / "cmnas" / "tiny.cfg")
    config = make_config(cache_folder, folder, bn_split_backbone="cmnas_resnet50",
                         bn_split_warmup_epochs=1, evaluation_interval=2,
                         bn_split_ema_decay=EMA_DECAY, bn_split_ema_reset_epochs=1,
                         deterministic=True, save_genotype_to=published)
    snapshots = []

    def snapshot(searcher, epoch=None):
        space = searcher.space
        snapshots.append({"weights": [v.numpy().copy() for v in space.weight_variables],
                          "alpha": space.alpha_array(),
                          "shadow": [s.numpy().copy() for s in space.ema.shadow]})

    searcher = Searcher(config, after_epoch=snapshot)
    snapshot(searcher)
    result = searcher.search()
    yield {"searcher": searcher, "folder": folder, "result": result, "published": published,
           "snapshots": snapshots, "state": numpy_state(searcher),
           "history": read_history(folder),
           "alpha_history": read_npz(os.path.join(folder, "alpha_history.npz"))}
    remove_large_files(folder)


def remove_large_files(folder):
    """Delete the ResNet-50 checkpoints and weight files (hundreds of MB) a test wrote."""
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".h5") or ".data-" in name:
                os.remove(os.path.join(root, name))


def test_search_writes_config_alpha_history_heatmap_log_and_evaluation(searched):
    folder, searcher, space = searched["folder"], searched["searcher"], searched["searcher"].space
    assert len(space.switchable_layers) == len(space.arch_variables) == 53
    assert all(layer.mixed for layer in space.switchable_layers)
    assert space.layer_names == [spec.name for spec in cmnas.switchable_bn_layout()]

    config = read_config(os.path.join(folder, "config.cfg"))
    assert len(config) == 53 and set(config) <= {0, 1}
    assert config == searched["result"] == derive_config(space.alpha_array())
    assert read_config(searched["published"]) == config

    history = searched["alpha_history"]
    assert history["epochs"].tolist() == [0, 1, 2]
    assert history["alpha"].shape == (3, 53, 2)
    assert history["layers"].tolist() == space.layer_names
    np.testing.assert_allclose(history["alpha"][-1], space.alpha_array())
    pi = np.exp(history["alpha"]) / np.exp(history["alpha"]).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(history["weights"], pi, rtol=1e-5)
    with open(os.path.join(folder, "alpha_history.png"), "rb") as handle:
        assert handle.read(4) == b"\x89PNG"

    with open(os.path.join(folder, "search.log")) as handle:
        log = handle.read()
    assert f"[final] config = {' '.join(map(str, config))}" in log
    assert "D_w:" in log and "D_alpha:" in log and "[evaluation epoch2]" in log
    with open(os.path.join(folder, "evaluation", "evaluation.json")) as handle:
        evaluation = json.load(handle)
    # SYSU-MM01 protocol: infrared queries (cameras 3, 6), one gallery trial, pre-BNNeck too.
    assert evaluation["protocol"] == "sysu_mm01" and evaluation["num_trials"] == 1
    assert 0.0 <= evaluation["mAP"] <= 1.0 and "pre_bnneck" in evaluation
    assert os.path.isfile(os.path.join(folder, "weights_epoch2.h5"))
    assert tf.train.latest_checkpoint(os.path.join(folder, "checkpoint")).endswith("ckpt-2")


def test_warmup_epoch_trains_weights_only_then_alpha_moves(searched):
    rows = searched["history"]
    assert [int(row["arch_steps"]) for row in rows] == [0, 1]
    assert [int(row["steps"]) for row in rows] == [1, 1]
    assert rows[0]["valid_loss"] == "nan" and math.isfinite(float(rows[1]["valid_loss"]))
    # Weights: CM-NAS's warm-up from 0.01 (§8.2); α: DARTS' constant 3e-4.
    assert float(rows[0]["learning_rate"]) == pytest.approx(LEARNING_RATE * 0.01)
    assert float(rows[1]["learning_rate"]) == pytest.approx(LEARNING_RATE * 0.109)
    assert float(rows[1]["arch_learning_rate"]) == pytest.approx(3e-4)

    initial, first, second = searched["snapshots"]
    np.testing.assert_array_equal(first["alpha"], initial["alpha"])
    np.testing.assert_array_equal(initial["alpha"], 0.0)
    assert not np.array_equal(second["alpha"], first["alpha"])
    # Epoch 1 is one Adam step: |Δw| <= lr, reached by most entries; backbone at 0.1 x lr.
    space = searched["searcher"].space
    head_ids = {id(v) for v in space.groups.head}
    for variable, before, after in zip(space.weight_variables, initial["weights"],
                                       first["weights"]):
        rate = LEARNING_RATE * 0.01 * (1.0 if id(variable) in head_ids else 0.1)
        step = np.abs(after - before).max()
        assert step == pytest.approx(rate, rel=0.05), variable.name
    # EMA 0.9 after one update.
    for before, after, shadow in zip(initial["weights"], first["weights"],
                                     first["shadow"][:len(first["weights"])]):
        np.testing.assert_allclose(shadow, 0.9 * before + 0.1 * after, rtol=1e-5, atol=1e-7)


def test_resumed_search_equals_the_uninterrupted_one(searched):
    """Rewind to the epoch-1 checkpoint and run again: weights, α, BN statistics, both
    optimisers, EMA, samplers and the EMA reset replay the second epoch exactly, with the
    steps' functions traced once for both runs."""
    folder, searcher = searched["folder"], searched["searcher"]
    directory = os.path.join(folder, "checkpoint")
    first = os.path.join(directory, "ckpt-1")
    tf.compat.v1.train.update_checkpoint_state(directory, first,
                                               all_model_checkpoint_paths=[first])
    searcher.after_epoch = None
    assert searcher.search() == searched["result"]
    for before, after in zip(searched["state"], numpy_state(searcher)):
        np.testing.assert_array_equal(before, after)
    assert read_history(folder) == searched["history"]
    for name, values in read_npz(os.path.join(folder, "alpha_history.npz")).items():
        np.testing.assert_array_equal(values, searched["alpha_history"][name])


class TinySpace(SearchSpace):
    """Two weights and two architecture logits with quadratic losses (no data, no network)."""

    name = "tiny"

    def __init__(self):
        self.w = tf.Variable([1.0, -2.0], name="w")
        self.a = tf.Variable([0.3, -0.2], name="a")

    weight_variables = property(lambda self: [self.w])
    arch_variables = property(lambda self: [self.a])
    state_variables = property(lambda self: [])

    def _loss(self, x):
        pi = tf.nn.softmax(self.a)
        return tf.reduce_sum(tf.square(pi[0] * self.w - x) + pi[1] * self.w), {
            "accuracy": tf.constant(0.0)}

    def train_loss(self, images, labels):
        return self._loss(images)

    def valid_loss(self, images, labels):
        return self._loss(2.0 * images)

    def checkpoint_objects(self):
        return {"w": self.w, "a": self.a}

    def derive(self):
        return int(np.argmax(self.a.numpy()))

    def write_result(self, result, file_path):
        return file_path

    def architecture_arrays(self):
        return {"alpha": self.a.numpy()}

    def embed(self, images):
        return images


def test_clean_iterations_run_as_the_architecture_and_weight_functions_traced_once():
    """The search's step in the bn_split mode (no accumulated valid gradient, weights-only
    iterations): two functions, each traced once, equal to the single full step."""
    from nas.bilevel import BilevelStep
    from reid_tf.training.optimizers import TorchAdam, TorchSGD

    def make():
        space = TinySpace()
        weights, arch = TorchSGD(0.1, momentum=0.9), TorchAdam(0.05, beta_1=0.5)
        weights.build(space.weight_variables)
        arch.build(space.arch_variables)
        return space, BilevelStep(space, weights, arch, accumulate_valid_gradients=False)

    x = tf.constant([0.5, 1.5])
    tf.config.run_functions_eagerly(False)
    try:
        space, step = make()
        for update in (False, True, True):
            values = step(x, None, x, None, architecture_update=update)
        assert set(values) == {"loss", "accuracy", "valid_loss"}
        assert step.weight_step.experimental_get_tracing_count() == 1
        assert step.architecture_step.experimental_get_tracing_count() == 1
        assert step.full_step.experimental_get_tracing_count() == 0
        reference, full = make()
        full.weight_step(x, None)
        for _ in range(2):
            full.full_step(x, None, x, None)
    finally:
        tf.config.run_functions_eagerly(True)
    np.testing.assert_allclose(space.w.numpy(), reference.w.numpy(), rtol=1e-6)
    np.testing.assert_allclose(space.a.numpy(), reference.a.numpy(), rtol=1e-6)
    assert not np.allclose(space.a.numpy(), [0.3, -0.2])


def test_architecture_step_changes_only_alpha_and_weight_step_only_weights(searched):
    searcher = searched["searcher"]
    space, step = searcher.space, searcher.step
    model_trainable = {id(v) for v in space.weights_model.trainable_variables}
    alpha_ids = {id(v) for v in space.arch_variables}
    assert not alpha_ids & {id(v) for v in space.weight_variables}
    assert model_trainable == alpha_ids | {id(v) for v in space.weight_variables}

    images, labels = next(iter(space.train_data.epoch_dataset(0)))
    valid_images, valid_labels = space.valid_data.next()
    weights = [v.numpy().copy() for v in space.weight_variables]
    alpha = space.alpha_array()
    step.architecture_step(images, labels, valid_images, valid_labels)
    for variable, value in zip(space.weight_variables, weights):
        np.testing.assert_array_equal(variable.numpy(), value)
    moved = np.any(space.alpha_array() != alpha, axis=1)
    assert moved.all()  # every layer's α received a gradient

    alpha = space.alpha_array()
    step.weight_step(images, labels)
    np.testing.assert_array_equal(space.alpha_array(), alpha)
    changed = [not np.array_equal(v.numpy(), w) for v, w in zip(space.weight_variables,
                                                                 weights)]
    assert all(changed)


def test_space_derivation_and_ema_reset(searched):
    space = searched["searcher"].space
    values = np.zeros((53, 2), np.float32)
    values[1] = [0.0, 1e-3]
    values[7] = [2.0, -1.0]
    values[52] = [-0.5, 0.25]
    for variable, row in zip(space.arch_variables, values):
        variable.assign(row)
    expected = [1 if k in (1, 52) else 0 for k in range(53)]
    assert space.derive() == expected == cmnas.derived_config(space.models)

    # The EMA -> live copy at the start of epochs 1, 2, ... (every epoch here), never α.
    space.begin_epoch(0)
    assert not all(np.array_equal(v.numpy(), s.numpy())
                   for v, s in zip(space.ema.variables_tracked, space.ema.shadow))
    space.begin_epoch(1)
    for variable, shadow in zip(space.ema.variables_tracked, space.ema.shadow):
        np.testing.assert_array_equal(variable.numpy(), shadow.numpy())
    np.testing.assert_array_equal(space.alpha_array(), values)


def test_searched_config_trains_one_step_through_run(searched, cache_folder, tmp_path,
                                                     monkeypatch):
    from absl import flags
    from reid_tf.flags import define_flags
    from reid_tf.cli import train as run_module
    from reid_tf.training import trainer as trainer_module

    config_path = os.path.join(searched["folder"], "config.cfg")
    arguments = {
        "dataset_name": "Synthetic_SYSU", "backbone_model_name": "cmnas_resnet50",
        "cmnas_config_file_path": config_path, "image_height": HEIGHT, "image_width": WIDTH,
        "identity_num_per_batch": 2, "image_num_per_identity": 2, "steps_per_epoch": 1,
        "epoch_num": 1, "freeze_backbone_for_N_epochs": 0, "optimizer_name": "torch_adam",
        "adam_beta_1": 0.5, "adam_beta_2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 5e-4,
        "backbone_learning_rate_multiplier": 0.1, "learning_rate_mode": "warmup_multistep",
        "learning_rate_base": 0.01, "learning_rate_warmup_epochs": 10,
        "learning_rate_milestones": "40,70", "learning_rate_lower_bound": 0,
        "triplet_margin": 0.4, "label_smoothing": 0, "augmentation_recipe": "cmnas",
        "testing_size": 0, "workers": 1, "output_folder_path": str(tmp_path),
        "export_formats": "h5"}
    if "backbone_model_name" not in flags.FLAGS:
        define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["solution.py"] + [f"--{key}={value}" for key, value in arguments.items()])

    original_load = run_module.load_dataset
    monkeypatch.setattr(run_module, "load_dataset", lambda name, root, **options: original_load(
        name, root, **dataset_options(name, cache_folder), **options))
    recorded = {}

    class RecordingTrainer(trainer_module.Trainer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            recorded["trainer"] = self

    monkeypatch.setattr(trainer_module, "Trainer", RecordingTrainer)
    run_module.run(flags.FLAGS)
    model = recorded["trainer"].models.training_model
    assert cmnas.switchable_config(model) == read_config(config_path) == searched["result"]
    run_folder = tmp_path / "Synthetic_SYSU_cmnas_resnet50"
    with open(run_folder / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))
    assert (run_folder / "training_model.h5").is_file()
    remove_large_files(str(run_folder))


# ------------------------------------------------------------------------------ MSINet supernet
def test_msinet_supernet_has_80_mixed_bns_and_writes_an_80_value_config(cache_folder, tmp_path):
    frame = load_tiny("Synthetic_SYSU", cache_folder)
    config = make_config(cache_folder, str(tmp_path / "run"), bn_split_backbone="msinet")
    space = BnSplitSearchSpace(config, frame, (HEIGHT, WIDTH, 3))
    assert space.layer_names == msinet.batch_norm_names()
    assert len(space.arch_variables) == 80 and all(layer.mixed for layer in space.switchable_layers)
    assert not {id(v) for v in space.arch_variables} & {id(v) for v in space.weight_variables}
    values = np.zeros((80, 2), np.float32)
    values[::3] = [0.0, 0.5]  # share
    values[1::3] = [0.25, 0.25]  # tie -> split
    values[2::3] = [1.0, -1.0]  # split
    for variable, row in zip(space.arch_variables, values):
        variable.assign(row)
    expected = [1 if k % 3 == 0 else 0 for k in range(80)]
    assert space.derive() == expected == msinet_switchable.derived_config(space.models)
    path = str(tmp_path / "msinet.cfg")
    space.write_result(space.derive(), path)
    assert msinet_switchable.resolve_bn_config(path) == expected == read_config(path, length=80)
    history = space.alpha_history(str(tmp_path / "history.npz"))
    history.log(3, values)
    assert read_npz(str(tmp_path / "history.npz"))["alpha"].shape == (1, 80, 2)


# ------------------------------------------------------------------------------ command line
def test_flagfiles_parse_into_bn_split_configs():
    script = (
        "import json\n"
        "from nas.search import FLAGS, config_from_flags, define_search_flags\n"
        "define_search_flags()\n"
        "for name in ('bn_split_sysu', 'bn_split_regdb', 'bn_split_synthetic_quick'):\n"
        "    FLAGS.unparse_flags()\n"
        "    FLAGS(['nas.search', f'--flagfile=configs/nas/{name}.flags'])\n"
        "    print(json.dumps(config_from_flags(FLAGS).__dict__))\n"
        "FLAGS.unparse_flags()\n"
        "FLAGS(['nas.search', '--search_space=bn_split', '--epoch_num=7',\n"
        "       '--save_config_to=configs/cmnas/x.cfg'])\n"
        "print(json.dumps(config_from_flags(FLAGS).__dict__))\n"
        "for bad in (['--bn_split_backbone=msinet', '--bn_split_backbone_weights_file_path=w'],\n"
        "            ['--bn_split_ema_reset_epochs=2']):\n"
        "    FLAGS.unparse_flags()\n"
        "    FLAGS(['nas.search', '--search_space=bn_split'] + bad)\n"
        "    try:\n"
        "        config_from_flags(FLAGS)\n"
        "    except Exception as error:\n"
        "        print('ERROR', error)\n")
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1",
                       PYTHONPATH=REPOSITORY + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, env=environment,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    sysu, regdb, quick, defaults = (json.loads(line) for line in lines[:4])
    recon = {"search_space": "bn_split", "learning_rate": 0.01, "weight_decay": 5e-4,
             "warmup_epochs": 10, "warmup_factor": 0.01, "arch_learning_rate": 3e-4,
             "arch_beta_1": 0.5, "arch_beta_2": 0.999, "arch_weight_decay": 1e-3,
             "arch_milestones": [], "clean_bilevel": True, "unrolled": False,
             "bn_split_backbone": "cmnas_resnet50", "bn_split_data_split": "per_identity_half",
             "bn_split_backbone_lr_multiplier": 0.1, "image_height": 256, "image_width": 128,
             "identity_num_per_batch": 16, "image_num_per_identity": 4, "steps_per_epoch": 0}
    for config in (sysu, regdb):
        assert {key: config[key] for key in recon} == recon
    assert sysu["dataset_name"] == "SYSU_MM01" and regdb["dataset_name"] == "RegDB"
    assert (sysu["epoch_num"], sysu["milestones"], sysu["bn_split_warmup_epochs"]) == \
        (50, [40], 10)
    assert quick["dataset_name"] == "Synthetic_SYSU" and quick["search_space"] == "bn_split"
    # Flags left unset take the bn_split defaults; those given win.
    assert defaults["dataset_name"] == "SYSU_MM01" and defaults["epoch_num"] == 7
    assert defaults["milestones"] == [40] and defaults["evaluation_interval"] == 10
    assert defaults["save_genotype_to"] == "configs/cmnas/x.cfg"
    assert lines[4].startswith("ERROR") and "--bn_split_backbone_weights_file_path" in lines[4]
    assert lines[5].startswith("ERROR") and "--bn_split_ema_decay" in lines[5]
