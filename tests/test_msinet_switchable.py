"""MSINet with switchable BNs (the CM-NAS two-stream form over MSINet's 80 BNs)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from reid_tf.cli.settings import model_settings
from reid_tf.flags import define_flags
from reid_tf.models import msinet, msinet_switchable
from reid_tf.models.cmnas_config import ConfigError
from reid_tf.models.factory import build_models
from reid_tf.models.msinet_ops import default_batch_norm
from reid_tf.models.switchable_bn import SwitchableBatchNormalization, TorchBatchNormalization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "cmnas")
SHAPE = (64, 32, 3)
CLASSES = 5
NAMES = msinet.batch_norm_names()
# Stem and the first cell split, cells 3.. shared, the head BNs split.
MIXED = [0] * 14 + [1] * 64 + [0, 0]


def images(n, seed):
    return np.random.default_rng(seed).normal(size=(n,) + SHAPE).astype(np.float32)


def outputs_of(model, inputs):
    result = model(inputs, training=True)
    return {key: [t.numpy() for t in result[key]] for key in ("embeddings", "logits", "bnneck")}


@pytest.fixture(scope="module")
def split_models():
    return msinet_switchable.build_switchable_msinet_models(
        "msmt", CLASSES, input_shape=SHAPE,
        bn_config=os.path.join(CONFIGS, "msinet_all_split.cfg"))


# ------------------------------------------------------------------------------ configs
def test_config_files_order_and_length_errors(tmp_path):
    assert len(NAMES) == msinet.num_batch_norms() == 80
    assert (NAMES[0], NAMES[13], NAMES[26], NAMES[78], NAMES[79]) == (
        "conv1_bn", "cells_0_downsample_bn", "cells_2_0_bn", "head_bn", "f_head_bn")
    resolve = msinet_switchable.resolve_bn_config
    assert resolve(os.path.join(CONFIGS, "msinet_all_share.cfg")) == [1] * 80
    assert resolve(os.path.join(CONFIGS, "msinet_all_split.cfg")) == [0] * 80
    # A CM-NAS ResNet-50 config (53 values) names the file and MSINet's count.
    cmnas_file = os.path.join(CONFIGS, "all_share.cfg")
    with pytest.raises(ConfigError, match=r"all_share\.cfg.*exactly 80 values.*got 53"):
        msinet_switchable.resolve_bn_config(cmnas_file)
    short = tmp_path / "short.cfg"
    short.write_text(" ".join(["1"] * 79) + "\n")
    with pytest.raises(ConfigError, match=r"short\.cfg.*exactly 80 values.*got 79"):
        msinet_switchable.resolve_bn_config(str(short))
    bad = tmp_path / "bad.cfg"
    bad.write_text(" ".join(["1"] * 40 + ["2"] + ["0"] * 39) + "\n")
    with pytest.raises(ConfigError, match=r"bad\.cfg.*position 40"):
        msinet_switchable.resolve_bn_config(str(bad))
    with pytest.raises(ConfigError, match=r"bn_config.*exactly 80 values.*got 53"):
        msinet_switchable.resolve_bn_config([1] * 53)
    with pytest.raises(FileNotFoundError, match="missing.cfg"):
        msinet_switchable.resolve_bn_config(str(tmp_path / "missing.cfg"))
    # The length is checked before any layer is built.
    with pytest.raises(ConfigError, match="exactly 80"):
        msinet_switchable.build_switchable_msinet_models("msmt", CLASSES, input_shape=SHAPE,
                                                         bn_config=cmnas_file)
    with pytest.raises(ValueError, match="mixed=True .* needs bn_config"):
        msinet_switchable.build_switchable_msinet_models("msmt", CLASSES, input_shape=SHAPE,
                                                         mixed=True)


# ------------------------------------------------------------------------------ all share
def torch_batch_norm(name, frozen_beta=False):
    """A plain (single) BN per layer with the switchable sets' semantics."""
    return TorchBatchNormalization(center=not frozen_beta, name=name)


