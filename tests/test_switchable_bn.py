"""SwitchableBatchNormalization and TorchBatchNormalization against numpy (cmnas.md §2, §14)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import numpy as np
import pytest
import tensorflow as tf

from reid_tf.models.switchable_bn import (
    SwitchableBatchNormalization,
    TorchBatchNormalization,
)

EPS = 1e-5
SHAPE = (6, 3, 2, 4)  # even batch, NHWC, 4 channels


def numpy_bn(x, gamma, beta, mean=None, var=None):
    """BN with batch statistics (biased variance) when mean/var are None."""
    if mean is None:
        mean = x.mean(axis=(0, 1, 2))
        var = x.var(axis=(0, 1, 2))
    return gamma * (x - mean) / np.sqrt(var + EPS) + beta


def unbiased_var(x):
    n = x.shape[0] * x.shape[1] * x.shape[2]
    return x.var(axis=(0, 1, 2)) * n / (n - 1)


def make_layer(switch, with_relu=False, mixed=False, seed=0):
    """A built layer whose three BN sets all have distinct, random parameters and stats."""
    layer = SwitchableBatchNormalization(switch, with_relu=with_relu, mixed=mixed,
                                         name=f"sbn_{switch}_{int(mixed)}")
    layer.build(SHAPE)
    rng = np.random.default_rng(seed)
    params = {}
    for set_name, bn in layer.bn_sets.items():
        values = {"gamma": rng.uniform(0.5, 1.5, 4), "beta": rng.normal(size=4),
                  "moving_mean": rng.normal(size=4), "moving_variance": rng.uniform(0.5, 2, 4)}
        for key, value in values.items():
            getattr(bn, key).assign(value.astype(np.float32))
        params[set_name] = {k: v.astype(np.float32) for k, v in values.items()}
    return layer, params


def stats(layer, set_name):
    bn = layer.bn_sets[set_name]
    return bn.moving_mean.numpy(), bn.moving_variance.numpy()


def random_input(seed=1, shape=SHAPE):
    return np.random.default_rng(seed).normal(2.0, 3.0, size=shape).astype(np.float32)


@pytest.mark.parametrize("switch", [2, -1, True, 0.5, "0"])
def test_invalid_switch_raises(switch):
    with pytest.raises(ValueError, match="switch"):
        SwitchableBatchNormalization(switch)


def test_invalid_static_mode_raises():
    layer, _ = make_layer(0)
    with pytest.raises(ValueError, match="mode"):
        layer(random_input(), 3, training=True)


def test_odd_batch_in_mode_0_raises():
    layer, _ = make_layer(0)
    with pytest.raises(ValueError, match="even"):
        layer(random_input(shape=(5, 3, 2, 4)), 0, training=True)


def test_share_mode0_is_one_bn_over_whole_batch_and_updates_only_sharable():
    layer, p = make_layer(1)
    x = random_input()
    y = layer(x, 0, training=True).numpy()
    sp = p["sharable_bn"]
    np.testing.assert_allclose(y, numpy_bn(x, sp["gamma"], sp["beta"]), atol=1e-5)
    mean, var = stats(layer, "sharable_bn")
    np.testing.assert_allclose(mean, 0.9 * sp["moving_mean"] + 0.1 * x.mean(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, 0.9 * sp["moving_variance"] + 0.1 * unbiased_var(x),
                               rtol=1e-5)
    for set_name in ("visible_bn", "thermal_bn"):
        mean, var = stats(layer, set_name)
        np.testing.assert_array_equal(mean, p[set_name]["moving_mean"])
        np.testing.assert_array_equal(var, p[set_name]["moving_variance"])


def test_split_mode0_normalises_each_half_with_its_own_statistics():
    layer, p = make_layer(0)
    x = random_input()
    x[3:] = x[3:] * 0.1 - 7.0  # very different thermal statistics
    y = layer(x, 0, training=True).numpy()
    vp, tp = p["visible_bn"], p["thermal_bn"]
    np.testing.assert_allclose(y[:3], numpy_bn(x[:3], vp["gamma"], vp["beta"]), atol=1e-5)
    np.testing.assert_allclose(y[3:], numpy_bn(x[3:], tp["gamma"], tp["beta"]), atol=1e-4)
    for set_name, half in (("visible_bn", x[:3]), ("thermal_bn", x[3:])):
        mean, var = stats(layer, set_name)
        np.testing.assert_allclose(
            mean, 0.9 * p[set_name]["moving_mean"] + 0.1 * half.mean(axis=(0, 1, 2)),
            rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            var, 0.9 * p[set_name]["moving_variance"] + 0.1 * unbiased_var(half), rtol=1e-5)
    mean, var = stats(layer, "sharable_bn")
    np.testing.assert_array_equal(mean, p["sharable_bn"]["moving_mean"])
    np.testing.assert_array_equal(var, p["sharable_bn"]["moving_variance"])


def test_split_mode0_halves_equal_mode1_and_mode2_with_same_updates():
    mixed_layer, _ = make_layer(0, with_relu=True, seed=3)
    single_layer, _ = make_layer(0, with_relu=True, seed=3)
    x = random_input(seed=4)
    y = mixed_layer(x, 0, training=True).numpy()
    thermal_before = stats(single_layer, "thermal_bn")
    y_visible = single_layer(x[:3], 1, training=True).numpy()
    for a, b in zip(thermal_before, stats(single_layer, "thermal_bn")):
        np.testing.assert_array_equal(a, b)  # mode 1 leaves the thermal set alone
    y_thermal = single_layer(x[3:], 2, training=True).numpy()
    np.testing.assert_allclose(y[:3], y_visible, atol=1e-6)
    np.testing.assert_allclose(y[3:], y_thermal, atol=1e-6)
    for set_name in ("visible_bn", "thermal_bn", "sharable_bn"):
        for a, b in zip(stats(mixed_layer, set_name), stats(single_layer, set_name)):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_eval_mode_uses_the_selected_running_statistics():
    x = random_input(seed=5)
    split, p = make_layer(0)
    for mode, set_name in ((1, "visible_bn"), (2, "thermal_bn")):
        q = p[set_name]
        expected = numpy_bn(x, q["gamma"], q["beta"], q["moving_mean"], q["moving_variance"])
        np.testing.assert_allclose(split(x, mode, training=False).numpy(), expected, atol=1e-5)
    # Mode 0 in eval: each half with its own set's running statistics.
    y = split(x, 0, training=False).numpy()
    vp, tp = p["visible_bn"], p["thermal_bn"]
    np.testing.assert_allclose(y[:3], numpy_bn(x[:3], vp["gamma"], vp["beta"], vp["moving_mean"],
                                               vp["moving_variance"]), atol=1e-5)
    np.testing.assert_allclose(y[3:], numpy_bn(x[3:], tp["gamma"], tp["beta"], tp["moving_mean"],
                                               tp["moving_variance"]), atol=1e-5)
    share, p = make_layer(1)
    sp = p["sharable_bn"]
    expected = numpy_bn(x, sp["gamma"], sp["beta"], sp["moving_mean"], sp["moving_variance"])
    np.testing.assert_allclose(share(x, 1, training=False).numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(share(x, 1, training=False).numpy(),
                                  share(x, 2, training=False).numpy())
    # Eval mode never touches the statistics.
    for set_name in ("visible_bn", "thermal_bn"):
        np.testing.assert_array_equal(stats(split, set_name)[0],
                                      make_layer(0)[1][set_name]["moving_mean"])


def test_relu_follows_normalisation():
    layer, p = make_layer(1, with_relu=True)
    x = random_input(seed=6)
    sp = p["sharable_bn"]
    expected = np.maximum(numpy_bn(x, sp["gamma"], sp["beta"]), 0.0)
    y = layer(x, 2, training=True).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert (y == 0).any()


def test_tensor_mode_in_tf_function_matches_python_int():
    x = tf.constant(random_input(seed=7))
    reference, _ = make_layer(0, seed=8)
    dynamic, _ = make_layer(0, seed=8)

    @tf.function
    def run(inputs, mode):
        return dynamic(inputs, mode, training=True)

    for mode in (0, 1, 2):
        expected = reference(x, mode, training=True).numpy()
        np.testing.assert_allclose(run(x, tf.constant(mode)).numpy(), expected, atol=1e-6)
        for set_name in ("visible_bn", "thermal_bn", "sharable_bn"):
            for a, b in zip(stats(reference, set_name), stats(dynamic, set_name)):
                np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="mode"):
        run(x, tf.constant(3))

    @tf.function
    def run_eval(inputs, mode):
        return dynamic(inputs, mode, training=False)

    for mode in (1, 2):
        np.testing.assert_allclose(run_eval(x, tf.constant(mode)).numpy(),
                                   reference(x, mode, training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("switch,used", [(0, ("visible_bn", "thermal_bn")), (1, ("sharable_bn",))])
def test_unused_bn_sets_get_no_gradient(switch, used):
    layer, _ = make_layer(switch)
    x = tf.constant(random_input(seed=9))
    weights = {f"{name}/{key}": getattr(bn, key) for name, bn in layer.bn_sets.items()
               for key in ("gamma", "beta")}

    @tf.function
    def gradients(mode):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x, mode, training=True)) * tf.range(4.0))
        return dict(zip(weights, tape.gradient(loss, list(weights.values()))))

    for grads in (gradients(0), gradients(tf.constant(0))):
        for key, gradient in grads.items():
            if key.split("/")[0] in used:
                assert gradient is not None and np.abs(gradient.numpy()).sum() > 0, key
            else:
                assert gradient is None, key


def test_mixed_layer_blends_split_and_share():
    layer, p = make_layer(0, with_relu=True, mixed=True, seed=10)
    assert layer.alpha is not None and layer.derived_switch() == 0  # tie -> split
    x = random_input(seed=11)
    vp, tp, sp = p["visible_bn"], p["thermal_bn"], p["sharable_bn"]
    split = np.concatenate([numpy_bn(x[:3], vp["gamma"], vp["beta"]),
                            numpy_bn(x[3:], tp["gamma"], tp["beta"])])
    share = numpy_bn(x, sp["gamma"], sp["beta"])
    # Default: softmax(alpha = 0) = (0.5, 0.5).
    y = layer(x, 0, training=True).numpy()
    np.testing.assert_allclose(y, np.maximum(0.5 * split + 0.5 * share, 0), atol=1e-5)
    # Every set updated its statistics (both paths ran in training mode).
    for set_name in ("visible_bn", "thermal_bn", "sharable_bn"):
        assert not np.allclose(stats(layer, set_name)[0], p[set_name]["moving_mean"])
    pi = np.array([0.2, 0.8], np.float32)
    y = layer(x, 0, training=True, arch_weights=pi).numpy()
    np.testing.assert_allclose(y, np.maximum(0.2 * split + 0.8 * share, 0), atol=1e-5)
    logits = np.array([1.0, -1.0], np.float32)
    w = np.exp(logits) / np.exp(logits).sum()
    y = layer(x, 0, training=True, arch_logits=logits).numpy()
    np.testing.assert_allclose(y, np.maximum(w[0] * split + w[1] * share, 0), atol=1e-5)
    layer.alpha.assign([0.1, 0.3])
    assert layer.derived_switch() == 1
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, 0, training=True) * np.arange(4, dtype=np.float32))
    assert tape.gradient(loss, layer.alpha) is not None


def test_torch_batch_normalization_center_false_and_biased_option():
    bnneck = TorchBatchNormalization(center=False, name="neck")
    x = random_input(seed=12, shape=(8, 5))
    y = bnneck(x, training=True).numpy()
    assert [v.name.split("/")[-1] for v in bnneck.weights] == [
        "gamma:0", "moving_mean:0", "moving_variance:0"]
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + EPS)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(bnneck.moving_variance.numpy(), 0.9 + 0.1 * x.var(0) * 8 / 7,
                               rtol=1e-5)
    biased = TorchBatchNormalization(unbiased_moving_variance=False, name="biased")
    biased(x, training=True)
    np.testing.assert_allclose(biased.moving_variance.numpy(), 0.9 + 0.1 * x.var(0), rtol=1e-5)
    assert not TorchBatchNormalization.from_config(bnneck.get_config()).center
