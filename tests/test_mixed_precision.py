"""Mixed precision: bfloat16 MSINet training through the trainer, float16 loss scaling."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf.losses.objective import Objective, ObjectiveConfig
from reid_tf.models.base import ReIDModels
from reid_tf.models.msinet import build_msinet_models
from reid_tf.training.optimizers import TorchSGD
from reid_tf.training.trainer import Trainer


@pytest.fixture
def policy():
    """Set a global dtype policy for one test; float32 must be back afterwards."""
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


class FixedBatches:
    """The trainer's data interface over a fixed list of (images, labels) batches."""

    cross_modality = False

    def __init__(self, batches):
        self.batches = batches
        self.steps_per_epoch = len(batches)

    def epoch_dataset(self, epoch_index, start_step=0):
        return iter(self.batches[start_step:])

    def get_state(self):
        return ""

    def set_state(self, text):
        del text


def _sgd(learning_rate, momentum=0.0):
    return lambda name: TorchSGD(learning_rate=learning_rate, momentum=momentum)


def test_bfloat16_msinet_trains_with_float32_variables_outputs_and_batch_norm(tmp_path, policy):
    policy("mixed_bfloat16")
    models = build_msinet_models("msmt", 4, input_shape=(64, 32, 3))
    model = models.training_model
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 2).astype(np.int32)
    batches = [(tf.constant(rng.standard_normal((8, 64, 32, 3), dtype=np.float32)),
                tf.constant(labels)) for _ in range(3)]
    before = [variable.numpy().copy() for variable in model.trainable_variables]
    trainer = Trainer(models=models, output_folder=str(tmp_path), epoch_num=1, verbose=0,
                      objective=Objective(ObjectiveConfig(triplet_margin=0.3,
                                                          triplet_normalize=True,
                                                          label_smoothing=0.1)),
                      data=FixedBatches(batches), schedule=lambda epoch: 0.01,
                      optimizer_factory=_sgd(0.01, momentum=0.9), evaluate_every_N_epochs=0)
    assert not trainer.loss_scaling
    rows = trainer.fit()
    assert len(rows) == 1 and rows[0]["steps"] == 3
    assert np.isfinite(rows[0]["loss"]) and rows[0]["loss"] > 0
    assert np.isfinite(rows[0]["loss_classification"]) and np.isfinite(rows[0]["loss_triplet"])
    # Every variable (BN statistics included) is float32, and the update reached them.
    assert {variable.dtype for variable in model.weights} == {tf.float32}
    changed = [not np.array_equal(old, variable.numpy())
               for old, variable in zip(before, model.trainable_variables)]
    assert sum(changed) > 0.9 * len(changed)
    # The body computes in bfloat16; pooled features, heads and losses' inputs are float32.
    assert model.get_layer("cells_0_conv1a_conv").compute_dtype == "bfloat16"
    for name in ("gap", "f_pool", "fc", "head_bn", "f_head_bn", "classifier", "f_classifier"):
        assert model.get_layer(name).compute_dtype == "float32", name
    outputs = model(batches[0][0], training=True)
    for tensor in outputs["embeddings"] + outputs["logits"] + outputs["bnneck"]:
        assert tensor.dtype == tf.float32
    features = models.inference_model(batches[0][0], training=False)
    assert features.dtype == tf.float32 and features.shape == (8, 768)
    assert np.all(np.isfinite(features.numpy()))
    # Batch norm: 16-bit activations in and out, statistics and parameters in float32.
    bn = model.get_layer("cells_0_conv2a_bn")
    assert bn.compute_dtype == "bfloat16" and bn.fused
    assert bn.moving_mean.dtype == tf.float32 and bn.gamma.dtype == tf.float32
    mean = bn.moving_mean.numpy()
    assert np.all(np.isfinite(mean)) and np.any(mean != 0.0)


