"""The generic flip wrapper (reid_tf.models.flipping) around tiny custom embedding models."""
import reid_tf  # noqa: F401  (selects tf-keras)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf.losses import flipping_loss
from reid_tf.models.flipping import (build_training_model, concatenate_features,
                                     flip_tta_features, inference_features)
from reid_tf.models.layers import HorizontalFlip

SHAPE = (6, 5, 3)


def _tiny_models(with_mode=False, head_extra=None):
    """Embedding model: conv -> BN -> pooled embeddings {global, stripe} (+ optional extra
    ``mode`` input scaling the features), extra output ``pooled_map``; head: Dense per
    embedding."""
    keras.utils.set_random_seed(0)
    image = keras.Input(SHAPE, name="image")
    inputs = [image]
    features = keras.layers.Conv2D(4, 3, padding="same", name="tiny_conv")(image)
    features = keras.layers.BatchNormalization(name="tiny_bn")(features)
    if with_mode:
        mode = keras.Input((1,), name="mode")
        inputs.append(mode)
        scale = keras.layers.Reshape((1, 1, 1), name="tiny_reshape")(mode)
        features = keras.layers.Multiply(name="tiny_mode")([features, scale])
    # Asymmetric in width so that mirroring changes the embeddings.
    left = keras.layers.Cropping2D(((0, 0), (0, 3)), name="tiny_left")(features)
    first = keras.layers.GlobalAveragePooling2D(name="tiny_gap")(features)
    second = keras.layers.GlobalMaxPooling2D(name="tiny_gmp")(left)
    second = keras.layers.Dense(3, name="tiny_dense")(second)
    embedding_model = keras.Model(
        inputs if with_mode else image,
        {"embeddings": [first, second], "pooled_map": left}, name="embedding_model")
    head_inputs = [keras.Input((4,), name="h0"), keras.Input((3,), name="h1")]
    logits = [keras.layers.Dense(2, name=f"head_{i}")(t) for i, t in enumerate(head_inputs)]
    head_outputs = {"logits": logits}
    if head_extra:
        head_outputs[head_extra] = logits[0]
    head_model = keras.Model(head_inputs, head_outputs, name="head_model")
    return embedding_model, head_model


def _images(seed=0, batch=3):
    return np.random.RandomState(seed).normal(size=(batch,) + SHAPE).astype("float32")


def _numpy(tensors):
    return [t.numpy() for t in tensors]


