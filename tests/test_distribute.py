"""Distribution (--strategy): per-replica batches, synchronised BN, the distributed first step
equal to the one-device step, and a two-process multi-worker run of training and search.

The mirrored checks need two logical CPU devices, which must be configured before TensorFlow
initialises its devices: they run in a subprocess (this file run as a script, ``mirrored``
mode) that writes its measurements to a JSON file the test asserts on.
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SYNTHETIC = ("num_train_identities=8,num_test_identities=4,num_cameras=2,"
                  "images_per_identity=4,num_junk_images=0,num_distractor_images=0")


def _environment(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1",
                PYTHONPATH=REPOSITORY + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


# --------------------------------------------------------------------------------------------
# In-process checks (one device)
# --------------------------------------------------------------------------------------------
def test_replica_parts_keep_whole_identities_and_modality_halves():
    import tensorflow as tf

    from reid_tf.runtime.distribute import global_order, replica_parts

    # P = 4 identities x K = 2, two replicas: replica r gets identities 2r, 2r + 1.
    labels = np.repeat(np.arange(4), 2)
    parts = replica_parts(tf.constant(labels), 2).numpy()
    np.testing.assert_array_equal(parts, [[0, 0, 1, 1], [2, 2, 3, 3]])
    # Visible-infrared batch [V (8), I (8)]: replica r gets [V_r, I_r].
    images = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    parts = replica_parts(tf.constant(images), 2, cross_modality=True).numpy()
    np.testing.assert_array_equal(parts[0], np.concatenate([images[0:4], images[8:12]]))
    np.testing.assert_array_equal(parts[1], np.concatenate([images[4:8], images[12:16]]))
    # The all-gather order [V_0, I_0, V_1, I_1] goes back to the global order.
    gathered = tf.constant(np.concatenate([parts[0], parts[1]]))
    np.testing.assert_array_equal(global_order(gathered, 2, cross_modality=True).numpy(),
                                  images)
    np.testing.assert_array_equal(global_order(gathered, 2).numpy(), gathered.numpy())


class _Strategy:
    """A stand-in with the attributes the helpers read."""

    def __init__(self, replicas=1, task_type=None, task_id=0, cluster=None):
        self.num_replicas_in_sync = replicas
        if task_type is None:
            self.cluster_resolver = None
        else:
            import tensorflow as tf
            self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


def test_identities_must_split_over_replicas_and_chief_rules(tmp_path):
    from reid_tf.runtime import distribute

    with pytest.raises(distribute.DistributionError,
                       match=r"--identity_num_per_batch=6 .* 4 replicas.*multiple of 4"):
        distribute.check_identities_per_replica(6, _Strategy(4))
    distribute.check_identities_per_replica(8, _Strategy(4))

    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    with_chief = {"chief": ["127.0.0.1:3"], **workers}
    assert distribute.is_chief(_Strategy())
    assert distribute.is_chief(_Strategy(2, "worker", 0, workers))
    assert not distribute.is_chief(_Strategy(2, "worker", 1, workers))
    assert not distribute.is_chief(_Strategy(3, "worker", 0, with_chief))
    assert distribute.is_chief(_Strategy(3, "chief", 0, with_chief))
    # The chief writes into the run folder, another worker into a temporary folder.
    folder = str(tmp_path / "run")
    assert distribute.worker_output_folder(folder, _Strategy(2, "worker", 0, workers)) == folder
    other = _Strategy(2, "worker", 1, workers)
    temporary = distribute.worker_output_folder(folder, other)
    assert temporary != folder and os.path.isdir(temporary)
    distribute.remove_worker_output_folder(temporary, other)
    assert not os.path.exists(temporary)


@pytest.mark.parametrize("value, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["host"]}, "task": {"type": "worker", "index": 0}}',
     "host:port"),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'worker'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "'type'"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     r"index 2 .* \(0..1\)"),
])
def test_tf_config_is_checked(value, message):
    from reid_tf.runtime.distribute import DistributionError, read_tf_config

    environ = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(DistributionError, match=message):
        read_tf_config(environ)
    good = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    assert read_tf_config({"TF_CONFIG": good})["task"]["index"] == 1


def test_strategy_names(monkeypatch):
    import tensorflow as tf

    from reid_tf.runtime import distribute

    default = distribute.create_strategy("default")
    assert default is tf.distribute.get_strategy() and not distribute.is_distributed(default)
    assert "one device" in distribute.describe(default)
    with pytest.raises(distribute.DistributionError, match="--strategy='ring'"):
        distribute.create_strategy("ring")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributionError, match="TF_CONFIG"):
        distribute.create_strategy("multi_worker")


def test_synchronised_batch_norm_on_one_replica_keeps_the_fused_statistics():
    """On one replica the converted layers compute what they computed before: outputs, and
    the moving variance of a (formerly fused) 4-D Keras BN still uses the unbiased batch
    variance, computed here with numpy."""
    import tensorflow as tf
    import tf_keras as keras

    from reid_tf.models.switchable_bn import TorchBatchNormalization
    from reid_tf.models.sync_bn import synchronize_batch_normalization

    x = tf.constant(np.random.default_rng(0).normal(1.0, 2.0, (4, 3, 2, 5)), tf.float32)
    inputs = keras.Input((3, 2, 5))
    model = keras.Model(inputs, TorchBatchNormalization(name="torch_bn")(
        keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3, name="bn")(inputs),
        training=True))
    bn = model.get_layer("bn")
    assert bn.fused
    reference = model(x, training=True).numpy()
    bn.moving_variance.assign(np.ones(5, np.float32))
    model.get_layer("torch_bn").moving_variance.assign(np.ones(5, np.float32))
    assert synchronize_batch_normalization(model) == 2
    assert synchronize_batch_normalization(model) == 0  # already converted
    assert type(bn).__name__ == "CrossReplicaBatchNormalization" and not bn.fused
    converted = model(x, training=True).numpy()
    np.testing.assert_allclose(converted, reference, atol=1e-5)
    unbiased = x.numpy().reshape(-1, 5).var(axis=0, ddof=1)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.5 + 0.5 * unbiased, rtol=1e-5)
    # Same weights (names and order) as before: weight files stay interchangeable.
    assert [w.name for w in model.weights][:4] == ["bn/gamma:0", "bn/beta:0",
                                                   "bn/moving_mean:0", "bn/moving_variance:0"]


# --------------------------------------------------------------------------------------------
# Mirrored strategy on two logical CPUs (subprocess)
# --------------------------------------------------------------------------------------------
def _max_difference(first, second):
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               if np.size(a) else 0.0 for a, b in zip(first, second))


def _component_spread(variables):
    """Largest difference between the per-replica copies of any distributed variable."""
    spread = 0.0
    for variable in variables:
        copies = [value.numpy() for value in getattr(variable, "values", (variable,))]
        spread = max([spread] + [float(np.max(np.abs(copy - copies[0]))) for copy in copies])
    return spread


def _bn_checks(strategy):
    """Outputs, input/γ gradients and moving statistics of synchronised BN layers on two
    replicas equal the one-device layer on the whole batch (float32)."""
    import tensorflow as tf
    import tf_keras as keras

    from reid_tf.models.msinet_ops import BN_MOMENTUM, default_batch_norm
    from reid_tf.models.switchable_bn import TorchBatchNormalization
    from reid_tf.models.sync_bn import synchronize_batch_normalization
    from reid_tf.runtime import distribute

    rng = np.random.default_rng(1)
    cases = {
        "keras_4d": (lambda: keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
                     (8, 5, 3, 4)),
        "keras_2d": (lambda: keras.layers.BatchNormalization(momentum=0.99, epsilon=2e-5),
                     (8, 6)),
        "torch_4d": (lambda: TorchBatchNormalization(), (8, 5, 3, 4)),
        # MSINet's BNs (PyTorch's unbiased moving-variance update on every code path): the
        # fused 4-D cells and the 2-D BNNeck heads with a frozen beta.
        "msinet_4d": (lambda: default_batch_norm("cell_bn"), (8, 5, 3, 4)),
        "msinet_2d": (lambda: default_batch_norm("head_bn", frozen_beta=True), (8, 6)),
    }
    results = {}
    for name, (make, shape) in cases.items():
        x = rng.normal(1.0, 2.0, shape).astype(np.float32)
        weights = rng.normal(size=shape).astype(np.float32)
        gamma = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)

        def forward(layer, images, factors):
            with tf.GradientTape() as tape:
                tape.watch(images)
                outputs = layer(images, training=True)
                loss = tf.reduce_sum(outputs * factors)
            return (outputs,) + tuple(tape.gradient(loss, [images, layer.gamma]))

        single = make()
        single.build(shape)
        single.gamma.assign(gamma)
        y, dx, dgamma = tf.function(forward)(single, tf.constant(x), tf.constant(weights))
        with strategy.scope():
            layer = make()
            layer.build(shape)
        layer.gamma.assign(gamma)
        synchronize_batch_normalization(layer)
        parts = distribute.split_batch(strategy, x, weights)
        outputs = tf.function(lambda a, b: strategy.run(forward, args=(layer, a, b)))(*parts)
        local = [strategy.experimental_local_results(value) for value in outputs]
        results[name] = {
            "outputs": _max_difference([np.concatenate(local[0])], [y]),
            "input_gradients": _max_difference([np.concatenate(local[1])], [dx]),
            "gamma_gradients": _max_difference([np.sum(local[2], axis=0)], [dgamma]),
            "moving_mean": max(_max_difference([copy.numpy()], [single.moving_mean.numpy()])
                               for copy in layer.moving_mean.values),
            "moving_variance": max(
                _max_difference([copy.numpy()], [single.moving_variance.numpy()])
                for copy in layer.moving_variance.values),
            "variance_moved": float(np.max(np.abs(single.moving_variance.numpy() - 1.0))),
        }
        if name.startswith("msinet"):
            # PyTorch: running_var = (1 - 0.1) * 1 + 0.1 * unbiased variance of the batch.
            unbiased = x.reshape(-1, shape[-1]).astype(np.float64).var(axis=0, ddof=1)
            expected = BN_MOMENTUM + (1.0 - BN_MOMENTUM) * unbiased
            results[name]["moving_variance_numpy"] = max(
                _max_difference([copy.numpy()], [expected])
                for copy in layer.moving_variance.values)
    return results


def _batch_checks(strategy):
    """Replica r of a distributed PK batch holds identities [r P/R, (r+1) P/R) (and, for
    visible-infrared batches, its visible part then the matching infrared part); gathering
    puts the global batch back together."""
    import tensorflow as tf

    from reid_tf.runtime import distribute

    results = {}
    for cross_modality, labels in ((False, np.repeat(np.arange(4), 2)),
                                   (True, np.tile(np.repeat(np.arange(4), 2), 2))):
        images = np.stack([labels * 10 + np.arange(len(labels)) % 2] * 3, axis=1)
        images = images.astype(np.float32)
        dataset = tf.data.Dataset.from_tensors((images, labels)).repeat(2)
        batches = distribute.distribute_batches(strategy, lambda: dataset, cross_modality)
        received = [[part.numpy().tolist() for part in strategy.experimental_local_results(y)]
                    for _, y in batches]
        parts = distribute.split_batch(strategy, images, labels, cross_modality)
        gathered = tf.function(lambda a: strategy.run(
            lambda b: distribute.all_gather_batch(b, cross_modality), args=(a,)))(parts[0])
        key = "cross_modality" if cross_modality else "plain"
        results[key] = {
            "received": received,
            "split": [part.numpy().tolist()
                      for part in strategy.experimental_local_results(parts[1])],
            "gathered_equal": [bool(np.array_equal(value.numpy(), images))
                               for value in strategy.experimental_local_results(gathered)],
        }
    return results


def tiny_flipreid_models(num_classes, input_shape=(64, 32, 3)):
    """A small network with FlipReID's structure: conv/BN trunk, global branch and two
    regional stripes (conv, ReLU), GeM pooling and clipping, FlipReID's heads (BN + bias-free
    dense) and the flip structure of its training model."""
    import tf_keras as keras

    from reid_tf.models import flipping
    from reid_tf.models.base import ReIDModels
    from reid_tf.models.flipreid import build_head_model
    from reid_tf.models.layers import ClipValues, GlobalGeMPooling2D, HeightSlice

    image = keras.Input(input_shape, name="image")
    x = image
    for index, (filters, strides) in enumerate(((8, 2), (16, 2))):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                name=f"trunk_conv_{index}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"trunk_bn_{index}")(x)
        x = keras.layers.ReLU(name=f"trunk_relu_{index}")(x)

    def pool(tensor, index):
        tensor = GlobalGeMPooling2D(initial_power=3.0, name=f"gem_{index}")(tensor)
        return ClipValues(min_value=0.0, max_value=10.0, name=f"clip_{index}")(tensor)

    embeddings = [pool(x, 0)]
    for index, (start, stop) in enumerate(((0, 8), (8, 16)), start=1):
        stripe = HeightSlice(start, stop, name=f"stripe_{index}")(x)
        stripe = keras.layers.Conv2D(8, 3, padding="same", name=f"stripe_conv_{index}")(stripe)
        stripe = keras.layers.ReLU(name=f"stripe_relu_{index}")(stripe)
        embeddings.append(pool(stripe, index))
    inference_model = keras.Model(image, embeddings, name="inference_model")
    embedding_model = keras.Model(image, {"embeddings": list(embeddings)},
                                  name="embedding_model")
    head_model = build_head_model([16, 8, 8], num_classes)
    training_model = flipping.build_training_model(embedding_model, head_model, True)
    return ReIDModels(training_model=training_model, inference_model=inference_model,
                      embedding_model=embedding_model, head_model=head_model)


def tiny_switchable_models(num_classes, input_shape=(64, 32, 3)):
    """A small network with CM-NAS's structure: ``[images, mode]`` inputs, a split and a
    shared switchable BN (mode 0: visible first half, infrared second half), global pooling,
    a bias-free BNNeck and a classifier; outputs ``embeddings``, ``bnneck`` and ``logits``."""
    import tensorflow as tf
    import tf_keras as keras

    from reid_tf.models.base import ReIDModels
    from reid_tf.models.switchable_bn import SwitchableBatchNormalization, TorchBatchNormalization

    images = keras.Input(input_shape, name="images")
    mode = keras.Input(batch_shape=(), dtype=tf.int32, name="mode")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv_0")(images)
    x = SwitchableBatchNormalization(0, with_relu=True, name="split_bn")(x, mode)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv_1")(x)
    x = SwitchableBatchNormalization(1, with_relu=True, name="share_bn")(x, mode)
    features = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    normalized = TorchBatchNormalization(center=False, name="bnneck")(features)
    logits = keras.layers.Dense(num_classes, use_bias=False, name="classifier")(normalized)
    training_model = keras.Model([images, mode], {"embeddings": [features],
                                                  "bnneck": [normalized], "logits": [logits]})
    inference_model = keras.Model([images, mode], [features, normalized])
    return ReIDModels(training_model=training_model, inference_model=inference_model,
                      embedding_model=inference_model, head_model=inference_model)


def _first_step(strategy, objective, train, label_map, folder, initial=None,
                cross_modality=False):
    """One training step through the Trainer of :func:`tiny_flipreid_models` (or, for
    visible-infrared data, :func:`tiny_switchable_models` fed mode 0): the weights before and
    after, the EMA shadow, the logged losses and the spread between the replicas' copies."""
    import tf_keras as keras

    from reid_tf.training.data import TrainingInput
    from reid_tf.models.sync_bn import synchronize_batch_normalization
    from reid_tf.training.ema import WeightEMA
    from reid_tf.training.optimizers import build_optimizer
    from reid_tf.training.trainer import Trainer

    import tensorflow as tf

    keras.utils.set_random_seed(0)
    build = tiny_switchable_models if cross_modality else tiny_flipreid_models
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        models = build(len(label_map))
        model = models.training_model
        if initial is not None:
            model.set_weights(initial)
        ema = WeightEMA(model, decay=0.5)
    if strategy is not None:
        # FlipReID structure: trunk (2) and heads (3) Keras BNs; CM-NAS structure: the three
        # BN sets of both switchable BNs and the BNNeck.
        assert synchronize_batch_normalization(model) == (7 if cross_modality else 5)
    before = model.get_weights()
    data = TrainingInput(train, 4, 2, 1, 64, 32, None, seed=0, policy="msinet",
                         label_map=label_map, workers=1, cross_modality=cross_modality)
    trainer = Trainer(
        models=models, objective=objective, data=data, schedule=lambda epoch: 0.05,
        output_folder=folder, epoch_num=1,
        optimizer_factory=lambda name: build_optimizer("sgd", 0.05, momentum=0.9,
                                                       weight_decay=5e-4),
        evaluate_every_N_epochs=0, ema=ema, verbose=0, strategy=strategy,
        training_inputs=(lambda images: [images, tf.constant(0, tf.int32)])
        if cross_modality else None)
    row = trainer.fit()[0]
    return {"before": before, "after": model.get_weights(), "ema": ema.get_weights(),
            "losses": {key: value for key, value in row.items() if key.startswith("loss")},
            "spread": _component_spread(model.weights + ema.shadow)}


