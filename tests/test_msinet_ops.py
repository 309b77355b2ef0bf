"""MSINet interaction operations, basic layers and initialisers against numpy (msinet.md §1, §2,
§4.4, §14.11-14)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf.models import msinet_ops
from reid_tf.models.msinet_ops import (
    ChannelGate,
    CrossAttention,
    DepthwiseKaimingNormal,
    FrozenBetaBatchNormalization,
    InteractionExchange,
    InteractionIdentity,
    make_operation,
)


def _to_nhwc(matrix, height, width):
    """(C, N) channel-major matrix (PyTorch view) -> (1, H, W, C) channels-last tensor."""
    matrix = np.asarray(matrix, np.float32)
    return matrix.T.reshape(1, height, width, matrix.shape[0])


def _numpy_cross_attention(a, b, gamma):
    """Reference computation on (B, H, W, C) inputs in the PyTorch (B, C, N) layout."""
    batch, height, width, channels = a.shape
    a_t = a.reshape(batch, -1, channels).transpose(0, 2, 1).astype(np.float64)  # (B, C, N)
    b_t = b.reshape(batch, -1, channels).transpose(0, 2, 1).astype(np.float64)

    def output(query, key, value):
        energy = query @ key.transpose(0, 2, 1)  # (B, C, C)
        energy = energy.max(axis=-1, keepdims=True) - energy
        attention = np.exp(energy - energy.max(axis=-1, keepdims=True))
        attention /= attention.sum(axis=-1, keepdims=True)
        out = attention @ value  # (B, C, N)
        return gamma * out.transpose(0, 2, 1).reshape(a.shape) + value.transpose(0, 2, 1).reshape(
            a.shape)

    return output(a_t, b_t, a_t), output(b_t, a_t, b_t)


def test_cross_attention_test_vector():
    a = _to_nhwc([[1, 2], [3, 4]], 1, 2)
    b = _to_nhwc([[0, 1], [1, 0]], 1, 2)
    op = CrossAttention(name="ca")
    op([a, b])
    op.gamma.assign([0.5])
    out_a, out_b = op([a, b])
    np.testing.assert_allclose(out_a.numpy()[0].reshape(2, 2).T,
                               [[2.231059, 3.731059], [4.231059, 5.731059]], atol=2e-6)
    np.testing.assert_allclose(out_b.numpy()[0].reshape(2, 2).T,
                               [[0.059601, 1.440398], [1.059601, 0.440399]], atol=2e-6)


def test_cross_attention_random_matches_numpy_and_is_identity_at_init():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 4, 6)).astype(np.float32) * 0.5
    b = rng.normal(size=(2, 3, 4, 6)).astype(np.float32) * 0.5
    op = CrossAttention(name="ca_random")
    out_a, out_b = op([a, b])
    # gamma starts at 0: exact identity (spec check 11).
    assert op.gamma.numpy().tolist() == [0.0]
    np.testing.assert_array_equal(out_a.numpy(), a)
    np.testing.assert_array_equal(out_b.numpy(), b)
    op.gamma.assign([0.7])
    out_a, out_b = op([a, b])
    expected_a, expected_b = _numpy_cross_attention(a, b, 0.7)
    np.testing.assert_allclose(out_a.numpy(), expected_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_b.numpy(), expected_b, rtol=1e-5, atol=1e-5)
    assert len(op.trainable_weights) == 1 and op.gamma.shape == (1,)


def test_channel_gate_spec_check_and_shared_weights():
    op = ChannelGate(name="gate")
    ones = np.ones((1, 2, 3, 32), np.float32)
    op([ones, ones])
    assert op.fc1_kernel.shape == (32, 2) and op.fc2_kernel.shape == (2, 32)
    op.fc1_kernel.assign(np.full((32, 2), 0.1, np.float32))
    op.fc1_bias.assign(np.zeros(2, np.float32))
    op.fc2_kernel.assign(np.full((2, 32), 0.2, np.float32))
    op.fc2_bias.assign(np.full(32, -0.5, np.float32))
    # The same gate weights serve both branches: a all ones, b all twos.
    out_a, out_b = op([ones, 2 * ones])
    np.testing.assert_allclose(out_a.numpy(), np.full(ones.shape, 0.6856802), rtol=1e-6)
    np.testing.assert_allclose(out_b.numpy(), np.full(ones.shape, 1.7739083), rtol=1e-6)
    # 32 * 2 + 2 + 2 * 32 + 32 parameters, one set only.
    assert sum(int(np.prod(w.shape)) for w in op.weights) == 162


def test_channel_gate_random_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 4, 3, 48)).astype(np.float32)
    b = rng.normal(size=(2, 4, 3, 48)).astype(np.float32)
    op = ChannelGate(name="gate_random")
    op([a, b])
    assert op.hidden == 3  # 48 // 16
    w1, b1 = rng.normal(size=(48, 3)), rng.normal(size=3)
    w2, b2 = rng.normal(size=(3, 48)), rng.normal(size=48)
    for variable, value in zip((op.fc1_kernel, op.fc1_bias, op.fc2_kernel, op.fc2_bias),
                               (w1, b1, w2, b2)):
        variable.assign(value.astype(np.float32))

    def gated(x):
        pooled = x.astype(np.float64).mean(axis=(1, 2))
        gate = 1.0 / (1.0 + np.exp(-(np.maximum(pooled @ w1 + b1, 0.0) @ w2 + b2)))
        return x * gate[:, None, None, :]

    out_a, out_b = op([a, b])
    np.testing.assert_allclose(out_a.numpy(), gated(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_b.numpy(), gated(b), rtol=1e-5, atol=1e-6)


def test_channel_gate_needs_hidden_units():
    x = np.ones((1, 2, 2, 8), np.float32)
    with pytest.raises(ValueError, match="no hidden unit"):
        ChannelGate(name="too_small")([x, x])


def test_exchange_and_identity():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    b = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    swapped = InteractionExchange(name="exc")([a, b])
    np.testing.assert_array_equal(swapped[0].numpy(), b)
    np.testing.assert_array_equal(swapped[1].numpy(), a)
    same = InteractionIdentity(name="none")([a, b])
    np.testing.assert_array_equal(same[0].numpy(), a)
    np.testing.assert_array_equal(same[1].numpy(), b)
    assert not InteractionExchange(name="e").weights and not InteractionIdentity(name="i").weights


def test_ops_in_functional_model_and_weighted_mixture():
    """Every op works as a functional layer and inside a softmax-weighted mixture layer."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 2, 3, 16)).astype(np.float32)
    b = rng.normal(size=(2, 2, 3, 16)).astype(np.float32)

    class Mixture(keras.layers.Layer):
        def __init__(self, weights, **kwargs):
            super().__init__(**kwargs)
            self.mix = tf.constant(weights, tf.float32)
            self.ops = [make_operation(op_name, f"mix_{op_name}")
                        for op_name in msinet_ops.PRIMITIVES]

        def call(self, inputs):
            outputs = [op(inputs) for op in self.ops]
            return [tf.add_n([w * out[0] for w, out in zip(tf.unstack(self.mix), outputs)]),
                    tf.add_n([w * out[1] for w, out in zip(tf.unstack(self.mix), outputs)])]

    mix_weights = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    mixture = Mixture(mix_weights, name="mixture")
    input_a, input_b = keras.Input((2, 3, 16)), keras.Input((2, 3, 16))
    model = keras.Model([input_a, input_b], mixture([input_a, input_b]))
    out_a, out_b = tf.function(model)([a, b])
    gate, attention = mixture.ops[1], mixture.ops[2]
    attention.gamma.assign([0.0])
    gated_a, gated_b = (t.numpy() for t in gate([a, b]))
    # none, ag, cross_att (identity at gamma 0), exc
    expected_a = 0.1 * a + 0.2 * gated_a + 0.3 * a + 0.4 * b
    expected_b = 0.1 * b + 0.2 * gated_b + 0.3 * b + 0.4 * a
    np.testing.assert_allclose(out_a.numpy(), expected_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_b.numpy(), expected_b, rtol=1e-5, atol=1e-6)
    for op_name in msinet_ops.OP_NAMES:
        input_a, input_b = keras.Input((2, 3, 16)), keras.Input((2, 3, 16))
        outputs = make_operation(op_name, f"alone_{op_name}")([input_a, input_b])
        assert len(outputs) == 2 and outputs[0].shape[1:] == (2, 3, 16)