def copy_into(plain_model, share_model, seed):
    """Random BN parameters in the plain model, copied into all three sets of the switchable
    model (the head BNs have no shift); every other weight copied as is."""
    rng = np.random.default_rng(seed)
    for layer in plain_model.layers:
        if not layer.weights:
            continue
        target = share_model.get_layer(layer.name)
        if layer.name not in NAMES:
            target.set_weights(layer.get_weights())
            continue
        values = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.weights}
        channels = values["gamma"].shape[0]
        values["gamma"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        if layer.name not in ("head_bn", "f_head_bn"):
            values["beta"] = rng.normal(0, 0.1, channels).astype(np.float32)
        layer.set_weights([values[v.name.split("/")[-1].split(":")[0]] for v in layer.weights])
        for bn in target.bn_sets.values():
            bn.set_weights([values[v.name.split("/")[-1].split(":")[0]] for v in bn.weights])


@pytest.mark.parametrize("reference_bn, tolerance", [
    # The same network with one PyTorch-semantics BN per layer: the same computation.
    (torch_batch_norm, 1e-5),
    # The default MSINet (Keras BN, fused kernels): equal up to float rounding, which ~80
    # batch-statistics normalisations of an 8-image batch amplify to ~1e-3.
    (default_batch_norm, 5e-3)])
def test_all_share_mode0_equals_plain_msinet_on_the_whole_batch(reference_bn, tolerance):
    plain = msinet.build_msinet_models("msmt", CLASSES, input_shape=SHAPE,
                                       bn_factory=reference_bn)
    share = msinet_switchable.build_switchable_msinet_models("msmt", CLASSES, input_shape=SHAPE,
                                                             bn_config=[1] * 80)
    plain_model, share_model = plain.training_model, share.training_model
    assert len(share_model.inputs) == 2 and len(plain_model.inputs) == 1
    copy_into(plain_model, share_model, seed=3)
    x = images(8, 0)
    expected = outputs_of(plain_model, x)
    got = outputs_of(share_model, [x, 0])
    for key in expected:
        for a, b in zip(expected[key], got[key]):
            np.testing.assert_allclose(b, a, rtol=tolerance, atol=tolerance, err_msg=key)
    # One BN over all 8 samples: the plain BN's running mean; split sets untouched.
    for name in ("conv1_bn", "cells_4_conv2b_1_bn", "head_bn"):
        plain_bn, layer = plain_model.get_layer(name), share_model.get_layer(name)
        np.testing.assert_allclose(layer.sharable_bn.moving_mean.numpy(),
                                   plain_bn.moving_mean.numpy(), rtol=1e-3, atol=1e-5)
        assert np.all(layer.visible_bn.moving_mean.numpy() == 0)
        assert np.all(layer.thermal_bn.moving_mean.numpy() == 0)
    # The head BNs' shift is exactly 0 in every set.
    head = share_model.get_layer("head_bn")
    assert all(bn.beta is None for bn in head.bn_sets.values())


# ------------------------------------------------------------------------------ all split
def test_all_split_halves_are_independent(split_models):
    model = split_models.training_model
    visible, thermal = images(4, 1), images(4, 2)
    other_thermal = images(4, 5)
    first = outputs_of(model, [np.concatenate([visible, thermal]), 0])
    second = outputs_of(model, [np.concatenate([visible, other_thermal]), 0])
    alone = outputs_of(model, [visible, 1])
    for key in first:  # embeddings, logits and the split BNNeck features
        for a, b, c in zip(first[key], second[key], alone[key]):
            np.testing.assert_allclose(b[:4], a[:4], rtol=1e-5, atol=1e-6, err_msg=key)
            # The visible half of mode 0 is mode 1 on the visible images alone. A batch of 4
            # instead of 8 lets oneDNN pick other convolution kernels (CI saw 1.6e-4 on values
            # near 1); mixed BN statistics would move the features by far more than 1e-3.
            np.testing.assert_allclose(c, a[:4], rtol=1e-3, atol=1e-3, err_msg=key)
            assert np.abs(b[4:] - a[4:]).max() > 1e-3
    for layer in msinet_switchable.switchable_bn_layers(split_models):
        assert np.all(layer.sharable_bn.moving_mean.numpy() == 0), layer.name
        assert np.abs(layer.thermal_bn.moving_mean.numpy()).max() > 0, layer.name


def test_eval_mode_uses_the_modality_statistics(split_models):
    x = images(3, 4)
    inference = split_models.inference_model
    assert inference.output_shape == (None, 768)
    # Make the thermal set of one BN different: mode 2 changes, mode 1 does not.
    layer = split_models.training_model.get_layer("cells_6_conv1a_bn")
    before_visible = inference([x, 1], training=False).numpy()
    before_thermal = inference([x, 2], training=False).numpy()
    layer.thermal_bn.moving_mean.assign(layer.thermal_bn.moving_mean + 0.5)
    np.testing.assert_array_equal(inference([x, 1], training=False).numpy(), before_visible)
    assert np.abs(inference([x, 2], training=False).numpy() - before_thermal).max() > 1e-4
    # The stand-alone head model reads its own mode input.
    head = split_models.head_model
    assert [t.name.split(":")[0] for t in head.inputs][-1] == "head_mode"
    v, f_v = np.ones((2, 512), np.float32), np.ones((2, 256), np.float32)
    assert head([v, f_v, 2], training=False)["logits"][0].shape == (2, CLASSES)


# ------------------------------------------------------------------------------ groups, search
def test_variable_groups_and_gradients_of_a_mixed_config():
    models = msinet_switchable.build_switchable_msinet_models("msmt", CLASSES, input_shape=SHAPE,
                                                              bn_config=MIXED)
    model = models.training_model
    assert msinet_switchable.switchable_config(models) == MIXED
    groups = msinet_switchable.variable_groups(models)
    assert groups.architecture == []
    ids = lambda variables: {id(v) for v in variables}  # noqa: E731
    trainable = ids(model.trainable_variables)
    frozen_trainable = ids(groups.frozen) & trainable
    assert ids(groups.backbone) | ids(groups.head) | frozen_trainable == trainable
    assert not ids(groups.backbone) & ids(groups.head)
    # Split layers leave their sharable set (gamma, beta) unused, share layers their two
    # modality sets; the two split heads leave a sharable set with gamma only.
    assert len(frozen_trainable) == 14 * 1 * 2 + 64 * 2 * 2 + 2 * 1 * 1
    assert {v.name.split("/")[0] for v in groups.head} >= {"fc", "head_bn", "f_fc",
                                                           "f_head_bn", "classifier"}
    with tf.GradientTape() as tape:
        outputs = model([images(4, 6), 0], training=True)
        loss = tf.add_n([tf.reduce_sum(t ** 2) for t in outputs["logits"]]
                        + [tf.reduce_sum(t) for t in outputs["embeddings"]])
    variables = model.trainable_variables
    gradients = dict(zip([id(v) for v in variables], tape.gradient(loss, variables)))
    for variable_id in frozen_trainable:
        assert gradients[variable_id] is None
    assert all(gradients[id(v)] is not None for v in groups.backbone + groups.head)


def test_mixed_supernet_has_one_alpha_per_bn():
    models = msinet_switchable.build_switchable_msinet_models("msmt", CLASSES, input_shape=SHAPE,
                                                              bn_config=[1] * 80, mixed=True)
    groups = msinet_switchable.variable_groups(models)
    assert len(groups.architecture) == 80 and groups.frozen == []
    assert msinet_switchable.derived_config(models) == [0] * 80  # alpha = 0: tie -> split
    stem = models.training_model.get_layer("conv1_bn")
    outputs = models.training_model([images(4, 7), 0], training=True)
    assert outputs["logits"][0].shape == (4, CLASSES)
    for bn in stem.bn_sets.values():  # both paths ran in training mode
        assert np.abs(bn.moving_mean.numpy()).max() > 0
    groups.architecture[78].assign([0.0, 1.0])
    derived = msinet_switchable.derived_config(models)
    assert derived[78] == 1 and sum(derived) == 1


# ------------------------------------------------------------------------------ factory
def parse(arguments):
    if "backbone_model_name" not in flags.FLAGS:
        define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["solution.py", "--backbone_model_name=msinet", "--image_height=64",
                 "--image_width=32"] + arguments)
    return model_settings(flags.FLAGS)