def _trainer_checks(strategy, folder):
    """The first training step of a FlipReID-structure network (flip structure: two BN passes
    per step and the flipping loss; soft-margin batch-hard triplet; cross-entropy) on two
    replicas and on one device with the same global batch of 4 identities x 2 images (float32).
    Also: the factory synchronises every BN of MSINet under the strategy."""
    from reid_tf.data import load_dataset
    from reid_tf.data.pipeline import make_label_map
    from reid_tf.cli.settings import model_settings
    from reid_tf.flags import FLAGS, define_flags, parse_dataset_options
    from reid_tf.losses.objective import Objective, ObjectiveConfig
    from reid_tf.models.base import iter_layers
    from reid_tf.models.factory import build_models
    from reid_tf.models.msinet import num_batch_norms
    from reid_tf.models.sync_bn import _CrossReplicaKerasBatchNormalization

    define_flags()
    FLAGS(["test", "--dataset_name=Synthetic",
           f"--dataset_options=cache_folder_path={folder}/cache,{TINY_SYNTHETIC}",
           "--backbone_model_name=msinet", "--image_height=64", "--image_width=32"])
    frame = load_dataset("Synthetic", "", **parse_dataset_options(FLAGS.dataset_options))
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    label_map = make_label_map(train)
    msinet, _, _ = build_models(model_settings(FLAGS), len(label_map), strategy=strategy)
    synchronised = sum(isinstance(layer, _CrossReplicaKerasBatchNormalization)
                       for layer in iter_layers(msinet.training_model))

    objective = Objective(ObjectiveConfig(triplet_margin=None, triplet_exclude_self=True,
                                          triplet_clamp=False, label_smoothing=0.1))
    results = {"msinet_synchronised": synchronised, "msinet_batch_norms": num_batch_norms()}
    # Visible-infrared batches (tiny RegDB layout): each replica gets its visible part and the
    # matching infrared part; the four-term triplet, SP and CMMD losses on the gathered batch.
    regdb = load_dataset("Synthetic_RegDB", "", cache_folder_path=f"{folder}/cache",
                         num_identities=10, images_per_identity=4, image_size=(64, 32))
    regdb_train = regdb[regdb["split"] == "train"].reset_index(drop=True)
    cross_objective = Objective(ObjectiveConfig(triplet_margin=0.4, cross_modality=True,
                                                sp_weight=5.0, cmmd_weight=0.05,
                                                images_per_identity=2))
    for name, data, loss, cross in (("flipreid", train, objective, False),
                                    ("cmnas", regdb_train, cross_objective, True)):
        labels = make_label_map(data)
        single = _first_step(None, loss, data, labels, f"{folder}/{name}_single",
                             cross_modality=cross)
        mirrored = _first_step(strategy, loss, data, labels, f"{folder}/{name}_mirrored",
                               initial=single["before"], cross_modality=cross)
        results[name] = {"weights": _max_difference(single["after"], mirrored["after"]),
                         "update": _max_difference(single["after"], single["before"]),
                         "ema": _max_difference(single["ema"], mirrored["ema"]),
                         "losses_single": single["losses"],
                         "losses_mirrored": mirrored["losses"], "spread": mirrored["spread"]}
    return results