def test_make_operation_rejects_unknown_names():
    with pytest.raises(ValueError, match="allowed: none, exc, ag, cross_att"):
        make_operation("sep_conv", "cells_0_op2")


def test_depthwise_initializer_std_follows_pytorch_fan_out():
    values = DepthwiseKaimingNormal()((3, 3, 128, 1)).numpy()
    assert abs(values.std() / np.sqrt(2.0 / (9 * 128)) - 1.0) < 0.06
    assert abs(values.mean()) < 0.004
    # Untruncated: values beyond 2 std exist (about 4.6 % of them).
    assert (np.abs(values) > 2 * np.sqrt(2.0 / (9 * 128))).mean() > 0.02
    seeded = DepthwiseKaimingNormal(seed=3)
    np.testing.assert_array_equal(seeded((3, 3, 4, 1)).numpy(), seeded((3, 3, 4, 1)).numpy())


def test_conv_initializer_is_untruncated_fan_out():
    values = msinet_ops.conv_kernel_initializer()((1, 1, 64, 256)).numpy()
    expected = np.sqrt(2.0 / 256)  # fan_out = out channels * kh * kw
    assert abs(values.std() / expected - 1.0) < 0.03
    assert (np.abs(values) > 2 * expected).mean() > 0.03


def test_light_conv_parameters_and_structure():
    inputs = keras.Input((8, 4, 24))
    outputs = msinet_ops.light_conv3x3(inputs, 24, "lc")
    model = keras.Model(inputs, outputs)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 24 * 24 + 9 * 24 + 2 * 24
    assert [layer.name for layer in model.layers[1:]] == ["lc_conv1", "lc_conv2", "lc_bn", "lc_relu"]
    assert model.get_layer("lc_conv2").depthwise_kernel.shape == (3, 3, 24, 1)
    bn = model.get_layer("lc_bn")
    assert bn.epsilon == 1e-5 and bn.momentum == 0.9


def test_frozen_beta_batch_norm():
    layer = msinet_ops.default_batch_norm("head", frozen_beta=True)
    assert isinstance(layer, FrozenBetaBatchNormalization)
    layer(np.ones((2, 5), np.float32))
    assert [w.name for w in layer.trainable_weights] == ["head/gamma:0"]
    assert "head/beta:0" in [w.name for w in layer.non_trainable_weights]
    assert layer.epsilon == 1e-5 and layer.momentum == 0.9
    np.testing.assert_array_equal(layer.beta.numpy(), np.zeros(5))
