"""The MSI search network (msinet.md §5, §11.2, §14.4/6/9), genotype derivation and the
bilevel steps (§6.3): which variables each step changes, the reference's accumulated
validation gradient, and the unrolled (second-order) architecture gradient."""
import reid_tf  # noqa: F401  (selects tf-keras)

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from nas.architect import Architect
from nas.alpha import AlphaHistory, derive_genotype, plot_alpha_history, write_genotype
from nas.model_search import (MixedInteraction, alpha_row, initial_alpha,
                              search_parameter_counts)
from nas.bilevel import BilevelStep
from nas.spaces.msi import MsiSearchSpace
from reid_tf.models.genotypes import load_genotype
from reid_tf.models.msinet_ops import PRIMITIVES, ChannelGate, CrossAttention
from reid_tf.training.optimizers import TorchAdam, TorchSGD

SHAPE = (64, 32, 3)


@pytest.fixture(scope="module")
def space():
    """A search network at 751 classes (parameter counts) with a 601-slot valid memory."""
    return MsiSearchSpace.without_data(751, 601, input_shape=SHAPE, seed=0)


# ------------------------------------------------------------------------------------------
# Network structure and parameter counts
# ------------------------------------------------------------------------------------------
def test_parameter_counts_match_the_reference(space):
    counts = search_parameter_counts(space.network.training_model)
    assert counts["total"] == 2_072_102
    assert counts["without_classifier"] == 1_687_590
    assert counts["classifier"] == 512 * 751
    assert counts["trainable"] == 2_071_590  # the frozen head BN beta is not trainable
    expected = {"stem": 9_536, "cells_0": 31_780, "cells_1": 106_378, "cells_2": 66_048,
                "cells_3": 222_346, "cells_4": 234_062, "cells_5": 148_224, "cells_6": 456_782,
                "cells_7": 411_410, "head_bn": 1_024}
    assert {key: counts[key] for key in expected} == expected
    # Search-time class counts of the TCM splits (only the bias-free classifier changes).
    for classes, total in ((450, 1_917_990), (624, 2_007_078)):
        assert counts["without_classifier"] + 512 * classes == total
    model = space.network.training_model
    moving = sum(int(np.prod(v.shape)) for v in model.non_trainable_variables
                 if "moving" in v.name)
    assert moving == 23_232


def test_alpha_is_a_separate_small_variable(space):
    network = space.network
    alpha = network.alpha
    assert tuple(alpha.shape) == (12, 4)
    assert all(variable is not alpha for variable in network.training_model.weights)
    values = alpha.numpy()
    assert 0 < np.abs(values).max() < 6e-3 and np.abs(values).mean() < 2e-3
    np.testing.assert_array_equal(values, initial_alpha(0))  # 1e-3 * N(0, 1), seed 0
    softmax_layers = [layer for layer in network.training_model.layers
                      if isinstance(layer, keras.layers.Softmax)]
    assert [layer.name for layer in softmax_layers] == ["arch_softmax"]  # once per forward


def test_search_cells_mid_channels_rows_and_shapes(space):
    model = space.network.training_model
    mids = [model.get_layer(f"cells_{i}_conv1a_conv").filters for i in (0, 1, 3, 4, 6, 7)]
    assert mids == [16, 64, 64, 96, 96, 128]
    rows = {layer.name: layer.row for layer in model.layers
            if isinstance(layer, MixedInteraction)}
    assert len(rows) == 12
    for cell in (0, 1, 3, 4, 6, 7):
        t = cell - cell // 3
        assert rows[f"cells_{cell}_op2"] == alpha_row(cell, 0) == 2 * t
        assert rows[f"cells_{cell}_op3"] == alpha_row(cell, 1) == 2 * t + 1
    mixture = model.get_layer("cells_3_op2")
    assert [op.name.rsplit("_op2_", 1)[1] for op in mixture.operations] == list(PRIMITIVES)
    outputs = space.network(np.zeros((2,) + SHAPE, np.float32), training=False)
    assert tuple(outputs["features"].shape) == (2, 512)
    assert tuple(outputs["logits"].shape) == (2, 751)
    assert tuple(space.network.embed(np.zeros((3,) + SHAPE, np.float32)).shape) == (3, 512)