def test_without_flipping_equals_one_call():
    embedding_model, head_model = _tiny_models()
    model = build_training_model(embedding_model, head_model, False)
    assert model.name == "training_model"
    images = _images()
    outputs = model(images, training=False)
    assert sorted(outputs) == ["embeddings", "logits", "pooled_map"]
    direct = embedding_model(images, training=False)
    for a, b in zip(outputs["embeddings"], direct["embeddings"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    np.testing.assert_allclose(outputs["pooled_map"].numpy(), direct["pooled_map"].numpy())
    logits = head_model(direct["embeddings"])["logits"]
    for a, b in zip(outputs["logits"], logits):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    assert not any(isinstance(layer, HorizontalFlip) for layer in model.layers)


@pytest.mark.parametrize("training", [False, True])
def test_flipping_merges_two_independent_passes(training):
    embedding_model, head_model = _tiny_models()
    model = build_training_model(embedding_model, head_model, True, name="flip_model")
    flip_layers = [layer for layer in model.layers if isinstance(layer, HorizontalFlip)]
    assert [layer.name for layer in flip_layers] == ["horizontal_flip"]
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    images = _images(seed=1)
    mirrored = images[:, :, ::-1].copy()
    outputs = model(images, training=training)
    # Two explicit calls; in training mode each one uses its own batch statistics.
    original = _numpy(embedding_model(images, training=training)["embeddings"])
    flipped = _numpy(embedding_model(mirrored, training=training)["embeddings"])
    for index in range(2):
        np.testing.assert_allclose(outputs["embeddings_original"][index].numpy(),
                                   original[index], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs["embeddings_flipped"][index].numpy(),
                                   flipped[index], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs["embeddings"][index].numpy(),
                                   (original[index] + flipped[index]) / 2, rtol=1e-5,
                                   atol=1e-6)
        assert not np.allclose(original[index], flipped[index])
    # Extras come from the original-image pass.
    np.testing.assert_allclose(
        outputs["pooled_map"].numpy(),
        embedding_model(images, training=training)["pooled_map"].numpy(), rtol=1e-5, atol=1e-6)
    # The head sees the merged embeddings.
    logits = head_model([tf.constant((a + b) / 2) for a, b in zip(original, flipped)])["logits"]
    for a, b in zip(outputs["logits"], logits):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    # Flipping loss: sum_i mean((f_i - g_i)^2).
    expected = sum(np.mean((f.astype(np.float64) - g) ** 2) for f, g in zip(original, flipped))
    loss = flipping_loss(outputs["embeddings_original"], outputs["embeddings_flipped"])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_training_mode_uses_per_pass_batch_statistics():
    """A single pass over the concatenated batch would give other embeddings."""
    embedding_model, head_model = _tiny_models()
    model = build_training_model(embedding_model, head_model, True)
    images = _images(seed=2)
    joint = embedding_model(np.concatenate([images, images[:, :, ::-1]]), training=True)
    outputs = model(images, training=True)
    assert not np.allclose(outputs["embeddings_original"][0].numpy(),
                           joint["embeddings"][0].numpy()[:3], atol=1e-4)


def test_extra_inputs_are_passed_to_both_passes():
    embedding_model, head_model = _tiny_models(with_mode=True)
    model = build_training_model(embedding_model, head_model, True)
    assert model.input_names == ["image", "mode"]
    images = _images(seed=3)
    mode = np.array([[1.0], [2.0], [-0.5]], np.float32)
    outputs = model([images, mode], training=False)
    original = _numpy(embedding_model([images, mode])["embeddings"])
    flipped = _numpy(embedding_model([images[:, :, ::-1].copy(), mode])["embeddings"])
    for index in range(2):
        np.testing.assert_allclose(outputs["embeddings"][index].numpy(),
                                   (original[index] + flipped[index]) / 2, rtol=1e-5,
                                   atol=1e-6)
    plain = build_training_model(embedding_model, head_model, False, name="plain")
    plain_outputs = plain([images, mode])
    np.testing.assert_allclose(plain_outputs["embeddings"][1].numpy(), original[1], rtol=1e-5)


class _ScaleByMode(keras.layers.Layer):
    """Multiplies a feature map by a scalar int mode (like CM-NAS's modality switch)."""

    def call(self, inputs):
        features, mode = inputs
        scaled = features * tf.cast(mode + 1, features.dtype)
        scaled.set_shape(features.shape)
        return scaled


def test_scalar_mode_input_like_cmnas():
    image = keras.Input(SHAPE, name="images")
    mode = keras.Input(batch_shape=(), dtype=tf.int32, name="mode")
    features = keras.layers.Conv2D(2, 3, name="c")(image)
    features = _ScaleByMode(name="scale")([features, mode])
    pooled = keras.layers.GlobalMaxPooling2D(name="p")(features)
    embedding_model = keras.Model([image, mode], {"embeddings": [pooled]}, name="emb")
    head_input = keras.Input((2,), name="h")
    head_model = keras.Model([head_input], {"logits": [keras.layers.Dense(3)(head_input)],
                                            "bnneck": [head_input]}, name="head")
    model = build_training_model(embedding_model, head_model, True)
    images = _images(seed=8)
    outputs = model([images, tf.constant(2)])
    assert sorted(outputs) == ["bnneck", "embeddings", "embeddings_flipped",
                               "embeddings_original", "logits"]
    original = embedding_model([images, tf.constant(2)])["embeddings"][0].numpy()
    flipped = embedding_model([images[:, :, ::-1].copy(), tf.constant(2)])["embeddings"][0]
    np.testing.assert_allclose(outputs["embeddings"][0].numpy(),
                               (original + flipped.numpy()) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["bnneck"][0].numpy(), outputs["embeddings"][0].numpy())


def test_gradients_reach_both_passes_in_tf_function():
    embedding_model, head_model = _tiny_models()
    model = build_training_model(embedding_model, head_model, True)
    images = tf.constant(_images(seed=4))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            loss = (flipping_loss(outputs["embeddings_original"], outputs["embeddings_flipped"])
                    + tf.add_n([tf.reduce_mean(t) for t in outputs["logits"]]))
        return tape.gradient(loss, model.trainable_variables)

    gradients = step(images)
    assert len(gradients) == len(model.trainable_variables)
    assert all(g is not None for g in gradients)
    kernel_gradient = gradients[[v.name for v in model.trainable_variables].index(
        "tiny_conv/kernel:0")]
    assert float(tf.reduce_sum(tf.abs(kernel_gradient))) > 0


def test_weights_interchangeable_with_and_without_flip(tmp_path):
    flip_embedding, flip_head = _tiny_models()
    flip_model = build_training_model(flip_embedding, flip_head, True)
    keras.utils.set_random_seed(5)
    plain_embedding, plain_head = _tiny_models()
    for variable in plain_embedding.trainable_variables:
        variable.assign(tf.random.normal(variable.shape))
    plain_model = build_training_model(plain_embedding, plain_head, False)
    path = str(tmp_path / "tiny.h5")
    plain_model.save_weights(path)
    flip_model.load_weights(path)
    images = _images(seed=6)
    for a, b in zip(flip_embedding(images)["embeddings"], plain_embedding(images)["embeddings"]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_contract_errors():
    embedding_model, head_model = _tiny_models(head_extra="embeddings_original")
    with pytest.raises(ValueError, match="embeddings_original"):
        build_training_model(embedding_model, head_model, True)
    bad = keras.Model(embedding_model.input, embedding_model.output["embeddings"], name="bad")
    with pytest.raises(ValueError, match="'bad' must return a dict with the key 'embeddings'"):
        build_training_model(bad, head_model, False)


def test_flip_tta_features():
    embedding_model, _ = _tiny_models()
    inference_model = keras.Model(embedding_model.input,
                                  embedding_model.output["embeddings"], name="inference_model")
    images = _images(seed=7)
    plain = np.concatenate(_numpy(inference_model(images)), axis=1)
    mirrored = np.concatenate(_numpy(inference_model(images[:, :, ::-1].copy())), axis=1)
    np.testing.assert_allclose(inference_features(inference_model, images).numpy(), plain,
                               rtol=1e-6)
    features = flip_tta_features(inference_model, images).numpy()
    assert features.shape == (3, 7)
    np.testing.assert_allclose(features, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    single = concatenate_features(tf.ones((2, 3)))
    assert tuple(single.shape) == (2, 3)