def _msinet_float64_step(strategy, settings, train, label_map, folder, initial=None):
    """One training step of MSINet (built by the factory, the objective of solution.py's
    defaults) in float64 on 64x32 images: the weights before and after (BN moving statistics
    included) and the logged losses."""
    import tf_keras as keras

    from reid_tf.losses.objective import Objective, ObjectiveConfig
    from reid_tf.models.factory import build_models
    from reid_tf.training.data import TrainingInput
    from reid_tf.training.optimizers import build_optimizer
    from reid_tf.training.trainer import Trainer

    keras.utils.set_random_seed(0)
    models, _, _ = build_models(settings, len(label_map), strategy=strategy)
    model = models.training_model
    if initial is not None:
        model.set_weights(initial)
    before = model.get_weights()
    data = TrainingInput(train, 4, 2, 1, 64, 32, None, seed=0, policy="msinet",
                         label_map=label_map, workers=1)
    objective = Objective(ObjectiveConfig(triplet_margin=None, triplet_exclude_self=True,
                                          triplet_clamp=False))
    trainer = Trainer(
        models=models, objective=objective, data=data, schedule=lambda epoch: 1e-3,
        output_folder=folder, epoch_num=1,
        optimizer_factory=lambda name: build_optimizer("sgd", 1e-3, momentum=0.9,
                                                       weight_decay=5e-4),
        evaluate_every_N_epochs=0, verbose=0, strategy=strategy)
    row = trainer.fit()[0]
    return {"before": before, "after": model.get_weights(),
            "names": [variable.name for variable in model.weights],
            "losses": {key: value for key, value in row.items() if key.startswith("loss")}}