def test_factory_builds_the_switchable_form_only_when_the_config_is_given():
    config = f"--cmnas_config_file_path={os.path.join(CONFIGS, 'msinet_all_split.cfg')}"
    models, feature_index, _ = build_models(parse(["--dataset_name=Synthetic_SYSU", config]),
                                            CLASSES, cross_modality=True)
    assert len(models.training_model.inputs) == 2 and feature_index is None
    assert isinstance(models.training_model.get_layer("f_head_bn"),
                      SwitchableBatchNormalization)
    # The CM-NAS default config is not an MSINet config: left alone, the network is plain.
    plain, _, _ = build_models(parse(["--dataset_name=Synthetic_SYSU"]), CLASSES,
                               cross_modality=True)
    assert len(plain.training_model.inputs) == 1
    with pytest.raises(ValueError, match="needs a visible-infrared dataset"):
        build_models(parse(["--dataset_name=Synthetic", config]), CLASSES)
    with pytest.raises(ValueError, match="use_horizontal_flipping_inside_model"):
        build_models(parse(["--dataset_name=RegDB", config,
                            "--use_horizontal_flipping_inside_model"]), CLASSES,
                     cross_modality=True)
    cmnas_config = f"--cmnas_config_file_path={os.path.join(CONFIGS, 'all_split.cfg')}"
    with pytest.raises(ConfigError, match=r"all_split\.cfg.*exactly 80 values"):
        build_models(parse(["--dataset_name=RegDB", cmnas_config]), CLASSES,
                     cross_modality=True)
