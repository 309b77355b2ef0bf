"""WeightEMA: one update, convergence, reset, BN statistics, checkpoints (cmnas.md §6.6)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf.models.switchable_bn import SwitchableBatchNormalization
from reid_tf.training.ema import WeightEMA


def small_model():
    inputs = keras.Input((4, 4, 3))
    mode = keras.Input(batch_shape=(), dtype=tf.int32)
    x = keras.layers.Conv2D(5, 1, use_bias=False, name="conv")(inputs)
    x = SwitchableBatchNormalization(0, with_relu=True, name="sbn")(x, mode)
    return keras.Model([inputs, mode], x)


def test_one_update_and_bn_statistics_are_tracked():
    model = small_model()
    ema = WeightEMA(model, decay=0.997)
    # Conv kernel + 3 BN sets x (gamma, beta, moving mean, moving variance).
    assert len(ema.shadow) == 1 + 12
    assert {v.name for v in ema.variables_tracked} >= {
        "sbn/visible_bn/moving_mean:0", "sbn/sharable_bn/moving_variance:0"}
    before = ema.get_weights()
    x = np.random.default_rng(0).normal(size=(4, 4, 4, 3)).astype(np.float32)
    model([x, 0], training=True)  # moves the visible/thermal statistics
    kernel = model.get_layer("conv").kernel
    kernel.assign(kernel + 1.0)
    ema.update()
    for old, live, new in zip(before, ema.variables_tracked, ema.get_weights()):
        np.testing.assert_allclose(new, 0.997 * old + 0.003 * live.numpy(), rtol=1e-6,
                                   atol=1e-7)
    shadow = ema.shadow_dict()
    # The statistics moved, so their shadow moved too; the unused sharable set did not.
    assert not np.array_equal(shadow["sbn/visible_bn/moving_mean:0"],
                              before[[v.name for v in ema.variables_tracked].index(
                                  "sbn/visible_bn/moving_mean:0")])
    np.testing.assert_array_equal(shadow["sbn/sharable_bn/moving_mean:0"], np.zeros(5))
    np.testing.assert_array_equal(shadow["sbn/sharable_bn/gamma:0"], np.ones(5))


def test_constant_weights_converge_and_unchanged_variables_stay_exact():
    target = tf.Variable([0.3, -2.0, 7.1], name="target")
    constant = tf.Variable([0.1, 0.7], name="constant")
    counter = tf.Variable(3, dtype=tf.int64, name="counter")
    ema = WeightEMA([target, constant, counter], decay=0.9)
    assert len(ema.shadow) == 2  # the integer counter is not averaged
    target.assign([1.0, 1.0, 1.0])

    @tf.function
    def steps(n):
        for _ in tf.range(n):
            ema.update()

    steps(tf.constant(200))
    np.testing.assert_allclose(ema.shadow[0].numpy(), [1.0, 1.0, 1.0], atol=1e-6)
    # Closed form after n steps: 1 + (s0 - 1) * 0.9^n.
    ema.set_weights([np.array([0.3, -2.0, 7.1], np.float32), constant.numpy()])
    steps(tf.constant(5))
    np.testing.assert_allclose(ema.shadow[0].numpy(),
                               1.0 + (np.array([0.3, -2.0, 7.1]) - 1.0) * 0.9 ** 5, rtol=1e-5)
    np.testing.assert_array_equal(ema.shadow[1].numpy(), constant.numpy())


def test_copy_shadow_to_model_resets_live_weights():
    model = small_model()
    ema = WeightEMA(model, decay=0.5)
    kernel = model.get_layer("conv").kernel
    original = kernel.numpy()
    kernel.assign(original + 4.0)
    ema.update()
    ema.copy_shadow_to_model()
    np.testing.assert_allclose(kernel.numpy(), original + 2.0, rtol=1e-6)
    for shadow, live in zip(ema.shadow, ema.variables_tracked):
        np.testing.assert_array_equal(shadow.numpy(), live.numpy())


def test_checkpoint_round_trip_and_set_weights_errors(tmp_path):
    variable = tf.Variable([1.0, 2.0], name="w")
    ema = WeightEMA([variable], decay=0.997)
    variable.assign([3.0, 4.0])
    ema.update()
    saved = ema.get_weights()
    path = tf.train.Checkpoint(ema=ema).save(str(tmp_path / "ckpt"))
    ema.set_weights([np.zeros(2, np.float32)])
    tf.train.Checkpoint(ema=ema).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(ema.get_weights()[0], saved[0])
    # The live variable is not part of the EMA's checkpoint.
    names = [name for name, _ in tf.train.list_variables(path)]
    assert sum("shadow" in name for name in names) == 1
    with pytest.raises(ValueError, match="expected 1 arrays"):
        ema.set_weights([])
    with pytest.raises(ValueError, match="shape"):
        ema.set_weights([np.zeros(3)])
    with pytest.raises(ValueError, match="decay"):
        WeightEMA([variable], decay=1.5)