def _dense_models(prefix_layers, backbone_gain=1.0):
    """Two Dense layers without bias: ``backbone_dense`` (2 -> 2, ``gain * I``), then
    ``head_dense`` (2 -> 1, ones)."""
    inputs = keras.Input(shape=(2,), name="images")
    hidden = keras.layers.Dense(2, use_bias=False,
                                kernel_initializer=keras.initializers.Identity(backbone_gain),
                                name="backbone_dense")(inputs)
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones",
                                 name="head_dense")(hidden)
    model = keras.Model(inputs, outputs)
    return ReIDModels(training_model=model, inference_model=model, embedding_model=model,
                      head_model=model, backbone_prefixes=prefix_layers)


def test_float16_loss_scaling_unscales_the_gradients(tmp_path, policy):
    policy("mixed_float16")
    models = _dense_models(())
    # total = mean over the batch of the output: d total / d head kernel = mean(hidden).
    trainer = Trainer(models=models, output_folder=str(tmp_path), epoch_num=1, verbose=0,
                      objective=lambda outputs, labels: {
                          "total": tf.reduce_mean(tf.cast(outputs, tf.float32))},
                      data=FixedBatches([]), schedule=lambda epoch: 0.1,
                      optimizer_factory=_sgd(0.1), evaluate_every_N_epochs=0)
    assert trainer.loss_scaling
    optimizer = trainer.groups[-1][2]
    assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert float(optimizer.loss_scale) == 2.0 ** 15
    step = trainer._make_train_step()
    # Scaled by 2**15 the float16 gradients stay below 65504 (at most 0.5 * 2 * 2**15).
    images = tf.constant([[0.25, 0.5], [0.75, 1.5]])
    losses = step(images, tf.constant([0, 1]))
    assert float(losses["total"]) == pytest.approx(1.5)  # mean(0.25 + 0.5, 0.75 + 1.5)
    # SGD (lr 0.1) with the true gradients: head kernel 1 - 0.1 * mean(x) = [0.95, 0.9];
    # backbone kernel I - 0.1 * mean(x)^T head^T = I - 0.1 * [[0.5, 0.5], [1, 1]].
    head = models.training_model.get_layer("head_dense").kernel.numpy()
    backbone = models.training_model.get_layer("backbone_dense").kernel.numpy()
    np.testing.assert_allclose(head[:, 0], [0.95, 0.9], rtol=1e-3)
    np.testing.assert_allclose(backbone, [[0.95, -0.05], [-0.1, 0.9]], rtol=1e-3, atol=1e-3)
    assert float(optimizer.loss_scale) == 2.0 ** 15  # a finite step keeps the scale


def test_float16_overflow_skips_every_group_and_halves_the_scale(tmp_path, policy):
    policy("mixed_float16")
    models = _dense_models(("backbone_",), backbone_gain=1e-3)
    # Scaled by 2**15, d loss / d output is 2**14 per sample: the backbone's float16 kernel
    # gradient sum_b x_b * 2**14 = 6 * 2**14 overflows (> 65504), the head's (hidden ~ 3e-3)
    # does not. Both groups must skip the step anyway.
    trainer = Trainer(models=models, output_folder=str(tmp_path), epoch_num=1, verbose=0,
                      objective=lambda outputs, labels: {
                          "total": tf.reduce_mean(tf.cast(outputs, tf.float32))},
                      data=FixedBatches([]), schedule=lambda epoch: 0.1,
                      optimizer_factory=_sgd(0.1), evaluate_every_N_epochs=0,
                      backbone_learning_rate_multiplier=0.5)
    assert [name for name, *_ in trainer.groups] == ["backbone", "head"]
    step = trainer._make_train_step()
    before = [variable.numpy().copy() for variable in models.training_model.weights]
    step(tf.constant([[3.0, 3.0], [3.0, 3.0]]), tf.constant([0, 1]))
    for old, variable in zip(before, models.training_model.weights):
        np.testing.assert_array_equal(variable.numpy(), old)
    for _, _, optimizer, _ in trainer.groups:
        assert float(optimizer.loss_scale) == 2.0 ** 14
        assert int(optimizer.iterations.numpy()) == 1