def test_mixed_interaction_is_the_weighted_sum_of_the_four_operations():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 2, 16)).astype(np.float32)
    b = rng.normal(size=(2, 3, 2, 16)).astype(np.float32)
    weights = rng.dirichlet(np.ones(4), size=12).astype(np.float32)
    layer = MixedInteraction(5, name="mix")
    layer([a, b, weights])
    gate, attention = layer.operations[1], layer.operations[2]
    assert isinstance(gate, ChannelGate) and isinstance(attention, CrossAttention)
    attention.gamma.assign([0.7])
    out_a, out_b = (t.numpy() for t in layer([a, b, weights]))
    w = weights[5]
    gate_a, gate_b = (t.numpy() for t in gate([a, b]))
    att_a, att_b = (t.numpy() for t in attention([a, b]))
    np.testing.assert_allclose(out_a, w[0] * a + w[1] * gate_a + w[2] * att_a + w[3] * b,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_b, w[0] * b + w[1] * gate_b + w[2] * att_b + w[3] * a,
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Genotypes
# ------------------------------------------------------------------------------------------
def test_genotype_derivation_ties_and_file(tmp_path):
    alpha = np.zeros((12, 4), np.float32)  # all ties -> 'none'
    alpha[1] = [0.0, 2.0, 2.0, 1.0]  # tie between ag and cross_att -> ag
    alpha[2] = [0.1, 0.0, 0.3, 0.3]  # tie cross_att/exc -> cross_att
    alpha[3] = [-1.0, -2.0, -3.0, 0.5]  # exc
    alpha[11] = [0.0, 0.0, 0.0, 1e-6]
    genotype = derive_genotype(alpha)
    assert genotype == ["none", "ag", "cross_att", "exc"] + ["none"] * 7 + ["exc"]
    assert derive_genotype(tf.nn.softmax(alpha).numpy()) == genotype
    path = write_genotype(genotype, str(tmp_path / "g" / "genotype.json"))
    assert load_genotype(path) == genotype
    with open(path) as handle:
        assert json.load(handle) == genotype
    with pytest.raises(ValueError, match="shape"):
        derive_genotype(np.zeros((12, 3)))


def test_alpha_history_file_and_heatmap(tmp_path):
    history = AlphaHistory(str(tmp_path / "alpha_history.npz"))
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(12, 4)), rng.normal(size=(12, 4))
    history.log(0, first)
    history.log(5, second)
    history.log(5, first)  # re-logging an epoch replaces it
    reloaded = AlphaHistory(str(tmp_path / "alpha_history.npz"))
    arrays = reloaded.arrays()
    assert arrays["epochs"].tolist() == [0, 5]
    np.testing.assert_allclose(arrays["alpha"][1], first, rtol=1e-6)
    expected = np.exp(first) / np.exp(first).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(arrays["weights"][0], expected, rtol=1e-5)
    assert list(arrays["primitives"]) == list(PRIMITIVES)
    reloaded.truncate(4)
    assert reloaded.epochs == [0]
    png = plot_alpha_history(history, str(tmp_path / "alpha.png"))
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------
# The bilevel steps (run eagerly: the tf.function bodies are plain methods)
# ------------------------------------------------------------------------------------------
def _batches(seed):
    rng = np.random.default_rng(seed)
    train = (tf.constant(rng.normal(size=(4,) + SHAPE), tf.float32), tf.constant([0, 0, 3, 3]))
    valid = (tf.constant(rng.normal(size=(4,) + SHAPE), tf.float32), tf.constant([2, 2, 9, 9]))
    return train, valid


def _fill_memories(space, seed):
    rng = np.random.default_rng(seed)
    for memory in (space.train_memory, space.valid_memory):
        slots = rng.normal(size=memory.features.shape)
        memory.features.assign((slots / np.linalg.norm(slots, axis=1, keepdims=True))
                               .astype(np.float32))


def _snapshot(variables):
    return [v.numpy().copy() for v in variables]


