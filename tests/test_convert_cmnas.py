"""CM-NAS checkpoint import: reference key names -> Keras .h5, checked against torch."""
import reid_tf  # noqa: F401  (selects tf-keras)

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from reid_tf.convert import ARCHITECTURES  # noqa: E402
from reid_tf.convert.cmnas import convert  # noqa: E402
from reid_tf.runtime.checkpoints import ConversionError, load_state_dict  # noqa: E402
from reid_tf.models import cmnas  # noqa: E402
from reid_tf.models.cmnas_config import write_config  # noqa: E402
from helpers import random_resnet50_state_dict  # noqa: E402

NUM_CLASSES = 206  # RegDB
CONFIG = [0, 1, 0] + [1, 0, 0, 1] * 12 + [1, 0]
SETS = ("visible_bn", "thermal_bn", "sharable_bn")


def reference_state_dict(seed):
    """A ``TwoStreamSwitchBNOp`` state dict (DataParallel names) with random values, written
    from the reference module structure independently of the Keras code."""
    rng = np.random.default_rng(seed)
    state = random_resnet50_state_dict(
        rng, prefix="module.backbone.", bn_sets=SETS, downsample=("conv", "bn"),
        num_batches_tracked=100)
    state["module.bnneck.weight"] = rng.normal(1.0, 0.01, 2048).astype(np.float32)
    state["module.bnneck.bias"] = np.zeros(2048, np.float32)
    state["module.bnneck.running_mean"] = rng.normal(0, 0.1, 2048).astype(np.float32)
    state["module.bnneck.running_var"] = rng.uniform(0.5, 1.5, 2048).astype(np.float32)
    state["module.bnneck.num_batches_tracked"] = np.array(100, np.int64)
    state["module.classifier.weight"] = rng.normal(0, 0.001, (NUM_CLASSES, 2048)).astype(
        np.float32)
    return state


def torch_eval_forward(sd, x, config, mode):
    """TwoStreamSwitchBNOp in eval mode, NCHW, from the raw state dict (config consumed in
    construction order: stem, then per stage the downsample BN before the blocks)."""
    t = {k[len("module."):]: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    queue = list(config)

    def bn(name, value):
        switch = queue.pop(0)
        set_name = "sharable_bn" if switch == 1 else ("visible_bn" if mode == 1 else
                                                      "thermal_bn")
        p = f"backbone.{name}.{set_name}"
        return F.batch_norm(value, t[f"{p}.running_mean"], t[f"{p}.running_var"],
                            t[f"{p}.weight"], t[f"{p}.bias"], training=False, eps=1e-5)

    def w(name):
        return t[f"backbone.{name}.weight"]

    x = F.conv2d(x, w("conv1"), stride=2, padding=3)
    x = F.relu(bn("bn1", x))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, (blocks, stride) in enumerate(zip([3, 4, 6, 3], [1, 2, 2, 1]), 1):
        # Every ResNet-50 stage has a downsample branch in its first block; its BN is built
        # (and takes its config entry) before the blocks.
        name = f"layer{stage}.0.downsample"
        downsample = bn(f"{name}.bn", F.conv2d(x, w(f"{name}.conv"), stride=stride))
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            out = F.relu(bn(f"{p}.bn1", F.conv2d(x, w(f"{p}.conv1"))))
            out = F.relu(bn(f"{p}.bn2", F.conv2d(out, w(f"{p}.conv2"), stride=s, padding=1)))
            out = bn(f"{p}.bn3", F.conv2d(out, w(f"{p}.conv3")))
            x = F.relu(out + (downsample if block == 0 else x))
    assert not queue
    global_feat = x.mean(dim=(2, 3))
    feat = F.batch_norm(global_feat, t["bnneck.running_mean"], t["bnneck.running_var"],
                        t["bnneck.weight"], t["bnneck.bias"], training=False, eps=1e-5)
    return global_feat.numpy(), feat.numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cmnas_convert")
    model_sd = reference_state_dict(0)
    ema_sd = {k: v for k, v in model_sd.items()}
    ema_sd["module.classifier.weight"] = model_sd["module.classifier.weight"] * 2.0
    checkpoint = folder / "checkpoint120.pth.tar"
    torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in model_sd.items()},
                "ema": {k: torch.from_numpy(np.asarray(v)) for k, v in ema_sd.items()},
                "epoch": 1}, str(checkpoint))
    config_file = folder / "net.cfg"
    write_config(CONFIG, config_file)
    flags = types.SimpleNamespace(cmnas_config_file_path=str(config_file), num_classes=0,
                                  image_height=256, image_width=128)
    output = folder / "cmnas.h5"
    report = convert(load_state_dict(str(checkpoint)), str(output), **vars(flags))
    return types.SimpleNamespace(model_sd=model_sd, ema_sd=ema_sd, checkpoint=str(checkpoint),
                                 report=report, output=str(output), flags=flags)


@pytest.fixture(scope="module")
def loaded(converted):
    models = cmnas.build_cmnas_models(CONFIG, NUM_CLASSES)
    models.training_model.load_weights(converted.output)
    return models


