"""FeatureExtractor: row order, partial batches, flipped test-time augmentation, modes; checked
against the model applied by hand to images normalised with the ImageNet statistics."""
import reid_tf  # noqa: F401  (selects tf-keras)

import cv2
import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from reid_tf.evaluation.evaluator import FeatureExtractor

HEIGHT, WIDTH = 8, 4
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def _images(tmp_path, count):
    rng = np.random.default_rng(0)
    images, paths = [], []
    for index in range(count):
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)  # RGB
        path = str(tmp_path / f"{index:02d}.png")
        cv2.imwrite(path, image[:, :, ::-1])  # cv2 writes BGR
        images.append(image)
        paths.append(path)
    return np.stack(images), pd.DataFrame({"image_file_path": paths})


def _linear_model():
    """Features = per-channel weighted spatial sums: not flip invariant, easy to compute."""
    images = keras.Input((HEIGHT, WIDTH, 3))
    weights = np.arange(HEIGHT * WIDTH * 3, dtype=np.float32).reshape(1, HEIGHT, WIDTH, 3) / 100
    features = keras.layers.Lambda(
        lambda x: tf.reduce_sum(x * weights, axis=(1, 2)))(images)
    return keras.Model(images, features), weights[0]


def _expected(images, weights):
    normalized = (images.astype(np.float32) - MEAN) / STD
    return (normalized * weights).sum(axis=(1, 2))


def test_features_in_row_order_over_partial_batches_traced_once(tmp_path):
    images, frame = _images(tmp_path, 5)
    model, weights = _linear_model()
    extractor = FeatureExtractor(model, HEIGHT, WIDTH, batch_size=2)
    features = extractor(frame.iloc[::-1])  # any row order: reset to the frame's order
    np.testing.assert_allclose(features, _expected(images[::-1], weights), rtol=1e-4, atol=1e-3)
    # Batches of 2, 2 and 1 run through one trace (unknown batch dimension).
    assert extractor._traced[0].experimental_get_tracing_count() == 1  # noqa: SLF001

    flipped = FeatureExtractor(model, HEIGHT, WIDTH, batch_size=2, flip=True)(frame)
    expected = 0.5 * (_expected(images, weights) + _expected(images[:, :, ::-1], weights))
    np.testing.assert_allclose(flipped, expected, rtol=1e-4, atol=1e-3)
    assert not np.allclose(flipped, _expected(images, weights), rtol=1e-3)


def test_mode_models_get_each_modality_with_its_mode(tmp_path):
    images, frame = _images(tmp_path, 5)
    frame["modality"] = ["infrared", "visible", "infrared", "visible", "visible"]
    image_input = keras.Input((HEIGHT, WIDTH, 3))
    mode_input = keras.Input((), dtype=tf.int32, batch_size=1)
    _, weights = _linear_model()
    # Two outputs: feature_index picks the second (features scaled by the mode).
    summed = keras.layers.Lambda(lambda x: tf.reduce_sum(x * weights, axis=(1, 2)))(image_input)
    scaled = keras.layers.Lambda(
        lambda pair: pair[0] * tf.cast(tf.reshape(pair[1], ()), tf.float32))([summed, mode_input])
    model = keras.Model([image_input, mode_input], [summed, scaled])

    class ModeModel:
        inputs = model.inputs

        def __call__(self, inputs, training=False):
            images, mode = inputs
            return model([images, tf.reshape(tf.constant(mode, tf.int32), (1,))],
                         training=training)

    features = FeatureExtractor(ModeModel(), HEIGHT, WIDTH, batch_size=2, feature_index=1)(frame)
    modes = np.array([2, 1, 2, 1, 1], np.float32)[:, None]
    np.testing.assert_allclose(features, _expected(images, weights) * modes, rtol=1e-4,
                               atol=1e-3)