def _msinet_checks(strategy, folder):
    """MSINet's first step on two replicas and on one device, in float64: in float32 this
    step cannot be compared (a 1e-6 change of the input images alone moves the one-device
    gradients by up to 40%, so any change of the summation order does too); in float64 the
    distributed step must be the one-device step to rounding. Returns the largest difference
    of any weight relative to that weight's own update, and of the BN moving statistics."""
    import tf_keras as keras

    from reid_tf.cli.settings import model_settings
    from reid_tf.data import load_dataset
    from reid_tf.data.pipeline import make_label_map
    from reid_tf.flags import FLAGS, parse_dataset_options

    frame = load_dataset("Synthetic", "", **parse_dataset_options(FLAGS.dataset_options))
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    label_map = make_label_map(train)
    settings = model_settings(FLAGS)  # 64x32 images
    saved = keras.backend.floatx()
    keras.backend.set_floatx("float64")
    try:
        single = _msinet_float64_step(None, settings, train, label_map, f"{folder}/msinet_1")
        mirrored = _msinet_float64_step(strategy, settings, train, label_map,
                                        f"{folder}/msinet_2", initial=single["before"])
    finally:
        keras.backend.set_floatx(saved)
    relative, statistics = 0.0, 0.0
    for name, before, one, two in zip(single["names"], single["before"], single["after"],
                                      mirrored["after"]):
        difference = float(np.max(np.abs(one - two))) if np.size(one) else 0.0
        if "moving_" in name:
            statistics = max(statistics, difference / float(np.max(np.abs(one))))
        else:
            moved = float(np.max(np.abs(one - before))) if np.size(one) else 0.0
            if moved > 1e-12:
                relative = max(relative, difference / moved)
    return {"weights_relative": relative, "statistics_relative": statistics,
            "dtype": str(single["after"][0].dtype), "losses_single": single["losses"],
            "losses_mirrored": mirrored["losses"]}