def _memory_loss(network, images, labels, slots):
    """CE of normalised features against fixed slots / 0.05, written independently."""
    features = network(images, training=True)["features"]
    unit = features / tf.maximum(tf.norm(features, axis=1, keepdims=True), 1e-12)
    logits = tf.matmul(unit, tf.constant(slots), transpose_b=True) / 0.05
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def _gradients(space, images, labels, slots):
    with tf.GradientTape() as tape:
        loss = _memory_loss(space.network, images, labels, slots)
    return tape.gradient(loss, space.weight_variables)


def _step(space, accumulate, learning_rate=0.05, weight_decay=0.0):
    sgd = TorchSGD(learning_rate=learning_rate, momentum=0.0, weight_decay_l2=weight_decay)
    adam = TorchAdam(learning_rate=0.01, beta_1=0.5, beta_2=0.999, epsilon=1e-8,
                     weight_decay_l2=1e-3)
    sgd.build(space.weight_variables)
    adam.build(space.arch_variables)
    return BilevelStep(space, sgd, adam, accumulate_valid_gradients=accumulate)


def test_architecture_step_changes_only_alpha_and_the_valid_memory(space):
    _fill_memories(space, 1)
    step = _step(space, accumulate=True)
    (train_images, train_labels), (valid_images, valid_labels) = _batches(1)
    weights, alpha = _snapshot(space.weight_variables), space.network.alpha.numpy().copy()
    train_slots = space.train_memory.features.numpy().copy()
    valid_slots = space.valid_memory.features.numpy().copy()
    result = step._architecture_step(train_images, train_labels, valid_images, valid_labels)
    assert np.isfinite(float(result["valid_loss"]))
    for before, variable in zip(weights, space.weight_variables):
        np.testing.assert_array_equal(before, variable.numpy())
    assert np.abs(space.network.alpha.numpy() - alpha).max() > 1e-4
    np.testing.assert_array_equal(space.train_memory.features.numpy(), train_slots)
    changed = np.flatnonzero(np.any(space.valid_memory.features.numpy() != valid_slots, axis=1))
    assert changed.tolist() == [2, 9]


def test_clean_weight_step_changes_only_the_weights(space):
    _fill_memories(space, 2)
    learning_rate, decay = 0.05, 5e-4
    step = _step(space, accumulate=False, learning_rate=learning_rate, weight_decay=decay)
    (train_images, train_labels), _ = _batches(2)
    alpha = space.network.alpha.numpy().copy()
    valid_slots = space.valid_memory.features.numpy().copy()
    train_slots = space.train_memory.features.numpy().copy()
    variables = space.weight_variables
    before = _snapshot(variables)
    gradients = _gradients(space, train_images, train_labels, train_slots)
    step._weight_step(train_images, train_labels)
    np.testing.assert_array_equal(space.network.alpha.numpy(), alpha)
    np.testing.assert_array_equal(space.valid_memory.features.numpy(), valid_slots)
    assert np.any(space.train_memory.features.numpy() != train_slots)
    without_gradient = set()
    for value, variable, gradient in zip(before, variables, gradients):
        if gradient is None:
            without_gradient.add(variable.name)
            np.testing.assert_array_equal(variable.numpy(), value)
        else:  # SGD with coupled weight decay, no momentum
            np.testing.assert_allclose(
                variable.numpy(), value - learning_rate * (gradient.numpy() + decay * value),
                rtol=1e-4, atol=2e-7)
    # No loss reaches the head BN and the classifier: they keep their initial values.
    assert without_gradient == {"head_bn/gamma:0", "classifier/kernel:0"}


@pytest.mark.parametrize("clean", [False, True])
def test_weight_update_with_and_without_the_validation_gradient(space, clean):
    _fill_memories(space, 3)
    learning_rate = 0.05
    step = _step(space, accumulate=not clean, learning_rate=learning_rate)
    (train_images, train_labels), (valid_images, valid_labels) = _batches(3)
    variables = space.weight_variables
    w0 = _snapshot(variables)
    alpha0 = space.network.alpha.numpy().copy()
    train_slots = space.train_memory.features.numpy().copy()
    valid_slots = space.valid_memory.features.numpy().copy()
    # ∇_w L_v(w, α_before), computed separately
    valid_gradients = _gradients(space, valid_images, valid_labels, valid_slots)

    step._full_step(train_images, train_labels, valid_images, valid_labels)
    w1 = _snapshot(variables)
    alpha1 = space.network.alpha.numpy().copy()
    assert np.abs(alpha1 - alpha0).max() > 1e-4
    # ∇_w L_t(w, α_after), computed separately at the old weights
    for variable, value in zip(variables, w0):
        variable.assign(value)
    train_gradients = _gradients(space, train_images, train_labels, train_slots)

    largest_valid_effect = 0.0
    for before, after, g_v, g_t in zip(w0, w1, valid_gradients, train_gradients):
        if g_t is None:
            np.testing.assert_array_equal(after, before)
            continue
        total = g_t.numpy() if clean else g_t.numpy() + g_v.numpy()
        np.testing.assert_allclose(after, before - learning_rate * total, rtol=1e-4, atol=2e-7)
        largest_valid_effect = max(largest_valid_effect,
                                   float(np.abs(learning_rate * g_v.numpy()).max()))
    assert largest_valid_effect > 1e-4  # the two forms really differ


