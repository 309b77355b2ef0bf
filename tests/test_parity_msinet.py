"""Learning parity with the reference MSINet (issue 15, benchmarks/parity_msinet.py).

Pins what the step-by-step comparison found: the epoch length is the number of rounds of the
reference sampler's loop (not the ``len(train_loader)`` it prints), every BN updates its moving
variance with the unbiased batch variance as ``torch.nn.BatchNorm{1,2}d`` does (the non-fused
Keras path of the BN1d heads did not), and the losses keep float64 (the float64 comparison).
"""
import reid_tf  # noqa: F401  (selects tf-keras; first import of every test)

import numpy as np
import pytest
import tensorflow as tf

from reid_tf.data.sampler import PKSampler
from reid_tf.losses.classification import cross_entropy
from reid_tf.losses.objective import Objective, ObjectiveConfig
from reid_tf.losses.precision import at_least_float32
from reid_tf.models.msinet_ops import (FrozenBetaBatchNormalization,
                                       TorchStatisticsBatchNormalization, default_batch_norm)


def test_msinet_epoch_length_is_the_rounds_of_the_reference_loop():
    # Identity 0 has 6 images (3 chunks of K=2), identity 1 has 2 (1 chunk); P=2. The
    # reference's RandomIdentitySampler estimates (3 + 1) * 2 = 8 indices, so its DataLoader
    # prints len(train_loader) = 8 // 4 = 2, but its loop stops once fewer than P identities
    # have chunks left: the first round takes both identities, identity 1 is then empty, so
    # every epoch has exactly 1 batch.
    identities = np.array([0] * 6 + [1] * 2)
    sampler = PKSampler(identities, P=2, K=2, seed=3, policy="msinet")
    for epoch in range(5):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == 1
        assert sorted(identities[batches[0]].tolist()) == [0, 0, 1, 1]


def test_msinet_small_identities_fill_one_chunk_and_remainders_are_dropped():
    # K=4: identities 0-2 have one image each (drawn with replacement up to 4: one chunk),
    # identity 3 has 5 images (one chunk, one image dropped). Four identities with one chunk
    # each and P=2: exactly two batches per epoch, each identity once.
    identities = np.array([0, 1, 2] + [3] * 5)
    sampler = PKSampler(identities, P=2, K=4, seed=0, policy="msinet")
    for epoch in range(5):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == 2
        groups = np.concatenate(batches).reshape(4, 4)
        assert sorted(identities[groups[:, 0]].tolist()) == [0, 1, 2, 3]
        for group in groups:
            if identities[group[0]] < 3:
                assert len(set(group.tolist())) == 1  # the single image four times
            else:
                assert len(set(group.tolist())) == 4


@pytest.mark.parametrize("shape", [(64, 16), (8, 4, 2, 16)])
@pytest.mark.parametrize("layer_class", [TorchStatisticsBatchNormalization,
                                         FrozenBetaBatchNormalization])
def test_moving_variance_is_updated_with_the_unbiased_batch_variance(shape, layer_class):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    layer = layer_class(momentum=0.9, epsilon=1e-5)
    layer(tf.constant(x), training=True)
    flat = x.reshape(-1, shape[-1]).astype(np.float64)
    # torch.nn.BatchNorm: running = 0.9 * running + 0.1 * batch, var with n / (n - 1).
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 + 0.1 * flat.var(axis=0, ddof=1), rtol=2e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * flat.mean(axis=0), atol=1e-6)
    # Normalisation uses the biased variance (the training output is unchanged).
    out = layer(tf.constant(x), training=True).numpy().reshape(-1, shape[-1])
    expected = (flat - flat.mean(axis=0)) / np.sqrt(flat.var(axis=0) + 1e-5)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_float64_batch_norm_and_heads_use_the_same_rule():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 8))
    layer = default_batch_norm("bn", frozen_beta=True)
    layer.build((None, 8))
    assert isinstance(layer, TorchStatisticsBatchNormalization)
    assert [weight.name for weight in layer.trainable_weights] == ["gamma:0"]
    layer64 = TorchStatisticsBatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float64")
    layer64(tf.constant(x), training=True)
    # (Keras forms the decay 1 - momentum as a float32 tensor: 1.5e-9 relative.)
    np.testing.assert_allclose(layer64.moving_variance.numpy(),
                               0.9 + 0.1 * x.var(axis=0, ddof=1), rtol=1e-8)


def test_losses_keep_float64_and_lift_16_bit_to_float32():
    assert at_least_float32(tf.constant([1.0], tf.float16)).dtype == tf.float32
    assert at_least_float32(tf.constant([1.0], tf.bfloat16)).dtype == tf.float32
    assert at_least_float32(tf.constant([1.0], tf.float64)).dtype == tf.float64
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 2)
    logits = rng.standard_normal((8, 5))
    embeddings = [rng.standard_normal((8, 6)), rng.standard_normal((8, 3))]
    objective = Objective(ObjectiveConfig(triplet_margin=0.3, triplet_normalize=True,
                                          label_smoothing=0.1))
    losses = objective({"embeddings": [tf.constant(e) for e in embeddings],
                        "logits": [tf.constant(logits), tf.constant(logits[::-1].copy())]},
                       tf.constant(labels))
    assert losses["total"].dtype == tf.float64

    def smoothed_cross_entropy(z):
        log_p = z - z.max(axis=1, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        targets = 0.9 * np.eye(5)[labels] + 0.1 / 5
        return float((-targets * log_p).sum(axis=1).mean())

    def triplet(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        d = np.sqrt(np.maximum((e ** 2).sum(1)[:, None] + (e ** 2).sum(1)[None] - 2 * e @ e.T,
                               1e-12))
        same = labels[:, None] == labels[None]
        return float(np.maximum(np.where(same, d, -np.inf).max(1)
                                - np.where(same, np.inf, d).min(1) + 0.3, 0).mean())

    expected = (smoothed_cross_entropy(logits) + smoothed_cross_entropy(logits[::-1])
                + triplet(embeddings[0]) + triplet(embeddings[1]))
    np.testing.assert_allclose(float(losses["total"]), expected, rtol=1e-12)
    assert cross_entropy(tf.constant(logits), labels, 0.1).dtype == tf.float64


def test_float64_policy_builds_float64_heads():
    """The parity checks run MSINet in float64: under a float64 policy the heads stay float64
    (float32_policy only widens 16-bit policies)."""
    import numpy as np
    import tf_keras as keras
    from reid_tf.models.msinet import build_msinet
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float64")
    try:
        training_model, inference_model = build_msinet("msmt", 10, (64, 32, 3))
        outputs = training_model(np.zeros((2, 64, 32, 3)), training=False)
        assert outputs["logits"][0].dtype == "float64"
        assert inference_model(np.zeros((2, 64, 32, 3))).dtype == "float64"
    finally:
        keras.mixed_precision.set_global_policy(previous)