def _run_mirrored_checks(folder):
    from reid_tf.runtime import distribute
    distribute.configure_logical_cpus(2)
    import tensorflow as tf
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    strategy = distribute.create_strategy("mirrored")
    results = {"replicas": strategy.num_replicas_in_sync, "bn": _bn_checks(strategy),
               "batches": _batch_checks(strategy),
               "trainer": _trainer_checks(strategy, folder),
               "msinet": _msinet_checks(strategy, folder)}
    with open(os.path.join(folder, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("mirrored"))
    completed = subprocess.run([sys.executable, os.path.abspath(__file__), "mirrored", folder],
                               cwd=REPOSITORY, env=_environment(), capture_output=True,
                               text=True, timeout=400)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    with open(os.path.join(folder, "results.json")) as handle:
        return json.load(handle)


def test_mirrored_batch_norm_statistics_are_global(mirrored):
    assert mirrored["replicas"] == 2
    for name, result in mirrored["bn"].items():
        assert result["variance_moved"] > 0.01, name  # the statistics were updated
        for key in ("outputs", "input_gradients", "gamma_gradients", "moving_mean",
                    "moving_variance", "moving_variance_numpy"):
            assert result.get(key, 0.0) < 1e-5, (name, key, result[key])
    assert {"msinet_4d", "msinet_2d"} <= set(mirrored["bn"])


def test_mirrored_batches_hold_whole_identities(mirrored):
    plain = mirrored["batches"]["plain"]
    assert plain["received"] == [[[0, 0, 1, 1], [2, 2, 3, 3]]] * 2
    assert plain["split"] == [[0, 0, 1, 1], [2, 2, 3, 3]]
    cross = mirrored["batches"]["cross_modality"]
    # [V: 0 0 1 1 2 2 3 3 | I: 0 0 1 1 2 2 3 3]: each replica its visible then infrared part.
    assert cross["received"] == [[[0, 0, 1, 1, 0, 0, 1, 1], [2, 2, 3, 3, 2, 2, 3, 3]]] * 2
    assert cross["split"] == [[0, 0, 1, 1, 0, 0, 1, 1], [2, 2, 3, 3, 2, 2, 3, 3]]
    assert plain["gathered_equal"] == cross["gathered_equal"] == [True, True]


@pytest.mark.parametrize("name, terms", [
    ("flipreid", {"loss_triplet", "loss_classification", "loss_flipping"}),
    ("cmnas", {"loss_triplet", "loss_classification", "loss_sp", "loss_cmmd"})])
def test_mirrored_first_step_equals_one_device_step(mirrored, name, terms):
    result = mirrored["trainer"][name]
    assert result["update"] > 1e-3  # the step moved the weights
    assert result["weights"] < 1e-5 and result["ema"] < 1e-5
    assert result["spread"] == 0.0  # every replica holds the same values
    single, distributed = result["losses_single"], result["losses_mirrored"]
    assert set(single) == set(distributed) == terms | {"loss"}
    for key, value in single.items():
        assert distributed[key] == pytest.approx(value, rel=1e-5), key


def test_mirrored_msinet_step_equals_one_device_step_in_float64(mirrored):
    """MSINet's distributed first step (synchronised BN over 80 layers, gathered batch-hard
    triplet, cross-entropy) is the one-device step: in float64, every weight to 1e-8 of its
    own update and the BN moving statistics to rounding (these were off by about 1e-2 while
    MSINet's BNs applied the unbiased factor with the replica's own count)."""
    result = mirrored["msinet"]
    assert result["dtype"] == "float64"
    assert result["weights_relative"] < 1e-8
    assert result["statistics_relative"] < 1e-10
    single, distributed = result["losses_single"], result["losses_mirrored"]
    assert set(single) == set(distributed) == {"loss", "loss_triplet", "loss_classification"}
    for key, value in single.items():
        assert distributed[key] == pytest.approx(value, rel=1e-10), key


def test_factory_synchronises_every_msinet_batch_norm(mirrored):
    result = mirrored["trainer"]
    assert result["msinet_synchronised"] == result["msinet_batch_norms"] == 80


# --------------------------------------------------------------------------------------------
# Two workers on 127.0.0.1 (multi_worker)
# --------------------------------------------------------------------------------------------
def _free_ports(count):
    sockets = []
    for _ in range(count):
        handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        handle.bind(("127.0.0.1", 0))
        sockets.append(handle)
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


def _run_workers(commands, folder, timeout):
    """Start one process per ``(command, environment)`` (output to a log file each, not pipes:
    a worker blocked on a full pipe would stall the other's collectives) and wait for all,
    within ``timeout`` seconds in total. Returns the exit codes and the logs."""
    logs = [os.path.join(folder, f"worker{index}.log") for index in range(len(commands))]
    processes = []
    try:
        for (command, environment), log in zip(commands, logs):
            with open(log, "w") as handle:
                processes.append(subprocess.Popen(command, cwd=REPOSITORY, env=environment,
                                                  stdout=handle, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for log in logs:
        with open(log, errors="replace") as handle:
            outputs.append(handle.read())
    return [process.returncode for process in processes], outputs


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def _run_solution_keeping_weights(weights_path, arguments):
    """``solution.py arguments`` that also writes the final training-model weights to
    ``weights_path`` (a non-chief worker's run folder is removed at the end of its run)."""
    import runpy

    from reid_tf.cli import train

    save_weights = train.save_weights

    def saving(models, weight_targets, run_folder, *args, **kwargs):
        save_weights(models, weight_targets, run_folder, *args, **kwargs)
        weight_targets[-2].save_weights(weights_path)

    train.save_weights = saving
    sys.argv = [os.path.join(REPOSITORY, "solution.py"), *arguments]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _h5_weights(path):
    import h5py
    values = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: values.__setitem__(name, item[()])
                          if hasattr(item, "shape") else None)
    return values


def test_two_workers_train_and_search(tmp_path):
    """Two processes on 127.0.0.1 train a few steps through solution.py, then search a few
    steps with python -m nas.search; only the chief (worker 0) writes the run folders. Both
    workers end the training (two steps, history.csv) with the same weights, exactly.

    A one-device run of the same global batch is not compared here: in float32 this MSINet
    step is too ill-conditioned for it (a 1e-6 change of the input images alone moves the
    one-device gradients by up to 40%), and the float64 comparison is
    :func:`test_mirrored_msinet_step_equals_one_device_step_in_float64`."""
    cache = tmp_path / "cache"
    data = [f"--dataset_options=cache_folder_path={cache},{TINY_SYNTHETIC}",
            "--image_height=64", "--image_width=32", "--image_num_per_identity=2",
            "--workers=1"]
    # Generate the dataset once, before the workers start.
    from reid_tf.data.synthetic import prepare_synthetic_dataset
    from reid_tf.flags import parse_dataset_options
    options = parse_dataset_options(data[0].split("=", 1)[1].split(","))
    prepare_synthetic_dataset("Synthetic", options.pop("cache_folder_path"), **options)

    training = ["--dataset_name=Synthetic", *data,
                "--backbone_model_name=msinet", "--identity_num_per_batch=4",
                "--steps_per_epoch=2", "--epoch_num=1", "--freeze_backbone_for_N_epochs=0",
                "--testing_size=0", "--optimizer_name=sgd", "--learning_rate_mode=constant",
                "--learning_rate_start=1e-3", "--learning_rate_end=1e-3",
                "--use_data_augmentation_in_training=false"]
    search = [sys.executable, "-m", "nas.search", "--dataset_name=Synthetic", *data,
              "--strategy=multi_worker", "--identity_num_per_batch=2", "--steps_per_epoch=2",
              "--epoch_num=1", "--evaluation_interval=0", "--search_warmup_epochs=0",
              "--genotype_interval=1",
              "--clean_bilevel"]  # an architecture step and a weight step in both steps
    temporary = tmp_path / "temporary"  # where worker 1 writes (and removes) its outputs
    temporary.mkdir()
    for name, command in (("train", None), ("search", search)):
        ports = _free_ports(2)
        commands = []
        for index in range(2):
            if name == "train":
                command = [sys.executable, os.path.abspath(__file__), "solution",
                           str(tmp_path / f"worker{index}_weights.h5"), *training,
                           "--strategy=multi_worker"]
            commands.append((command + [f"--output_folder_path={tmp_path / name}"],
                             _environment(TF_CONFIG=_tf_config(ports, index),
                                          TMPDIR=str(temporary))))
        codes, outputs = _run_workers(commands, str(tmp_path), timeout=600)
        assert codes == [0] * len(commands), "\n\n".join(output[-4000:] for output in outputs)
        for output in outputs[:2]:
            assert "with 2 replica(s) in sync" in output
        # Only the chief's run folder exists under --output_folder_path; worker 1's
        # temporary folder is gone.
        assert len(os.listdir(tmp_path / name)) == 1, os.listdir(tmp_path / name)
        assert not [entry for entry in os.listdir(temporary) if "worker" in entry]

    run_folder = tmp_path / "train" / "Synthetic_msinet"
    for file_name in ("training_model.h5", "inference_model.h5", "history.csv", "checkpoint"):
        assert (run_folder / file_name).exists(), file_name
    with open(run_folder / "history.csv") as handle:
        rows = handle.read().splitlines()
    assert len(rows) == 2 and "steps" in rows[0]
    search_folder = tmp_path / "search" / "Synthetic_search"
    for file_name in ("genotype.json", "history.csv", "search.log", "checkpoint"):
        assert (search_folder / file_name).exists(), file_name

    # The final weights (every variable: kernels, BN statistics, GeM powers ...).
    workers = [_h5_weights(tmp_path / f"worker{index}_weights.h5") for index in range(2)]
    chief = _h5_weights(run_folder / "training_model.h5")
    assert workers[0].keys() == workers[1].keys() == chief.keys() and len(chief) > 100
    for name in chief:
        # The all-reduced gradients and BN statistics are the same on both workers.
        np.testing.assert_array_equal(workers[0][name], workers[1][name], err_msg=name)
        np.testing.assert_array_equal(workers[0][name], chief[name], err_msg=name)


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _run_mirrored_checks(sys.argv[2])
    elif sys.argv[1] == "solution":
        _run_solution_keeping_weights(sys.argv[2], sys.argv[3:])