# ------------------------------------------------------------------------------------------
# Unrolled (second-order) architecture gradient
# ------------------------------------------------------------------------------------------
def test_unrolled_gradient_equals_the_exact_hypergradient():
    rng = np.random.default_rng(4)
    p, q = rng.normal(size=(5, 6)), rng.normal(size=(5, 3))
    r, s = rng.normal(size=(4, 6)), rng.normal(size=(4, 3))
    t, u = rng.normal(size=5), rng.normal(size=4)
    const = {name: tf.constant(value, tf.float32) for name, value in
             dict(p=p, q=q, r=r, s=s, t=t, u=u).items()}
    weights = tf.Variable(rng.normal(size=6), dtype=tf.float32)
    alpha = tf.Variable(rng.normal(size=3), dtype=tf.float32)
    state = tf.Variable(1.5)

    def train_loss(w=None):
        w = weights if w is None else w
        residual = tf.linalg.matvec(const["p"], w) + tf.linalg.matvec(const["q"], alpha) \
            - const["t"]
        return 0.5 * tf.reduce_sum(residual ** 2) * tf.reduce_sum(tf.exp(0.1 * alpha))

    def valid_loss(w=None):
        w = weights if w is None else w
        residual = tf.linalg.matvec(const["r"], w) + tf.linalg.matvec(const["s"], alpha) \
            - const["u"]
        return 0.5 * tf.reduce_sum(residual ** 2) + tf.reduce_sum(tf.sin(w) * alpha[0])

    sgd = TorchSGD(learning_rate=0.05, momentum=0.9, weight_decay_l2=0.01)
    sgd.build([weights])
    sgd.apply_gradients([(tf.constant(rng.normal(size=6), tf.float32), weights)])  # a buffer
    buffer = sgd.momentums[0].numpy().copy()
    w0 = weights.numpy().copy()
    adam = TorchAdam(learning_rate=0.01)
    adam.build([alpha])
    architect = Architect([weights], [alpha], sgd, adam, unrolled=True, state_variables=[state])

    def train_fn():
        state.assign_add(1.0)  # a side effect of the forward pass, undone by the architect
        return train_loss(), None

    def valid_fn():
        state.assign_add(1.0)
        return valid_loss(), {"marker": 7}

    loss, aux, (gradient,) = architect.unrolled_gradients(train_fn, valid_fn)
    assert aux == {"marker": 7}
    np.testing.assert_array_equal(weights.numpy(), w0)
    assert float(state.numpy()) == 1.5

    # Exact total derivative of L_v(w'(α), α), w' = w - ξ(∇_w L_t + λ w + μ b), nested tapes.
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner_loss = train_loss()
        g = inner.gradient(inner_loss, weights)
        virtual = weights - 0.05 * (g + 0.01 * weights + 0.9 * tf.constant(buffer))
        outer_loss = valid_loss(virtual)
    exact = outer.gradient(outer_loss, alpha).numpy()
    assert float(loss) == pytest.approx(float(outer_loss), rel=1e-6)
    np.testing.assert_allclose(gradient.numpy(), exact, rtol=2e-3, atol=2e-4)
    # and it is not the first-order gradient at w
    with tf.GradientTape() as tape:
        plain = valid_loss()
    first_order = tape.gradient(plain, alpha).numpy()
    assert np.abs(first_order - exact).max() > 1e-2
