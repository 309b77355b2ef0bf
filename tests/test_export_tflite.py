"""LiteRT export (--export_formats tflite, --tflite_quantization): MSINet's inference model
(built directly at 64x32, batch norms moved off their initial values) gives the Keras features
to 1e-4 in float32 and to 1e-2 of the largest feature in float16; the dynamic-range int8 model
keeps rank-1 and mAP of a small synthetic retrieval within 2 points of float32; a model with a
mode input writes one file per modality, each equal to Keras in its mode; a conversion that
cannot succeed raises ExportError naming the format and the cause.

The retrieval of the int8 check: 20 identities, each a random 64x32 prototype image; 5 query
and 5 gallery images per identity (100 queries: one rank-1 flip is 1 point) are the prototype plus Gaussian noise (sigma 0.6), passed
through the (untrained) network. Rank-1 and mAP are computed here with numpy (Euclidean
distances, every gallery image a candidate), independently of reid_tf.evaluation."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf import export

from test_export import _keras_features, _randomise_batch_norms, mode_model

HEIGHT, WIDTH = 64, 32


@pytest.fixture(scope="module")
def msinet():
    from reid_tf.models.msinet import build_msinet_models
    keras.utils.set_random_seed(0)  # fixed weights: the int8 retrieval figures are repeatable
    model = build_msinet_models("configs/genotypes/msmt.json", 6,
                                input_shape=(HEIGHT, WIDTH, 3)).inference_model
    _randomise_batch_norms(model, 5)
    return model


@pytest.fixture(scope="module")
def exported(msinet, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tflite"))
    return {quantization: export.export_inference_model(msinet, folder, "tflite", quantization)
            for quantization in ("float32", "float16", "int8")}


def _retrieval_images(seed=7, identities=20, queries=5, gallery=5, sigma=0.6):
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(identities, HEIGHT, WIDTH, 3))
    labels = np.repeat(np.arange(identities), queries + gallery)
    images = prototypes[labels] + sigma * rng.normal(size=(labels.size, HEIGHT, WIDTH, 3))
    is_query = np.tile(np.arange(queries + gallery) < queries, identities)
    return images.astype(np.float32), labels, is_query


def _rank1_map(features, labels, is_query):
    query, gallery = features[is_query], features[~is_query]
    query_labels, gallery_labels = labels[is_query], labels[~is_query]
    distances = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    hits, precisions = [], []
    for row, label in zip(distances, query_labels):
        matches = gallery_labels[np.argsort(row, kind="stable")] == label
        hits.append(matches[0])
        ranks = np.flatnonzero(matches) + 1
        precisions.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
    return 100 * np.mean(hits), 100 * np.mean(precisions)


def test_file_names(msinet, exported, tmp_path):
    folder = os.path.dirname(exported["float32"])
    assert exported == {"float32": os.path.join(folder, "inference_model.tflite"),
                        "float16": os.path.join(folder, "inference_model_float16.tflite"),
                        "int8": os.path.join(folder, "inference_model_int8.tflite")}
    sizes = {name: os.path.getsize(path) for name, path in exported.items()}
    # float16 halves the weights, int8 quarters them (MSINet: ~2.3 M parameters).
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["int8"] < 0.35 * sizes["float32"]
    with pytest.raises(ValueError, match="--tflite_quantization='int4'"):
        export.export_inference_model(msinet, str(tmp_path), "tflite", "int4")


def test_float32_and_float16_equal_keras(msinet, exported):
    images = np.random.default_rng(1).normal(size=(3, HEIGHT, WIDTH, 3)).astype(np.float32)
    expected = _keras_features(msinet, images)
    assert expected.shape == (3, 768) and np.ptp(expected) > 1e-2
    np.testing.assert_allclose(export.tflite_features(exported["float32"], images), expected,
                               atol=1e-4)
    half = export.tflite_features(exported["float16"], images)
    scale = np.max(np.abs(expected))
    assert np.max(np.abs(half - expected)) <= 1e-2 * scale
    assert np.max(np.abs(half - expected)) > 0  # the weights really are rounded
    # Another batch size through the same interpreter (dynamic batch axis).
    interpreter = export.tflite_interpreter(exported["float32"])
    for batch in (images[:1], images):
        np.testing.assert_allclose(export.tflite_features(interpreter, batch),
                                   expected[:len(batch)], atol=1e-4)


def test_int8_keeps_retrieval_metrics(exported):
    images, labels, is_query = _retrieval_images()
    full = export.tflite_features(exported["float32"], images)
    quantized = export.tflite_features(exported["int8"], images)
    assert np.max(np.abs(quantized - full)) > 1e-4  # dynamic range really quantizes
    rank1, mean_ap = _rank1_map(full, labels, is_query)
    rank1_int8, mean_ap_int8 = _rank1_map(quantized, labels, is_query)
    assert 15 < mean_ap < 99  # neither chance (~10) nor saturated: the check can fail
    print(f"float32 rank-1 {rank1:.1f} mAP {mean_ap:.2f}; int8 rank-1 {rank1_int8:.1f} "
          f"mAP {mean_ap_int8:.2f}")
    assert abs(rank1_int8 - rank1) <= 2 and abs(mean_ap_int8 - mean_ap) <= 2


def test_rank1_map_by_hand():
    # 2 queries, 3 gallery items on a line; query 0 (label 0) ranks [g0(0), g1(1), g2(0)]:
    # AP = (1/1 + 2/3) / 2; query 1 (label 1) ranks [g1(1), ...]: AP = 1.
    features = np.array([[0.0], [1.9], [0.1], [2.0], [3.0]])
    labels = np.array([0, 1, 0, 1, 0])
    is_query = np.array([True, True, False, False, False])
    rank1, mean_ap = _rank1_map(features, labels, is_query)
    assert rank1 == 100 and mean_ap == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)


def test_mode_model_writes_one_file_per_modality(tmp_path):
    model = mode_model()
    _randomise_batch_norms(model, 2)
    folder = str(tmp_path)
    assert export.export_inference_model(model, folder, "tflite", "float32") == folder
    paths = export.tflite_paths(model, folder)
    assert paths == {name: os.path.join(folder, f"inference_model_{name}.tflite")
                     for name in ("visible", "infrared")}
    images = np.random.default_rng(3).normal(size=(3, 16, 8, 3)).astype(np.float32)
    visible, infrared = (_keras_features(model, images, mode) for mode in (1, 2))
    assert np.max(np.abs(visible - infrared)) > 1e-2
    for name, expected in (("visible", visible), ("infrared", infrared)):
        np.testing.assert_allclose(export.tflite_features(paths[name], images), expected,
                                   atol=1e-4)
    assert export.tflite_paths(model, folder, "int8")["visible"].endswith(
        "inference_model_visible_int8.tflite")


def test_broken_export_reports_export_error(tmp_path):
    """A model with a Python (numpy_function) op: neither LiteRT's builtin ops nor ONNX have
    it, so both conversions fail and say so."""
    images = keras.Input((8, 4, 3), name="images")
    x = keras.layers.Conv2D(2, 3, padding="same")(images)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Lambda(lambda t: tf.ensure_shape(
        tf.numpy_function(np.tanh, [t], tf.float32), [None, 2]))(x)
    model = keras.Model(images, x)
    with pytest.raises(export.ExportError, match="--export_formats tflite: the conversion "
                                                 "failed.*float32") as caught:
        export.export_inference_model(model, str(tmp_path), "tflite")
    assert caught.value.__cause__ is caught.value.cause
    assert not os.path.exists(tmp_path / "inference_model.tflite")