def test_every_tensor_and_every_variable_is_used(converted, loaded):
    assert ARCHITECTURES["cmnas_resnet50"] == "reid_tf.convert.cmnas"
    report = converted.report
    assert report.unassigned == [] and report.skipped == [] and report.unused == []
    assert len(report.assigned) == len(loaded.training_model.weights) == 53 + 53 * 12 + 3 + 1
    model = loaded.training_model
    assert model.input_shape[0] == (None, 256, 128, 3)
    kernel = model.get_layer("classifier").kernel.numpy()
    assert kernel.size == 421888
    np.testing.assert_array_equal(kernel, converted.model_sd["module.classifier.weight"].T)
    bn = model.get_layer("layer4_0_downsample_bn").thermal_bn  # config index 43 is 1 (share):
    np.testing.assert_array_equal(  # the unused sets are imported as well
        bn.moving_variance.numpy(),
        converted.model_sd["module.backbone.layer4.0.downsample.bn.thermal_bn.running_var"])
    np.testing.assert_array_equal(
        model.get_layer("layer2_3_conv2").kernel.numpy(),
        converted.model_sd["module.backbone.layer2.3.conv2.weight"].transpose(2, 3, 1, 0))
    # The "ema" entry is chosen with --state_dict_key ema.
    ema = load_state_dict(converted.checkpoint, state_dict_key="ema")
    np.testing.assert_array_equal(ema["classifier.weight"],
                                  converted.ema_sd["module.classifier.weight"])


@pytest.mark.parametrize("mode", [1, 2])
def test_eval_outputs_match_the_reference_network_in_torch(converted, loaded, mode):
    x = np.random.default_rng(mode).normal(size=(2, 256, 128, 3)).astype(np.float32)
    global_feat, feat = loaded.inference_model([x, mode])
    expected_global, expected_feat = torch_eval_forward(
        converted.model_sd, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), CONFIG, mode)
    scale = np.abs(expected_global).max()
    assert scale > 0
    np.testing.assert_allclose(global_feat.numpy(), expected_global, atol=1e-4 * scale,
                               rtol=1e-4)
    np.testing.assert_allclose(feat.numpy(), expected_feat,
                               atol=1e-4 * np.abs(expected_feat).max(), rtol=1e-4)


def test_stem_training_step_matches_torch_batch_norm(converted, loaded):
    """Mode 0 in training on the split stem: each half with its own batch statistics and
    PyTorch's running-statistic update (momentum 0.1, unbiased variance)."""
    model = loaded.training_model
    x = np.random.default_rng(5).normal(size=(4, 64, 32, 3)).astype(np.float32)
    x[2:] = x[2:] * 2.0 + 0.5
    padded = model.get_layer("conv1_pad")(x)
    y = model.get_layer("bn1")(model.get_layer("conv1")(padded), 0, training=True).numpy()
    sd = {k[len("module.backbone."):]: torch.from_numpy(np.array(v))
          for k, v in converted.model_sd.items() if k.startswith("module.backbone.")}
    conv = F.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), sd["conv1.weight"],
                    stride=2, padding=3)
    halves = []
    for part, set_name in ((conv[:2], "visible_bn"), (conv[2:], "thermal_bn")):
        mean = sd[f"bn1.{set_name}.running_mean"].clone()
        var = sd[f"bn1.{set_name}.running_var"].clone()
        halves.append(F.relu(F.batch_norm(part, mean, var, sd[f"bn1.{set_name}.weight"],
                                          sd[f"bn1.{set_name}.bias"], training=True,
                                          momentum=0.1, eps=1e-5)))
        layer = getattr(model.get_layer("bn1"), set_name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean.numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var.numpy(), rtol=1e-5)
    expected = torch.cat(halves).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, expected, atol=1e-4)
    np.testing.assert_array_equal(  # the sharable set of a split layer is untouched
        model.get_layer("bn1").sharable_bn.moving_mean.numpy(),
        converted.model_sd["module.backbone.bn1.sharable_bn.running_mean"])


def test_conversion_errors(converted, tmp_path):
    state_dict = load_state_dict(converted.checkpoint)
    flags = types.SimpleNamespace(**vars(converted.flags))
    flags.cmnas_config_file_path = None
    with pytest.raises(ConversionError, match="--cmnas_config_file_path"):
        convert(state_dict, str(tmp_path / "x.h5"), **vars(flags))
    flags.cmnas_config_file_path = str(tmp_path / "absent.cfg")
    with pytest.raises(ConversionError, match="absent.cfg"):
        convert(state_dict, str(tmp_path / "x.h5"), **vars(flags))
    flags = types.SimpleNamespace(**vars(converted.flags))
    broken = dict(state_dict)
    broken["bnneck.bias"] = np.full(2048, 0.5, np.float32)
    with pytest.raises(ConversionError, match="bnneck.bias must be all zeros"):
        convert(broken, str(tmp_path / "x.h5"), **vars(flags))
    no_classifier = {k: v for k, v in state_dict.items() if k != "classifier.weight"}
    with pytest.raises(ConversionError, match="--num_classes"):
        convert(no_classifier, str(tmp_path / "x.h5"), **vars(flags))
