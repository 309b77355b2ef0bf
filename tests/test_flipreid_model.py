"""FlipReID models: shapes, parameter counts, GeM, clipping, heads, freezing, regularisers,
weight round trips and tf2cv ImageNet weight files (spec flipreid.md sections 5 and 11)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import os

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf.models.backbones import (build_backbone_blocks, load_tf2cv_weights,
                                      read_tf2cv_weights)
from reid_tf.models.base import iter_layers, set_all_trainable, set_trainable_by_prefix
from reid_tf.models.flipping import mirror_images
from reid_tf.models.flipreid import build_flipreid, stripe_bounds
from reid_tf.models.layers import ClipValues, GlobalGeMPooling2D
from reid_tf.models.regularization import collect_l2_terms, l2_penalty, summarize_terms

SMALL_SHAPE = (64, 32, 3)


def _num_params(variables):
    return sum(int(np.prod(variable.shape)) for variable in variables)


@pytest.fixture(scope="module")
def resnet50_full():
    """resnet50 at 384 x 128, R = 2, 751 classes, flip structure (spec defaults)."""
    return build_flipreid("resnet50", (384, 128, 3), 751, region_num=2,
                          use_horizontal_flipping_inside_model=True)


@pytest.fixture(scope="module")
def small_flip_model():
    return build_flipreid("resnet50", SMALL_SHAPE, 5, region_num=2,
                          use_horizontal_flipping_inside_model=True)


@pytest.fixture(scope="module")
def small_plain_model():
    return build_flipreid("resnet50", SMALL_SHAPE, 5, region_num=2,
                          use_horizontal_flipping_inside_model=False)


def _images(batch=2, seed=0):
    return np.random.RandomState(seed).normal(size=(batch,) + SMALL_SHAPE).astype("float32")


# ----------------------------------------------------------------------------- shapes, counts

def test_resnet50_shapes_and_block_counts(resnet50_full):
    inference = resnet50_full.inference_model
    assert inference.name == "inference_model"
    assert [tuple(o.shape) for o in inference.outputs] == [(None, 2048), (None, 1024),
                                                           (None, 1024)]
    blocks = {layer.name: layer for layer in inference.layers if isinstance(layer, keras.Model)}
    expected = {  # output shape, parameters (spec 5.3 and 5.10)
        "features_init_block": ((96, 32, 64), 9_664),
        "features_stage1": ((96, 32, 256), 218_624),
        "features_stage2": ((48, 16, 512), 1_226_752),
        "features_stage3": ((24, 8, 1024), 7_118_848),
        "features_stage4_global_branch": ((24, 8, 2048), 14_987_264),
        "features_stage4_regional_branch": ((24, 8, 2048), 14_987_264),
    }
    assert sorted(blocks) == sorted(expected)
    for name, (shape, params) in expected.items():
        assert tuple(blocks[name].output_shape[1:]) == shape, name
        assert blocks[name].count_params() == params, name
    # Stripes 12 x 8 x 2048 -> conv 12 x 8 x 1024.
    for index in (1, 2):
        assert tuple(inference.get_layer(f"regional_slice_{index}").output_shape) == (
            None, 12, 8, 2048)
        assert tuple(inference.get_layer(f"regional_conv_{index}").output_shape) == (
            None, 12, 8, 1024)
    # All parameters incl. BN moving statistics and the 3 GeM powers.
    assert inference.count_params() == 76_299_203
    # Replicas: same initial weights, distinct variables with distinct names.
    global_branch = blocks["features_stage4_global_branch"]
    regional_branch = blocks["features_stage4_regional_branch"]
    for first, second in zip(global_branch.weights, regional_branch.weights):
        assert first is not second and first.name != second.name
        np.testing.assert_array_equal(first.numpy(), second.numpy())
    names = [variable.name for variable in resnet50_full.training_model.weights]
    assert len(names) == len(set(names))
    assert not [layer.name for layer in iter_layers(resnet50_full.training_model)
                if "/" in layer.name]


def test_training_model_outputs(resnet50_full):
    outputs = resnet50_full.training_model.output
    assert [tuple(t.shape) for t in outputs["embeddings"]] == [(None, 2048), (None, 1024),
                                                               (None, 1024)]
    assert [tuple(t.shape) for t in outputs["logits"]] == [(None, 751)] * 3
    assert len(outputs["embeddings_original"]) == len(outputs["embeddings_flipped"]) == 3
    assert not any(isinstance(layer, keras.layers.Lambda)
                   for layer in resnet50_full.training_model.layers)


def test_heads_initialisation(resnet50_full):
    head = resnet50_full.head_model
    for index, width in enumerate((2048, 1024, 1024)):
        bn = head.get_layer(f"head_bn_{index}")
        assert bn.epsilon == pytest.approx(2e-5) and bn.momentum == pytest.approx(0.99)
        assert bn.center and bn.scale
        dense = head.get_layer(f"head_dense_{index}")
        assert not dense.use_bias and dense.bias is None
        kernel = dense.kernel.numpy()
        assert kernel.shape == (width, 751)
        assert kernel.std() == pytest.approx(0.001, rel=0.02)
        assert abs(kernel.mean()) < 2e-5


def test_freezing_and_unfreezing(resnet50_full):
    model = resnet50_full.training_model
    assert resnet50_full.backbone_prefixes == ("features_init_block", "features_stage1",
                                               "features_stage2", "features_stage3",
                                               "features_stage4")
    total_trainable = len(model.trainable_variables)
    try:
        set_trainable_by_prefix(model, resnet50_full.backbone_prefixes, False)
        trainable = model.trainable_variables
        assert len(trainable) == 16
        assert _num_params(trainable) == 40_835_075
        names = sorted(variable.name.split("/")[0] for variable in trainable)
        assert names == sorted(["regional_conv_1"] * 2 + ["regional_conv_2"] * 2
                               + ["global_ge_m_pooling2d", "global_ge_m_pooling2d_1",
                                  "global_ge_m_pooling2d_2"]
                               + [f"head_bn_{i}" for i in range(3)] * 2
                               + [f"head_dense_{i}" for i in range(3)])
    finally:
        set_all_trainable(model, True)
    assert len(model.trainable_variables) == total_trainable
    # Everything is trainable again except the BatchNormalization moving statistics.
    assert all("moving_" in variable.name for variable in model.non_trainable_weights)


def test_regularisation_counts_and_values(resnet50_full):
    inference_terms = collect_l2_terms(resnet50_full.inference_model, 5e-4, 5e-4, 5e-4, 5e-4)
    head_terms = collect_l2_terms(resnet50_full.head_model, 5e-4, 5e-4, 5e-4, 5e-4)
    assert summarize_terms(inference_terms) == {"kernel": 65, "bias": 2, "gamma": 63,
                                                "beta": 63}
    assert summarize_terms(head_terms) == {"kernel": 3, "gamma": 3, "beta": 3}
    assert len(resnet50_full.regularization) == 193 + 9
    variables = [variable for variable, _, _ in resnet50_full.regularization]
    assert len({id(v) for v in variables}) == len(variables)
    names = {variable.name for variable in variables}
    assert not any("power" in name or "moving" in name for name in names)
    # A penalty is factor * sum(w^2).
    kernel = resnet50_full.head_model.get_layer("head_dense_1").kernel
    term = [t for t in resnet50_full.regularization if t[0] is kernel]
    assert len(term) == 1 and term[0][1:] == (5e-4, "kernel")
    expected = 5e-4 * np.sum(kernel.numpy().astype(np.float64) ** 2)
    assert float(l2_penalty(term)) == pytest.approx(expected, rel=1e-5)
    # Factors select the kinds; 0 removes a kind.
    only_gamma = collect_l2_terms(resnet50_full.head_model, 0.0, 0.0, 0.25, 0.0)
    assert summarize_terms(only_gamma) == {"gamma": 3}
    gamma = resnet50_full.head_model.get_layer("head_bn_0").gamma
    gamma.assign(np.full(2048, 0.5, np.float32))
    try:
        value = float(l2_penalty(only_gamma))
        assert value == pytest.approx(0.25 * (2048 * 0.25 + 2 * 1024 * 1.0), rel=1e-6)
    finally:
        gamma.assign(np.ones(2048, np.float32))


def test_stripe_bounds():
    assert stripe_bounds(24, 2) == [(0, 12), (12, 24)]
    assert stripe_bounds(24, 3) == [(0, 8), (8, 16), (16, 24)]
    assert stripe_bounds(24, 5) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 24)]
    with pytest.raises(ValueError, match="region_num"):
        stripe_bounds(4, 5)


@pytest.mark.parametrize("backbone,region_num,params,kernel,bias,bn", [
    ("resnesta50", 3, 79_429_571, 124, 40, 84),
    ("ibn_resnet50", 5, 76_296_963, 65, 2, 63),
])
def test_other_backbones_counts(backbone, region_num, params, kernel, bias, bn):
    """Counts of spec 5.8/5.10 (given for R = 2) and the stripe shapes of R = 3 and R = 5."""
    models = build_flipreid(backbone, (384, 128, 3), 751, region_num=region_num)
    inference = models.inference_model
    width = 2048 // region_num  # 682 for R = 3, 409 for R = 5
    assert [tuple(o.shape) for o in inference.outputs] == (
        [(None, 2048)] + [(None, width)] * region_num)
    heights = [inference.get_layer(f"regional_slice_{i}").output_shape[1]
               for i in range(1, region_num + 1)]
    assert heights == {3: [8, 8, 8], 5: [4, 4, 4, 4, 8]}[region_num]
    assert models.training_model.output_shape["logits"] == [(None, 751)] * (region_num + 1)
    # Parameters and regularisers with R = 2 differ only by the regional convs and powers.
    regional_convs = region_num * (9 * 2048 * width + width)
    r2_convs = 2 * (9 * 2048 * 1024 + 1024)
    assert inference.count_params() - regional_convs - (region_num + 1) + r2_convs + 3 == params
    terms = collect_l2_terms(inference, 1e-3, 1e-3, 1e-3, 1e-3)
    assert summarize_terms(terms) == {"kernel": kernel - 2 + region_num,
                                      "bias": bias - 2 + region_num, "gamma": bn, "beta": bn}
    assert len(models.regularization) == len(terms) + 3 * (region_num + 1)
    set_trainable_by_prefix(models.training_model, models.backbone_prefixes, False)
    assert len(models.training_model.trainable_variables) == (
        2 * region_num + (region_num + 1) + 3 * (region_num + 1))
    set_all_trainable(models.training_model, True)


# ----------------------------------------------------------------------------- layers

def test_gem_pooling_matches_numpy():
    rng = np.random.RandomState(1)
    x = rng.normal(size=(2, 3, 4, 5)).astype("float32")  # negatives get clamped to 1e-6
    layer = GlobalGeMPooling2D(name="gem")
    y1 = layer(x).numpy()
    assert len(layer.weights) == 1 and len(layer.trainable_weights) == 1
    assert layer.power.shape == () and float(layer.power) == 1.0
    assert layer.power.name == "gem/power:0"
    clamped = np.maximum(x.astype(np.float64), 1e-6)
    np.testing.assert_allclose(y1, clamped.mean(axis=(1, 2)), rtol=1e-5)
    layer.power.assign(3.0)
    y3 = layer(x).numpy()
    np.testing.assert_allclose(y3, np.cbrt((clamped ** 3).mean(axis=(1, 2))), rtol=1e-4)
    assert y1.min() >= 1e-6
    config = layer.get_config()
    assert config["initial_power"] == 1.0 and config["trainable_power"] is True
    clone = GlobalGeMPooling2D.from_config(config)
    assert clone.name == "gem" and clone.initial_power == 1.0
    frozen = GlobalGeMPooling2D(initial_power=2.5, trainable_power=False)
    frozen(x)
    assert frozen.trainable_weights == [] and float(frozen.power) == 2.5


def test_clip_layer():
    layer = ClipValues(0.1, 0.5, name="clip")
    values = layer(np.array([[-1.0, 0.2, 0.7, 0.5]], np.float32)).numpy()
    np.testing.assert_allclose(values, [[0.1, 0.2, 0.5, 0.5]])
    assert layer.get_config()["min_value"] == 0.1
    with pytest.raises(ValueError, match="max_value"):
        ClipValues(1.0, 0.0)


# ----------------------------------------------------------------------------- forward passes

def test_flip_structure_on_flipreid(small_flip_model):
    images = _images(seed=2)
    inference = small_flip_model.inference_model
    outputs = small_flip_model.training_model(images, training=False)
    plain = [t.numpy() for t in inference(images, training=False)]
    mirrored = [t.numpy() for t in inference(images[:, :, ::-1].copy(), training=False)]
    for index in range(3):
        np.testing.assert_allclose(outputs["embeddings"][index].numpy(),
                                   (plain[index] + mirrored[index]) / 2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs["embeddings_original"][index].numpy(), plain[index],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs["embeddings_flipped"][index].numpy(),
                                   mirrored[index], rtol=1e-5, atol=1e-6)
        # Embeddings lie in [0, 1] and, with GeM at p = 1, are >= 1e-6.
        assert plain[index].min() >= 1e-6 - 1e-12 and plain[index].max() <= 1.0
    np.testing.assert_array_equal(mirror_images(images).numpy(), images[:, :, ::-1])


def test_plain_training_model_equals_inference(small_plain_model):
    images = _images(seed=3)
    outputs = small_plain_model.training_model(images, training=False)
    assert sorted(outputs) == ["embeddings", "logits"]
    plain = small_plain_model.inference_model(images, training=False)
    for merged, direct in zip(outputs["embeddings"], plain):
        np.testing.assert_allclose(merged.numpy(), direct.numpy(), rtol=1e-6, atol=1e-7)
    logits = small_plain_model.head_model(plain, training=False)["logits"]
    for a, b in zip(outputs["logits"], logits):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_weights_round_trip_with_and_without_flip(small_flip_model, small_plain_model,
                                                  tmp_path):
    images = _images(seed=4)
    # flip -> plain
    path = str(tmp_path / "flip.h5")
    small_flip_model.training_model.save_weights(path)
    small_plain_model.training_model.load_weights(path)
    os.remove(path)  # ~300 MB; pytest keeps the temporary folders of recent runs
    for a, b in zip(small_flip_model.inference_model(images),
                    small_plain_model.inference_model(images)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # plain (changed: GeM powers, a BN statistic, a head kernel) -> flip
    plain = small_plain_model.inference_model
    plain.get_layer("global_ge_m_pooling2d_1").power.assign(2.0)
    stage1 = plain.get_layer("features_stage1")
    moving_mean = [w for w in stage1.weights if "moving_mean" in w.name][0]
    moving_mean.assign(moving_mean + 0.25)
    path = str(tmp_path / "plain.h5")
    small_plain_model.training_model.save_weights(path)
    small_flip_model.training_model.load_weights(path)
    os.remove(path)
    assert float(small_flip_model.inference_model.get_layer(
        "global_ge_m_pooling2d_1").power) == 2.0
    for a, b in zip(small_flip_model.inference_model(images), plain(images)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_region_num_zero_single_output():
    models = build_flipreid("resnet50", SMALL_SHAPE, 4, region_num=0, pooling_mode="Average",
                            min_value=0.0, max_value=0.05)
    inference = models.inference_model
    assert not isinstance(inference.output, list)
    assert tuple(inference.output.shape) == (None, 2048)
    assert [layer.name for layer in inference.layers if isinstance(layer, keras.Model)] == [
        "features_init_block", "features_stage1", "features_stage2", "features_stage3",
        "features_stage4_global_branch"]
    # 53 convolutions and 53 BNs in the backbone (one stage-4 replica), 3 head terms.
    assert summarize_terms(models.regularization) == {"kernel": 54, "gamma": 54, "beta": 54}
    values = inference(_images(seed=5)).numpy()
    assert values.min() >= 0.0 and values.max() <= 0.05 + 1e-7
    outputs = models.training_model(_images(seed=5))
    assert len(outputs["embeddings"]) == 1 and tuple(outputs["logits"][0].shape) == (2, 4)


# ----------------------------------------------------------------------------- errors, weights

def test_errors_name_flags_and_values(tmp_path):
    with pytest.raises(ValueError, match=r"--backbone_model_name 'resnet51'.*resnet50"):
        build_flipreid("resnet51", SMALL_SHAPE, 5)
    with pytest.raises(ValueError, match=r"--pooling_mode 'Mean'.*Average, Max, GeM"):
        build_flipreid("resnet50", SMALL_SHAPE, 5, pooling_mode="Mean")
    missing = str(tmp_path / "nope.tf2.h5")
    with pytest.raises(FileNotFoundError, match=r"nope\.tf2\.h5.*--backbone_weights_file_path"):
        build_flipreid("resnet50", SMALL_SHAPE, 5, backbone_weights_file_path=missing)
    with pytest.raises(ValueError, match="--region_num"):
        build_flipreid("resnet50", SMALL_SHAPE, 5, region_num=-1)
    with pytest.raises(ValueError, match=r"--min_value \(2\.0\).*--max_value \(1\.0\)"):
        build_flipreid("resnet50", SMALL_SHAPE, 5, min_value=2.0, max_value=1.0)
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text\.h5"):
        read_tf2cv_weights(str(not_h5))


def test_load_tf2cv_weights_file(tmp_path):
    from tf2cv.model_provider import get_model

    net = get_model("resnet50", pretrained=False)
    net.build(input_shape=(1, 224, 224, 3))
    path = str(tmp_path / "resnet50-random.tf2.h5")
    net.save_weights(path)
    blocks = build_backbone_blocks("resnet50", SMALL_SHAPE)
    assert load_tf2cv_weights(blocks, path) == 265 + 50  # + the second stage-4 replica
    os.remove(path)
    images = tf.constant(_images(seed=6))
    ours, theirs = images, images
    for index, block in enumerate(blocks.trunk):
        ours = block(ours, training=False)
        theirs = net.features.children[index](theirs, training=False)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    reference_stage4 = net.features.children[4]
    for replica in blocks.last_stage.values():
        for unit, reference_unit in zip(replica.layers[1:], reference_stage4.children):
            assert len(unit.weights) == len(reference_unit.weights)
            for ours_w, theirs_w in zip(unit.weights, reference_unit.weights):
                np.testing.assert_array_equal(ours_w.numpy(), theirs_w.numpy())
    # Last stride 1 here, 2 in tf2cv.
    assert tuple(blocks.last_stage["global_branch"].output_shape[1:3]) == (4, 2)

    # A file whose names/shapes do not fit: error naming the file and first mismatches.
    bad = str(tmp_path / "bad.tf2.h5")
    with h5py.File(bad, "w") as handle:
        handle.attrs["layer_names"] = [b"features"]
        group = handle.create_group("features")
        name = "features/features/init_block/conv/conv/conv/kernel:0"
        group.attrs["weight_names"] = [name.encode()]
        group.create_dataset(name, data=np.zeros((3, 3, 3, 64), np.float32))
    with pytest.raises(ValueError) as error:
        load_tf2cv_weights(blocks, bad)
    message = str(error.value)
    assert "bad.tf2.h5" in message and "--backbone_weights_file_path" in message
    assert "init_block/conv/kernel: file (3, 3, 3, 64) vs model (7, 7, 3, 64)" in message
    assert "missing in the file" in message
