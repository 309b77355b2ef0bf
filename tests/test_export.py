"""Exports of the inference model (--export_formats): the SavedModel (tf.saved_model.load,
serving signatures) and the ONNX model (onnxruntime) give the Keras model's features to 1e-4,
for a FlipReID-structure network, a model with a mode input, and MSINet exported by
solution.py after training and with --evaluation_only."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf import export

from helpers import run_solution

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

TOLERANCE = 1e-4


def _randomise_batch_norms(model, seed):
    """Moving statistics, scales and shifts away from their initial values, so that
    inference-mode normalisation is not the identity."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.name
        if "moving_variance" in name or "gamma" in name:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))
        elif "moving_mean" in name or "beta" in name:
            variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))


def flipreid_structure_model():
    """FlipReID's inference structure on a small trunk: global branch and two regional
    stripes (conv, ReLU), GeM pooling and clipping; three outputs (concatenated features)."""
    from reid_tf.models.layers import ClipValues, GlobalGeMPooling2D, HeightSlice

    image = keras.Input((32, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="trunk_conv")(image)
    x = keras.layers.BatchNormalization(name="trunk_bn")(x)
    x = keras.layers.ReLU(name="trunk_relu")(x)

    def pool(tensor, index):
        tensor = GlobalGeMPooling2D(initial_power=3.0, name=f"gem_{index}")(tensor)
        return ClipValues(min_value=0.0, max_value=1.0, name=f"clip_{index}")(tensor)

    outputs = [pool(x, 0)]
    for index, (start, stop) in enumerate(((0, 8), (8, 16)), start=1):
        stripe = HeightSlice(start, stop, name=f"stripe_{index}")(x)
        stripe = keras.layers.Conv2D(4, 3, padding="same", name=f"stripe_conv_{index}")(stripe)
        stripe = keras.layers.ReLU(name=f"stripe_relu_{index}")(stripe)
        outputs.append(pool(stripe, index))
    return keras.Model(image, outputs, name="inference_model")


def mode_model():
    """A model with CM-NAS's ``[images, mode]`` inputs: a split switchable BN (separate
    visible and thermal statistics) between a convolution and the pooled features."""
    from reid_tf.models.switchable_bn import SwitchableBatchNormalization

    images = keras.Input((16, 8, 3), name="images")
    mode = keras.Input(batch_shape=(), dtype=tf.int32, name="mode")
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(images)
    x = SwitchableBatchNormalization(0, with_relu=True, name="switch_bn")(x, mode)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model([images, mode], x, name="inference_model")


def _keras_features(model, images, mode=None):
    outputs = model([images, mode] if mode is not None else images, training=False)
    if isinstance(outputs, (list, tuple)):
        outputs = tf.concat(outputs, axis=-1)
    return outputs.numpy()


def _onnx_features(path, images):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [item.name for item in session.get_inputs()] == ["images"]
    assert [item.name for item in session.get_outputs()] == ["features"]
    return session.run(None, {"images": images})[0]


def test_flipreid_structure_savedmodel_and_onnx(tmp_path):
    model = flipreid_structure_model()
    _randomise_batch_norms(model, 0)
    model.get_layer("gem_1").weights[0].assign(2.5)  # a non-default GeM power
    folder = str(tmp_path)
    saved = export.export_inference_model(model, folder, "savedmodel")
    onnx_path = export.export_inference_model(model, folder, "onnx")
    assert onnx_path == os.path.join(folder, "inference_model.onnx")
    # Only the traced function and the variables are saved, no Keras layer objects.
    assert not os.path.exists(os.path.join(saved, "keras_metadata.pb"))
    loaded = tf.saved_model.load(saved)
    assert list(loaded.signatures) == ["serving_default"]
    assert len(loaded.variables_to_save) == len(model.weights)

    images = np.random.default_rng(1).normal(size=(5, 32, 16, 3)).astype(np.float32)
    expected = _keras_features(model, images)
    assert expected.shape == (5, 16) and np.ptp(expected) > 1e-2
    served = loaded.signatures["serving_default"](images=tf.constant(images))["features"]
    np.testing.assert_allclose(served.numpy(), expected, atol=TOLERANCE)
    np.testing.assert_allclose(_onnx_features(onnx_path, images), expected, atol=TOLERANCE)
    # Any batch size (the exported batch axis is dynamic).
    np.testing.assert_allclose(_onnx_features(onnx_path, images[:2]), expected[:2],
                               atol=TOLERANCE)


def test_mode_model_exports_one_signature_and_onnx_file_per_mode(tmp_path):
    model = mode_model()
    _randomise_batch_norms(model, 2)
    folder = str(tmp_path)
    loaded = tf.saved_model.load(export.export_inference_model(model, folder, "savedmodel"))
    assert export.export_inference_model(model, folder, "onnx") == folder
    assert set(loaded.signatures) == {"serving_default", "visible", "infrared"}

    images = np.random.default_rng(3).normal(size=(3, 16, 8, 3)).astype(np.float32)
    visible, infrared = (_keras_features(model, images, mode) for mode in (1, 2))
    assert np.max(np.abs(visible - infrared)) > 1e-2  # the modes use different statistics
    paths = export.onnx_paths(model, folder)
    for name, mode, expected in (("visible", 1, visible), ("infrared", 2, infrared)):
        served = loaded.signatures["serving_default"](images=tf.constant(images),
                                                      mode=tf.constant(mode))["features"]
        np.testing.assert_allclose(served.numpy(), expected, atol=TOLERANCE)
        alone = loaded.signatures[name](images=tf.constant(images))["features"]
        np.testing.assert_allclose(alone.numpy(), expected, atol=TOLERANCE)
        assert paths[name] == os.path.join(folder, f"inference_model_{name}.onnx")
        np.testing.assert_allclose(_onnx_features(paths[name], images), expected,
                                   atol=TOLERANCE)
    with pytest.raises(tf.errors.InvalidArgumentError, match="mode must be 1"):
        loaded.signatures["serving_default"](images=tf.constant(images), mode=tf.constant(0))


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(ValueError, match="--export_formats: unknown format 'tensorrt'"):
        export.export_inference_model(mode_model(), str(tmp_path), "tensorrt")


def test_solution_exports_after_training_and_with_evaluation_only(tmp_path):
    """MSINet at 64x32: solution.py writes the SavedModel and the ONNX model after a short
    training and again with --evaluation_only from the trained weights; both give the
    features of the Keras inference model holding those weights."""
    from reid_tf.models.msinet import build_msinet_models

    cache = tmp_path / "cache"
    common = [
        "--dataset_name=Synthetic",
        f"--dataset_options=cache_folder_path={cache},num_train_identities=6,"
        "num_test_identities=3,num_cameras=2,images_per_identity=4,num_junk_images=0,"
        "num_distractor_images=0",
        "--backbone_model_name=msinet", "--image_height=64", "--image_width=32",
        "--identity_num_per_batch=2", "--image_num_per_identity=2", "--workers=1",
        "--freeze_backbone_for_N_epochs=0", "--export_formats=h5,savedmodel,onnx"]
    # A small step: one SGD step at a usual rate blows this untrained network's inference
    # features up to ~1e4, where float32 rounding alone (Keras eager vs the exported graph)
    # already moves them by ~1e-3 relative.
    run_solution(*common, f"--output_folder_path={tmp_path / 'train'}", "--steps_per_epoch=1",
                 "--epoch_num=1", "--testing_size=0", "--optimizer_name=sgd",
                 "--learning_rate_mode=constant", "--learning_rate_start=1e-5",
                 "--learning_rate_end=1e-5", "--use_data_augmentation_in_training=false")
    trained = tmp_path / "train" / "Synthetic_msinet"
    run_solution(*common, f"--output_folder_path={tmp_path / 'evaluate'}", "--evaluation_only",
                 f"--pretrained_model_file_path={trained / 'training_model.h5'}")
    evaluated = tmp_path / "evaluate" / "Synthetic_msinet"
    assert (evaluated / "inference_model.h5").is_file()

    reference = build_msinet_models("configs/genotypes/msmt.json", 6,
                                     input_shape=(64, 32, 3)).inference_model
    reference.load_weights(str(trained / "inference_model.h5"))
    images = np.random.default_rng(4).normal(size=(3, 64, 32, 3)).astype(np.float32)
    expected = _keras_features(reference, images)
    assert expected.shape == (3, 768) and np.max(np.abs(expected)) < 1e3
    for folder in (trained, evaluated):
        loaded = tf.saved_model.load(str(folder / export.SAVEDMODEL_FOLDER))
        served = loaded.signatures["serving_default"](images=tf.constant(images))["features"]
        np.testing.assert_allclose(served.numpy(), expected, atol=TOLERANCE)
        np.testing.assert_allclose(_onnx_features(str(folder / export.ONNX_FILE), images),
                                   expected, atol=TOLERANCE)


class _FailingOptimiser:
    """Stands in for one tf2onnx graph optimiser: counts its calls and always raises."""

    calls = 0

    def __init__(self):
        self.graph_been_opt = False

    def optimize(self, graph, iteration):
        type(self).calls += 1
        raise RuntimeError("injected optimiser failure")


def test_onnx_optimiser_failure_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    """A tf2onnx optimiser that raises in the fast conversion (errors not caught): the export
    logs a warning naming that optimiser and the error, converts again with tf2onnx skipping
    the failing optimiser, and the ONNX model still gives the Keras features."""
    import tf2onnx.optimizer

    monkeypatch.setattr(_FailingOptimiser, "calls", 0)
    monkeypatch.setitem(tf2onnx.optimizer._optimizers, "remove_back_to_back",  # noqa: SLF001
                        _FailingOptimiser)
    model = flipreid_structure_model()
    _randomise_batch_norms(model, 5)
    with caplog.at_level("WARNING", logger="reid_tf.export"):
        path = export.export_inference_model(model, str(tmp_path), "onnx")
    # Once in the fast conversion (which it stopped), at least once in the fallback (caught).
    assert _FailingOptimiser.calls >= 2
    warnings = [record for record in caplog.records
                if record.name == "reid_tf.export" and record.levelname == "WARNING"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "remove_back_to_back" in message and "injected optimiser failure" in message
    assert "serving_default" in message
    images = np.random.default_rng(6).normal(size=(4, 32, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(_onnx_features(path, images), _keras_features(model, images),
                               atol=TOLERANCE)


def test_onnx_conversion_failure_outside_the_optimisers_is_an_export_error(tmp_path,
                                                                           monkeypatch):
    """A failure in the conversion proper (not an optimiser) is not retried: ExportError
    naming the format, the function and the cause, with the original exception chained."""
    import tf2onnx.convert

    def broken(*args, **kwargs):
        raise ValueError("injected conversion failure")

    monkeypatch.setattr(tf2onnx.convert, "process_tf_graph", broken)
    with pytest.raises(export.ExportError, match=r"--export_formats onnx: the conversion "
                       r"failed \(serving_default\): ValueError: injected conversion failure") \
            as raised:
        export.export_inference_model(flipreid_structure_model(), str(tmp_path), "onnx")
    assert isinstance(raised.value.__cause__, ValueError)
    assert not os.path.exists(os.path.join(tmp_path, export.ONNX_FILE))
