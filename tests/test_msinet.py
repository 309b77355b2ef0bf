"""MSINet network, heads, SAM, genotype files and the SAM loss (msinet.md §3, §4, §7, §11, §14)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf.losses.sam import spatial_alignment_loss
from reid_tf.models import genotypes
from reid_tf.models.base import ReIDModels
from reid_tf.models.msinet import (
    batch_norm_names,
    build_msinet,
    build_msinet_models,
    count_parameters,
    mid_channels,
    msinet_backbone,
)
from reid_tf.models.msinet_ops import ChannelGate, CrossAttention, default_batch_norm

MSMT = list(genotypes.MSMT_GENOTYPE)
CELL_INDICES = (0, 1, 3, 4, 6, 7)


@pytest.fixture(scope="module")
def standard():
    """The published network at 256x128, 751 classes, no SAM."""
    return build_msinet_models("msmt", 751)


@pytest.fixture(scope="module")
def small_sam():
    """A 64x32 network with SAM, 5 classes, built through a recording BN factory."""
    calls = []

    def recording_factory(name, frozen_beta=False):
        calls.append((name, frozen_beta))
        return default_batch_norm(name, frozen_beta=frozen_beta)

    models = build_msinet_models(MSMT, 5, input_shape=(64, 32, 3), sam=True,
                                 bn_factory=recording_factory)
    return models, calls


def _output_shape(model, layer_name):
    return tuple(model.get_layer(layer_name).output.shape[1:])


# ------------------------------------------------------------------------------------------
# Structure
# ------------------------------------------------------------------------------------------
def test_shapes_at_256x128(standard):
    model = standard.training_model
    expected = {
        "conv1_relu": (128, 64, 64), "maxpool": (64, 32, 64),
        "cells_0_relu": (64, 32, 256), "cells_1_relu": (64, 32, 256),
        "cells_2_1_pool": (32, 16, 256), "cells_3_relu": (32, 16, 384),
        "cells_4_relu": (32, 16, 384), "cells_5_1_pool": (16, 8, 384),
        "cells_6_relu": (16, 8, 512), "cells_7_relu": (16, 8, 512), "f_conv": (16, 8, 128),
    }
    for layer_name, shape in expected.items():
        assert _output_shape(model, layer_name) == shape, layer_name
    outputs = model(np.zeros((2, 256, 128, 3), np.float32), training=False)
    assert sorted(outputs) == ["bnneck", "embeddings", "logits"]
    assert [tuple(t.shape) for t in outputs["embeddings"]] == [(2, 512), (2, 256)]
    assert [tuple(t.shape) for t in outputs["logits"]] == [(2, 751), (2, 751)]
    assert [tuple(t.shape) for t in outputs["bnneck"]] == [(2, 512), (2, 256)]
    assert tuple(standard.inference_model.output.shape) == (None, 768)
    assert all("/" not in layer.name for layer in model.layers)


def test_shapes_at_256x256_with_sam():
    training_model, inference_model = build_msinet(MSMT, 576, input_shape=(256, 256, 3),
                                                   sam=True)
    assert _output_shape(training_model, "cells_7_relu") == (16, 16, 512)
    assert _output_shape(training_model, "cells_5_1_pool") == (16, 16, 384)
    assert tuple(training_model.output["sam_scores"].shape) == (None, None, 256)
    assert tuple(inference_model.output.shape) == (None, 768)


def test_mid_channels_final_rule(standard):
    model = standard.training_model
    widths = [model.get_layer(f"cells_{i}_conv1a_conv").kernel.shape[-1] for i in CELL_INDICES]
    assert widths == [64, 64, 96, 96, 128, 128]
    assert [mid_channels(cin, cout) for cin, cout in
            [(64, 256), (256, 256), (256, 384), (384, 384), (384, 512), (512, 512)]] == widths
    # ChannelGate hidden width M // 16 (cells[0] op2, cells[4] op2, cells[6] op2).
    assert [model.get_layer(name).hidden for name in ("cells_0_op2", "cells_4_op2",
                                                      "cells_6_op2")] == [4, 6, 8]
    assert isinstance(model.get_layer("cells_3_op2"), CrossAttention)
    assert model.get_layer("cells_0_downsample_conv").kernel.shape == (1, 1, 64, 256)
    assert "cells_1_downsample_conv" not in [layer.name for layer in model.layers]


def test_mid_channels_search_rule():
    images = keras.Input((64, 32, 3))
    x, f_x = msinet_backbone(images, ["ag"] * 12, mid_channels_rule="search")
    model = keras.Model(images, [x, f_x])
    widths = [model.get_layer(f"cells_{i}_conv1a_conv").kernel.shape[-1] for i in CELL_INDICES]
    assert widths == [16, 64, 64, 96, 96, 128]
    hidden = [model.get_layer(f"cells_{i}_op2").hidden for i in CELL_INDICES]
    assert hidden == [1, 4, 4, 6, 6, 8]
    # Cell output widths do not depend on the rule.
    assert tuple(x.shape[1:]) == (4, 2, 512) and tuple(f_x.shape[1:]) == (4, 2, 384)
    with pytest.raises(ValueError, match="mid_channels_rule"):
        mid_channels(64, 256, "half")


def test_batch_norm_factory_order(small_sam):
    models, calls = small_sam
    names = batch_norm_names()
    assert len(names) == 80
    assert [name for name, _ in calls] == names
    assert [name for name, frozen in calls if frozen] == ["head_bn", "f_head_bn"]
    assert names[:5] == ["conv1_bn", "cells_0_conv1a_bn", "cells_0_conv1b_bn",
                         "cells_0_conv2a_bn", "cells_0_conv2b_0_bn"]
    assert names[13] == "cells_0_downsample_bn" and names[14] == "cells_1_conv1a_bn"
    assert names[26] == "cells_2_0_bn"
    bn_layers = [layer for layer in models.training_model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
    assert sorted(layer.name for layer in bn_layers) == sorted(names)


# ------------------------------------------------------------------------------------------
# Parameter counts (§11)
# ------------------------------------------------------------------------------------------
def test_parameter_counts(standard):
    model = standard.training_model
    assert count_parameters(model, include_classifiers=False) == 2_328_035
    assert count_parameters(model) == 2_906_305
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 2_905_537
    moving = sum(int(np.prod(w.shape)) for w in model.weights if "moving_" in w.name)
    assert moving == 25_984
    per_module = {
        "conv1_": 9_536, "cells_0_": 98_696, "cells_1_": 105_796, "cells_2_": 66_048,
        "cells_3_": 307_303, "cells_4_": 232_806, "cells_5_": 148_224, "cells_6_": 574_089,
        "cells_7_": 407_041, "fc": 262_144, "head_bn": 1_024, "f_conv": 49_280, "f_fc": 65_536,
        "f_head_bn": 512, "classifier": 385_263, "f_classifier": 193_007,
    }
    for prefix, expected in per_module.items():
        assert count_parameters(model, prefix=prefix) == expected, prefix
    # cells[0] internals: conv1a 4,224; light conv 4,800; gate 580; conv4a 16,896.
    assert count_parameters(model, prefix="cells_0_conv1a_") == 4_224
    assert count_parameters(model, prefix="cells_0_conv2b_1_") == 4_800
    assert count_parameters(model, prefix="cells_0_op2") == 580
    assert count_parameters(model, prefix="cells_0_conv4b_") == 16_896
    assert count_parameters(model, prefix="cells_4_op2") == 1_254
    assert count_parameters(model, prefix="cells_6_op2") == 2_184
    gammas = [w for w in model.weights if w.name.endswith("gamma:0") and "_op" in w.name]
    assert sorted(w.name for w in gammas) == ["cells_3_op2/gamma:0", "cells_6_op3/gamma:0",
                                             "cells_7_op3/gamma:0"]


def test_parameter_counts_with_sam(small_sam):
    model = small_sam[0].training_model
    assert count_parameters(model, prefix="sam_") == 65_664
    # Input size does not change the count; 5 classes -> 770 * 5 classifier parameters.
    assert count_parameters(model, include_classifiers=False) == 2_328_035 + 65_664
    assert count_parameters(model) == 2_328_035 + 65_664 + 770 * 5


# ------------------------------------------------------------------------------------------
# Initialisation (§4.4)
# ------------------------------------------------------------------------------------------
def test_initialisation_statistics(standard):
    model = standard.training_model
    stem = model.get_layer("conv1_conv").kernel.numpy()
    assert abs(stem.std() / np.sqrt(2.0 / (64 * 49)) - 1.0) < 0.04
    depthwise = np.concatenate([
        layer.depthwise_kernel.numpy().ravel() for layer in model.layers
        if layer.name.startswith("cells_7_") and isinstance(layer, keras.layers.DepthwiseConv2D)])
    assert depthwise.size == 8 * 9 * 128
    assert abs(depthwise.std() / np.sqrt(2.0 / (9 * 128)) - 1.0) < 0.04
    gate = model.get_layer("cells_0_op2")
    fc1 = np.concatenate([model.get_layer(f"cells_{i}_op2").fc1_kernel.numpy().ravel()
                          for i in (0, 4)])
    assert fc1.std() > 0.3  # std sqrt(2/4) and sqrt(2/6): kaiming fan_out of a 1x1 conv
    np.testing.assert_array_equal(gate.fc1_bias.numpy(), 0.0)
    np.testing.assert_array_equal(gate.fc2_bias.numpy(), 0.0)
    fc = model.get_layer("fc").kernel.numpy()
    assert abs(fc.std() - 0.01) < 0.0003 and model.get_layer("fc").bias is None
    classifier = model.get_layer("classifier")
    assert abs(classifier.kernel.numpy().std() - 0.01) < 0.0005
    np.testing.assert_array_equal(classifier.bias.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("f_conv").bias.numpy(), 0.0)
    f_conv = model.get_layer("f_conv").kernel.numpy()
    assert abs(f_conv.std() / np.sqrt(2.0 / 128) - 1.0) < 0.05
    for name in ("cells_3_op2", "cells_6_op3", "cells_7_op3"):
        np.testing.assert_array_equal(model.get_layer(name).gamma.numpy(), [0.0])
    head = model.get_layer("head_bn")
    assert [w.name for w in head.trainable_weights] == ["head_bn/gamma:0"]
    assert "head_bn/beta:0" in [w.name for w in head.weights]
    np.testing.assert_array_equal(head.gamma.numpy(), 1.0)
    bn = model.get_layer("cells_1_conv3b_2_bn")
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5


# ------------------------------------------------------------------------------------------
# Heads and SAM, numerically
# ------------------------------------------------------------------------------------------
def test_heads_and_sam_match_numpy(small_sam):
    models = small_sam[0]
    model = models.training_model
    rng = np.random.default_rng(4)
    images = rng.normal(size=(3, 64, 32, 3)).astype(np.float32)
    # Non-trivial head BN statistics and parameters.
    for name, size in (("head_bn", 512), ("f_head_bn", 256)):
        layer = model.get_layer(name)
        layer.moving_mean.assign(rng.normal(size=size).astype(np.float32) * 0.01)
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype(np.float32))
        layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype(np.float32))
    probe = keras.Model(model.input, [model.get_layer(name).output for name in
                                      ("cells_7_relu", "f_conv", "sam_query_conv",
                                       "sam_key_conv")])
    x, f_map, query, key = (t.numpy().astype(np.float64) for t in probe(images, training=False))
    outputs = model(images, training=False)
    assert x.shape == (3, 4, 2, 512) and f_map.shape == (3, 4, 2, 128)

    v = x.mean(axis=(1, 2))
    f_v = np.concatenate([f_map[:, :2].mean(axis=(1, 2)), f_map[:, 2:].mean(axis=(1, 2))], 1)
    np.testing.assert_allclose(outputs["embeddings"][0].numpy(), v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["embeddings"][1].numpy(), f_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(models.inference_model(images, training=False).numpy(),
                               np.concatenate([v, f_v], 1), rtol=1e-5, atol=1e-6)

    def bnneck(features, fc_name, bn_name, classifier_name):
        bn = model.get_layer(bn_name)
        projected = features @ model.get_layer(fc_name).kernel.numpy()
        normalised = ((projected - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy()
                      + 1e-5) * bn.gamma.numpy() + bn.beta.numpy())
        classifier = model.get_layer(classifier_name)
        return normalised, normalised @ classifier.kernel.numpy() + classifier.bias.numpy()

    n_v, y = bnneck(v, "fc", "head_bn", "classifier")
    n_f_v, f_y = bnneck(f_v, "f_fc", "f_head_bn", "f_classifier")
    for got, expected in zip(outputs["bnneck"] + outputs["logits"], [n_v, n_f_v, y, f_y]):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)

    # SAM: K[g, p, i] = max_j <x_p(i), x_g(j)>, P[b, i] = max_j <q_b(i), k_b(j)>.
    flat = x.reshape(3, 8, 512)
    kernel_scores = np.einsum("pic,gjc->gpij", flat, flat).max(axis=-1)
    position = np.einsum("bic,bjc->bij", query.reshape(3, 8, 64), key.reshape(3, 8, 64)).max(-1)
    sam_scores = outputs["sam_scores"].numpy()
    assert sam_scores.shape == (4, 3, 8)
    np.testing.assert_allclose(sam_scores[:3], kernel_scores, rtol=1e-4)
    np.testing.assert_allclose(sam_scores[3], position, rtol=1e-4, atol=1e-4)

    # The stand-alone head and embedding models share the layers.
    head = models.head_model([outputs["embeddings"][0], outputs["embeddings"][1]],
                             training=False)
    np.testing.assert_allclose(head["logits"][0].numpy(), y, rtol=1e-4, atol=1e-6)
    embedded = models.embedding_model(images, training=False)
    assert sorted(embedded) == ["embeddings", "sam_scores"]
    np.testing.assert_allclose(embedded["sam_scores"].numpy(), sam_scores, rtol=1e-6)


def test_reid_models_contract(small_sam):
    models = small_sam[0]
    assert isinstance(models, ReIDModels)
    assert models.regularization == []
    backbone = [layer.name for layer in models.training_model.layers
                if layer.name.startswith(models.backbone_prefixes)]
    assert "conv1_conv" in backbone and "cells_7_relu" in backbone and "maxpool" in backbone
    assert not any(name.startswith(("fc", "f_", "head", "classifier", "sam"))
                   for name in backbone)
    head_layers = {layer.name for layer in models.head_model.layers}
    assert {"fc", "head_bn", "classifier", "f_fc", "f_head_bn", "f_classifier"} <= head_layers


def test_training_step_in_tf_function_with_sam_loss(small_sam):
    model = small_sam[0].training_model
    images = np.random.default_rng(5).normal(size=(4, 64, 32, 3)).astype(np.float32)
    labels = tf.constant([0, 0, 1, 1])

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            outputs = model(batch, training=True)
            loss = spatial_alignment_loss(outputs["sam_scores"], labels, "pos_neg")
        return loss, tape.gradient(loss, model.get_layer("sam_query_conv").kernel)

    loss, gradient = step(images)
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0.0
    assert np.abs(gradient.numpy()).sum() > 0.0


# ------------------------------------------------------------------------------------------
# SAM loss (§7.2)
# ------------------------------------------------------------------------------------------
def _numpy_sam_loss(scores, labels, mode):
    scores = scores.astype(np.float64)
    batch = len(labels)
    same = labels[:, None] == labels[None, :]

    def cosine(x, y):
        x_n = x / np.linalg.norm(x, axis=-1, keepdims=True)
        y_n = y / np.linalg.norm(y, axis=-1, keepdims=True)
        return 1.0 - x_n @ y_n.T

    loss = 0.0
    if "pos" in mode:
        loss += np.mean([cosine(scores[batch][g:g + 1], scores[g][same[g]])
                         for g in range(batch)])
    if "neg" in mode:
        loss += np.mean([cosine(scores[g][~same[g]], scores[g][~same[g]])
                         for g in range(batch)])
    return loss


def test_sam_loss_test_vector():
    scores = (np.sin(np.arange(60)).reshape(5, 4, 3) + 1.5).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    for mode, expected in (("pos", 0.0961203), ("neg", 0.1450086), ("pos_neg", 0.2411288)):
        assert abs(float(spatial_alignment_loss(scores, labels, mode)) - expected) < 1e-6
        assert abs(_numpy_sam_loss(scores, labels, mode) - expected) < 1e-6


def test_sam_loss_random_pk_batch_in_tf_function():
    rng = np.random.default_rng(6)
    labels = np.repeat([3, 7, 1], 2)[rng.permutation(6)]  # unsorted PK batch, K = 2
    scores = rng.uniform(0.1, 2.0, size=(7, 6, 5)).astype(np.float32)
    loss_function = tf.function(spatial_alignment_loss, reduce_retracing=True)
    for mode in ("pos", "neg", "pos_neg"):
        got = float(loss_function(tf.constant(scores), tf.constant(labels), mode))
        assert abs(got - _numpy_sam_loss(scores, labels, mode)) < 1e-5
    with pytest.raises(ValueError, match="'pos' and/or 'neg'"):
        spatial_alignment_loss(scores, labels, "none")
    with pytest.raises(tf.errors.InvalidArgumentError, match="PK batch"):
        spatial_alignment_loss(scores, np.array([0, 0, 0, 1, 1, 2]), "pos")


# ------------------------------------------------------------------------------------------
# Genotype files
# ------------------------------------------------------------------------------------------
def test_msmt_genotype_file():
    path = "configs/genotypes/msmt.json"
    with open(path) as stream:
        assert json.load(stream) == MSMT
    assert genotypes.load_genotype(path) == MSMT
    assert genotypes.resolve_genotype(path) == MSMT
    assert genotypes.resolve_genotype("msmt") == MSMT


def test_genotype_file_forms_and_errors(tmp_path):
    object_form = tmp_path / "object.json"
    object_form.write_text(json.dumps({"genotype": ["none"] * 12, "note": "x"}))
    assert genotypes.load_genotype(object_form) == ["none"] * 12
    written = tmp_path / "sub" / "written.json"
    genotypes.save_genotype(MSMT, written)
    assert json.loads(written.read_text()) == MSMT

    short = tmp_path / "short.json"
    short.write_text(json.dumps(MSMT[:11]))
    with pytest.raises(ValueError, match=r"short\.json.*12 operations.*got 11"):
        genotypes.load_genotype(short)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(MSMT[:7] + ["skip_connect"] + MSMT[8:]))
    with pytest.raises(ValueError, match=r"unknown\.json: unknown operation 'skip_connect' at "
                                         r"position 7; allowed names: none, exc, ag, cross_att"):
        genotypes.load_genotype(unknown)
    no_key = tmp_path / "no_key.json"
    no_key.write_text(json.dumps({"ops": MSMT}))
    with pytest.raises(ValueError, match="no_key.json.*'genotype'"):
        genotypes.load_genotype(no_key)
    broken = tmp_path / "broken.json"
    broken.write_text("[\"ag\",")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        genotypes.load_genotype(broken)
    with pytest.raises(ValueError, match="neither an existing JSON file"):
        genotypes.resolve_genotype(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="position 0"):
        build_msinet([1] + MSMT[1:], 10, input_shape=(64, 32, 3))
    with pytest.raises(ValueError, match="num_classes"):
        build_msinet(MSMT, 0, input_shape=(64, 32, 3))
