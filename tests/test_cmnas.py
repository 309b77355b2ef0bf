"""CM-NAS ResNet-50 and two-stream network (cmnas.md §3–§5, §14.1–9)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from reid_tf.losses.cmnas import cmnas_total_loss
from reid_tf.models import cmnas, cmnas_imagenet
from reid_tf.models.base import ReIDModels
from reid_tf.models.cmnas_config import (
    ALL_SHARE,
    ALL_SPLIT,
    ConfigError,
    derive_config,
    read_config,
    write_config,
)
from reid_tf.training.optimizers import TorchAdam
from helpers import random_resnet50_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A mixed config: stem split, layer1 share, then alternating.
MIXED_CONFIG = [0] + [1] * 10 + [i % 2 for i in range(42)]
SMALL = (64, 32)


# ------------------------------------------------------------------------------ helpers
def torchvision_resnet50_state_dict(seed=0):
    """A torchvision-layout ResNet-50 state dict with random values (names written out here,
    independently of the model code)."""
    rng = np.random.default_rng(seed)
    state = random_resnet50_state_dict(rng)
    state["fc.weight"] = rng.normal(size=(1000, 2048)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    return state


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("imagenet") / "resnet50-fake.pth"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in
                torchvision_resnet50_state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def mixed_models():
    return cmnas.build_cmnas_models(MIXED_CONFIG, 395, input_shape=(None, None, 3))


@pytest.fixture(scope="module")
def split_models():
    return cmnas.build_cmnas_models(ALL_SPLIT, 395, input_shape=(None, None, 3))


@pytest.fixture(scope="module")
def share_models():
    return cmnas.build_cmnas_models(ALL_SHARE, 395, input_shape=(None, None, 3))


def images(n, seed, size=SMALL):
    return np.random.default_rng(seed).normal(size=(n,) + size + (3,)).astype(np.float32)


def count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


# ------------------------------------------------------------------------------ layout / config
def test_switchable_bn_layout_follows_the_construction_order():
    layout = cmnas.switchable_bn_layout()
    assert len(layout) == 53 == len(cmnas.conv_layout())
    assert [spec.index for spec in layout] == list(range(53))
    assert (layout[0].name, layout[0].channels, layout[0].with_relu) == ("bn1", 64, True)
    for index, channels, stage in ((1, 256, 1), (11, 512, 2), (24, 1024, 3), (43, 2048, 4)):
        assert layout[index].name == f"layer{stage}_0_downsample_bn"
        assert layout[index].torch_name == f"layer{stage}.0.downsample.bn"
        assert layout[index].imagenet_name == f"layer{stage}.0.downsample.1"
        assert (layout[index].channels, layout[index].with_relu) == (channels, False)
    assert (layout[2].name, layout[2].torch_name, layout[2].channels) == (
        "layer1_0_bn1", "layer1.0.bn1", 64)
    assert (layout[52].name, layout[52].channels, layout[52].with_relu) == (
        "layer4_2_bn3", 2048, False)
    assert (layout[27].name, layout[28].name, layout[42].name) == (
        "layer3_0_bn3", "layer3_1_bn1", "layer3_5_bn3")
    assert sum(spec.channels for spec in layout) == 26560
    for spec in layout[1:]:
        assert spec.with_relu == spec.name.endswith(("bn1", "bn2")), spec
    conv_params = sum(s.in_channels * s.out_channels * s.kernel_size ** 2
                      for s in cmnas.conv_layout())
    assert conv_params == 23454912


def test_config_files_read_write_and_errors(tmp_path):
    assert read_config(os.path.join(REPO, "configs/cmnas/all_share.cfg")) == [1] * 53
    assert read_config(os.path.join(REPO, "configs/cmnas/all_split.cfg")) == [0] * 53
    assert os.path.isfile(os.path.join(REPO, "configs/cmnas/README.md"))
    path = tmp_path / "net.cfg"
    write_config(MIXED_CONFIG, path)
    assert path.read_text() == " ".join(map(str, MIXED_CONFIG)) + "\n"
    assert read_config(path) == MIXED_CONFIG
    path.write_text(" ".join(map(str, MIXED_CONFIG)) + "\nthis second line is ignored 7\n")
    assert read_config(str(path)) == MIXED_CONFIG
    bad = tmp_path / "short.cfg"
    bad.write_text("0 1 " * 26 + "\n")
    with pytest.raises(ValueError, match=r"short\.cfg.*exactly 53.*got 52"):
        read_config(bad)
    bad.write_text("0 " * 54)
    with pytest.raises(ValueError, match="got 54"):
        read_config(bad)
    bad.write_text("0 " * 5 + "2 " + "0 " * 47)
    with pytest.raises(ValueError, match=r"short\.cfg: value 2 at position 5"):
        read_config(bad)
    bad.write_text("0 " * 7 + "x " + "0 " * 45)
    with pytest.raises(ValueError, match=r"token 'x' at position 7"):
        read_config(bad)
    bad.write_text("\n0 1\n")
    with pytest.raises(ConfigError, match="empty"):
        read_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.cfg"):
        read_config(tmp_path / "missing.cfg")
    with pytest.raises(ValueError, match="position 3"):
        cmnas.build_cmnas_resnet50([0, 0, 0, 5] + [0] * 49, 10)
    assert derive_config([[0.0, 0.0], [0.1, 0.2], [0.3, -1.0]]) == [0, 1, 0]


# ------------------------------------------------------------------------------ structure
def test_parameter_counts_and_variable_groups(mixed_models):
    assert isinstance(mixed_models, ReIDModels)
    model = mixed_models.training_model
    weights = model.weights
    assert len({w.name for w in weights}) == len(weights) == 53 + 53 * 12 + 3 + 1
    convs = [w for w in weights if w.name.endswith("kernel:0") and "classifier" not in w.name]
    assert count(convs) == 23454912
    for set_name in ("visible_bn", "thermal_bn", "sharable_bn"):
        affine = [w for w in weights if f"/{set_name}/" in w.name
                  and w.name.endswith(("gamma:0", "beta:0"))]
        assert count(affine) == 53120
    backbone_all = [w for w in weights if w.name.split("/")[0] not in ("bnneck", "classifier")
                    and "moving" not in w.name]
    assert count(backbone_all) == 23614272
    assert count(model.get_layer("classifier").weights) == 2048 * 395 == 808960
    bnneck = model.get_layer("bnneck")
    assert [w.name for w in bnneck.trainable_weights] == ["bnneck/gamma:0"]
    assert bnneck.beta is None  # the reference's frozen zero bias
    assert cmnas.switchable_config(mixed_models) == MIXED_CONFIG

    groups = cmnas.variable_groups(mixed_models)
    splits = MIXED_CONFIG.count(0)
    shares = MIXED_CONFIG.count(1)
    assert len(groups.backbone) == 53 + 4 * splits + 2 * shares
    assert [w.name for w in groups.head] == ["bnneck/gamma:0", "classifier/kernel:0"]
    assert groups.architecture == []
    assert len(groups.frozen) == 4 * splits + 8 * shares
    frozen_names = {w.name for w in groups.frozen}
    assert "bn1/sharable_bn/gamma:0" in frozen_names  # index 0 is split
    assert "layer1_0_bn1/visible_bn/moving_mean:0" in frozen_names  # index 2 is share
    assert "layer1_0_bn1/sharable_bn/gamma:0" not in frozen_names
    ids = [id(w) for w in groups.backbone + groups.head + groups.frozen]
    assert len(ids) == len(set(ids))
    trainable = {id(w) for w in model.trainable_weights}
    assert {id(w) for w in groups.backbone + groups.head} <= trainable
    # The trainer's name-prefix groups see the same backbone.
    prefixed = [w for w in model.trainable_weights
                if w.name.startswith(mixed_models.backbone_prefixes)]
    assert {id(w) for w in prefixed} == {id(w) for w in groups.backbone} | {
        id(w) for w in groups.frozen if w.trainable}


def with_backbone(models):
    """``[images, mode]`` -> ``[backbone feature map, training outputs]`` in one call."""
    model = models.training_model
    return tf_keras.Model(model.inputs, [cmnas.backbone_output(models).output, model.output])


def test_shapes_at_256x128(split_models):
    x = images(2, 0, (256, 128))
    feature_map, outputs = with_backbone(split_models)([x, 0], training=True)
    assert feature_map.shape == (2, 16, 8, 2048)
    assert sorted(outputs) == ["bnneck", "embeddings", "logits"]
    assert outputs["embeddings"][0].shape == outputs["bnneck"][0].shape == (2, 2048)
    assert outputs["logits"][0].shape == (2, 395)
    global_feat, feat = split_models.inference_model([x, 2])
    assert global_feat.shape == feat.shape == (2, 2048)


def test_all_split_visible_half_ignores_thermal_input(split_models):
    x = images(4, 1)
    y = x.copy()
    y[2:] = images(2, 2) * 3.0 + 1.0
    model = with_backbone(split_models)
    map_x, out_x = model([x, 0], training=True)
    map_y, out_y = model([y, 0], training=True)
    np.testing.assert_allclose(map_x[:2].numpy(), map_y[:2].numpy(), atol=1e-5)
    np.testing.assert_allclose(out_x["embeddings"][0][:2].numpy(),
                               out_y["embeddings"][0][:2].numpy(), atol=1e-5)
    assert not np.allclose(out_x["embeddings"][0][2:].numpy(), out_y["embeddings"][0][2:].numpy())
    # The BNNeck pools all samples in training, so feat does depend on the other half.
    assert not np.allclose(out_x["bnneck"][0][:2].numpy(), out_y["bnneck"][0][:2].numpy(),
                           atol=1e-4)
    # Eval mode: per-sample independent.
    full = split_models.inference_model([x, 2])
    single = split_models.inference_model([x[3:], 2])
    for a, b in zip(full, single):
        np.testing.assert_allclose(a[3:].numpy(), b.numpy(), atol=1e-5)


def test_all_share_mode0_is_the_baseline_on_the_whole_batch(share_models, split_models):
    """All-share, mode 0 == one BN over the whole batch: equal to the all-split network in
    mode 1 (visible BNs on every sample) once its visible sets hold the shared parameters."""
    share, split = share_models.training_model, split_models.training_model
    rng = np.random.default_rng(3)
    for share_layer, split_layer in zip(cmnas.switchable_bn_layers(share),
                                        cmnas.switchable_bn_layers(split)):
        c = share_layer.sharable_bn.gamma.shape[0]
        gamma = rng.uniform(0.5, 1.0, c).astype(np.float32)
        beta = rng.normal(0, 0.1, c).astype(np.float32)
        share_layer.sharable_bn.gamma.assign(gamma)
        share_layer.sharable_bn.beta.assign(beta)
        split_layer.visible_bn.gamma.assign(gamma)
        split_layer.visible_bn.beta.assign(beta)
    for spec in cmnas.conv_layout():
        split.get_layer(spec.name).kernel.assign(share.get_layer(spec.name).kernel)
    x = images(4, 4)
    x[2:] += 2.0  # the "thermal" half has other statistics
    baseline = cmnas.backbone_output(split_models)([x, 1], training=True).numpy()
    shared = cmnas.backbone_output(share_models)([x, 0], training=True).numpy()
    np.testing.assert_allclose(shared, baseline, rtol=1e-4, atol=1e-4)
    per_half = cmnas.backbone_output(split_models)([x, 0], training=True).numpy()
    assert not np.allclose(per_half, baseline, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ ImageNet
def test_imagenet_weights_fill_all_three_sets_and_make_eval_config_independent(
        imagenet_file, mixed_models, split_models, share_models):
    reports = [cmnas_imagenet.load_imagenet_weights(models, imagenet_file)
               for models in (mixed_models, split_models, share_models)]
    state = torchvision_resnet50_state_dict()
    model = mixed_models.training_model
    layer = model.get_layer("layer2_0_downsample_bn")
    for bn in (layer.visible_bn, layer.thermal_bn, layer.sharable_bn):
        np.testing.assert_array_equal(bn.moving_variance.numpy(),
                                      state["layer2.0.downsample.1.running_var"])
        np.testing.assert_array_equal(bn.gamma.numpy(), state["layer2.0.downsample.1.weight"])
    np.testing.assert_array_equal(model.get_layer("layer3_1_conv2").kernel.numpy(),
                                  state["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
    unassigned = set(reports[0].unassigned)
    assert unassigned == {"bnneck/gamma:0", "bnneck/moving_mean:0", "bnneck/moving_variance:0",
                          "classifier/kernel:0"}
    assert set(reports[0].unused) == {"fc.weight", "fc.bias"}
    # Eval output is the same for every config and both modes right after initialisation.
    x = images(2, 5)
    reference = mixed_models.inference_model([x, 1])[0].numpy()
    assert np.abs(reference).max() > 0
    for models in (mixed_models, split_models, share_models):
        for mode in (1, 2):
            np.testing.assert_allclose(models.inference_model([x, mode])[0].numpy(), reference,
                                       rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no_such_resnet50.pth"):
        cmnas_imagenet.load_imagenet_weights(mixed_models, "/tmp/no_such_resnet50.pth")


def test_tf2cv_resnet50_weights_map_tensor_for_tensor(tmp_path, split_models):
    from tf2cv.models.resnet import resnet50

    net = resnet50(pretrained=False, data_format="channels_last")
    net.build((1, 224, 224, 3))
    rng = np.random.default_rng(6)
    for variable in net.weights:  # kernels are random already; make every BN vector distinct
        if len(variable.shape) == 1:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
    path = str(tmp_path / "resnet50-test.tf2.h5")
    net.save_weights(path)
    values = {v.name: v.numpy() for v in net.weights}

    def tf2cv(*parts):
        """The one tf2cv variable whose name contains ``parts`` in order (tf2cv repeats
        scope names, e.g. ``features/stage2/stage2/unit1/body/conv1/conv/conv/kernel:0``)."""
        pattern = re.compile(".*".join(re.escape(part) for part in parts) + "$")
        matches = [name for name in values if pattern.search(name)]
        assert len(matches) == 1, (parts, matches)
        return values[matches[0]]

    report = cmnas_imagenet.load_imagenet_weights(split_models, path)
    assert len(report.assigned) == 53 + 53 * 12
    model = split_models.training_model
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(),
                                  tf2cv("init_block/", "conv/kernel:0"))
    np.testing.assert_array_equal(model.get_layer("layer2_0_conv1").kernel.numpy(),
                                  tf2cv("stage2/", "unit1/body/conv1/", "kernel:0"))
    np.testing.assert_array_equal(
        model.get_layer("layer3_0_downsample_bn").thermal_bn.moving_variance.numpy(),
        tf2cv("stage3/", "unit1/identity_conv/bn/moving_variance:0"))
    np.testing.assert_array_equal(model.get_layer("layer4_2_bn3").sharable_bn.beta.numpy(),
                                  tf2cv("stage4/", "unit3/body/conv3/bn/beta:0"))


# ------------------------------------------------------------------------------ training step
def test_training_step_never_touches_unselected_sets(mixed_models):
    model = mixed_models.training_model
    groups = cmnas.variable_groups(mixed_models)
    frozen_before = [w.numpy() for w in groups.frozen]
    x = images(8, 7)
    labels = np.array([0, 0, 1, 1] * 2)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        outputs = model([x, 0], training=True)
        total, _ = cmnas_total_loss(outputs, labels, num_pos=2)
    gradients = tape.gradient(total, variables)
    frozen_ids = {id(w) for w in groups.frozen}
    for variable, gradient in zip(variables, gradients):
        if id(variable) in frozen_ids:
            assert gradient is None, variable.name
        else:
            assert gradient is not None, variable.name
    optimizer = TorchAdam(learning_rate=1e-3, beta_1=0.5, weight_decay_l2=5e-4)
    optimizer.apply_gradients([(g, v) for g, v in zip(gradients, variables) if g is not None])
    for variable, before in zip(groups.frozen, frozen_before):
        np.testing.assert_array_equal(variable.numpy(), before, err_msg=variable.name)
    # Mode 0 split layer: the visible/thermal statistics moved, the shared ones of a share
    # layer moved too.
    stem = model.get_layer("bn1")
    assert not np.array_equal(stem.visible_bn.moving_mean.numpy(),
                              stem.thermal_bn.moving_mean.numpy())


def test_mixed_search_network_has_one_alpha_per_layer():
    training_model, inference_model = cmnas.build_cmnas_resnet50(
        ALL_SHARE, 7, input_shape=(None, None, 3), mixed=True)
    groups = cmnas.variable_groups(training_model)
    assert len(groups.architecture) == 53 and groups.frozen == []
    assert cmnas.derived_config(training_model) == [0] * 53  # alpha = 0: tie -> split
    x = images(4, 8)
    stem = training_model.get_layer("bn1")
    assert training_model([x, 0], training=True)["logits"][0].shape == (4, 7)
    # Both paths ran in training mode: every BN set of the stem updated its statistics.
    for bn in (stem.visible_bn, stem.thermal_bn, stem.sharable_bn):
        assert np.abs(bn.moving_mean.numpy()).max() > 0
    groups.architecture[5].assign([0.0, 1.0])
    assert cmnas.derived_config(training_model)[5] == 1
    assert inference_model([x, 2])[1].shape == (4, 2048)
