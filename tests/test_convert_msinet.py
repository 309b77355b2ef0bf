"""PyTorch → Keras conversion of MSINet checkpoints (reid_tf.convert.msinet).

The checkpoint is made here from numpy arrays under the reference state-dict names
(``vimar-gu/MSINet``: ``conv1.conv.weight``, ``cells.0._op2.fc1.weight``, ``cells.2.0.bn.*``,
``head.*``, ``align_module.pos_pam.query_conv.*`` ...), saved with ``torch.save``. A small
PyTorch re-implementation of the network written from msinet.md (channels-first, with the
reference module names) recomputes the features from the same arrays.
"""
import reid_tf  # noqa: F401  (selects tf-keras)

import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tf_keras as keras

from reid_tf.runtime.checkpoints import ConversionError, load_state_dict
from reid_tf.convert.msinet import build_converted_model, convert
from reid_tf.models.genotypes import MSMT_GENOTYPE
from reid_tf.models.msinet import build_msinet

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENOTYPE_FILE = os.path.join(REPO_ROOT, "configs", "genotypes", "msmt.json")
HEIGHT, WIDTH, CLASSES = 64, 32, 7
CLASSIFIER_KEYS = ["classifier.weight", "classifier.bias", "f_classifier.weight",
                   "f_classifier.bias"]


# ------------------------------------------------------------------------------------------
# PyTorch re-implementation (channels-first), module names as in the reference
# ------------------------------------------------------------------------------------------
class TorchConvBN(nn.Module):
    """ConvLayer / Conv1x1 / Conv1x1Linear: ``conv`` → ``bn`` (→ ReLU)."""

    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.use_relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class TorchLightConv(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class TorchGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 16, 1, bias=True)
        self.fc2 = nn.Conv2d(channels // 16, channels, 1, bias=True)

    def forward(self, pair):
        return [x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
                for x in pair]


class TorchCrossAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, pair):
        a, b = pair
        batch, channels, height, width = a.shape
        flat_a, flat_b = a.reshape(batch, channels, -1), b.reshape(batch, channels, -1)

        def attend(query, key, value, original):
            energy = torch.bmm(query, key.transpose(1, 2))
            energy = energy.max(dim=-1, keepdim=True)[0] - energy
            out = torch.bmm(torch.softmax(energy, dim=-1), value).reshape(original.shape)
            return self.gamma * out + original

        return attend(flat_a, flat_b, flat_a, a), attend(flat_b, flat_a, flat_b, b)


class TorchIdentity(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, pair):
        return pair


class TorchExchange(TorchIdentity):
    def forward(self, pair):
        return pair[1], pair[0]


TORCH_OPS = {"none": TorchIdentity, "exc": TorchExchange, "ag": TorchGate,
             "cross_att": TorchCrossAttention}


class TorchCell(nn.Module):
    def __init__(self, cin, cout, op2, op3):
        super().__init__()
        middle = cout // 4
        self.conv1a = TorchConvBN(cin, middle)
        self.conv1b = TorchConvBN(cin, middle)
        self.conv2a = TorchLightConv(middle)
        self.conv2b = nn.Sequential(*[TorchLightConv(middle) for _ in range(3)])
        self._op2 = TORCH_OPS[op2](middle)
        self.conv3a = TorchLightConv(middle)
        self.conv3b = nn.Sequential(*[TorchLightConv(middle) for _ in range(3)])
        self._op3 = TORCH_OPS[op3](middle)
        self.conv4a = TorchConvBN(middle, cout, relu=False)
        self.conv4b = TorchConvBN(middle, cout, relu=False)
        self.downsample = TorchConvBN(cin, cout, relu=False) if cin != cout else None

    def forward(self, x):
        a, b = self._op2((self.conv2a(self.conv1a(x)), self.conv2b(self.conv1b(x))))
        a, b = self._op3((self.conv3a(a), self.conv3b(b)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv4a(a) + self.conv4b(b) + shortcut)


class TorchMSINet(nn.Module):
    def __init__(self, genotype, num_classes, sam):
        super().__init__()
        channels = [64, 256, 384, 512]
        self.conv1 = TorchConvBN(3, 64, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.cells = nn.ModuleList()
        for stage in range(3):
            cin, cout = channels[stage], channels[stage + 1]
            ops = genotype[4 * stage:4 * stage + 4]
            self.cells.append(TorchCell(cin, cout, ops[0], ops[1]))
            self.cells.append(TorchCell(cout, cout, ops[2], ops[3]))
            if stage != 2:
                self.cells.append(nn.Sequential(TorchConvBN(cout, cout), nn.AvgPool2d(2, 2)))
        self.head = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, 512, bias=False)
        self.classifier = nn.Linear(512, num_classes)
        self.f_conv = nn.Conv2d(384, 128, 1)
        self.f_head = nn.BatchNorm1d(256)
        self.f_fc = nn.Linear(256, 256, bias=False)
        self.f_classifier = nn.Linear(256, num_classes)
        if sam:
            self.align_module = nn.Module()
            self.align_module.pos_pam = nn.Module()
            self.align_module.pos_pam.query_conv = nn.Conv2d(512, 64, 1)
            self.align_module.pos_pam.key_conv = nn.Conv2d(512, 64, 1)

    def forward(self, images):
        x = self.maxpool(self.conv1(images))
        for index, cell in enumerate(self.cells):
            x = cell(x)
            if index == 5:
                f_x = x
        v = x.mean(dim=(2, 3))
        f_map = self.f_conv(f_x)
        half = f_map.shape[2] // 2
        f_v = torch.cat([f_map[:, :, :half].mean(dim=(2, 3)),
                         f_map[:, :, half:].mean(dim=(2, 3))], dim=1)
        n_v, n_f_v = self.head(self.fc(v)), self.f_head(self.f_fc(f_v))
        outputs = {"features": torch.cat([v, f_v], 1), "n_v": n_v, "n_f_v": n_f_v,
                   "y": self.classifier(n_v), "f_y": self.f_classifier(n_f_v)}
        if hasattr(self, "align_module"):
            pam = self.align_module.pos_pam
            flat = x.flatten(2)  # (B, C, M)
            kernel = torch.einsum("pci,gcj->gpij", flat, flat).max(dim=3)[0]
            energy = torch.bmm(pam.query_conv(x).flatten(2).transpose(1, 2),
                               pam.key_conv(x).flatten(2))
            outputs["sam"] = torch.cat([kernel, energy.max(dim=2)[0].unsqueeze(0)], dim=0)
        return outputs


def _random_state_dict(net, seed):
    """Numpy arrays under the network's state-dict names, scaled so activations stay O(1)
    (features ~1, cross-attention softmax far from one-hot)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    modules = dict(net.named_modules())
    for key, tensor in net.state_dict().items():
        module_name, parameter = key.rsplit(".", 1)
        module = modules[module_name]
        shape = tuple(tensor.shape)
        if parameter == "num_batches_tracked":
            value = np.array(int(rng.integers(1, 1000)), np.int64)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            value = {"weight": rng.uniform(0.5, 1.5, shape), "bias": rng.normal(0, 0.1, shape),
                     "running_mean": rng.normal(0, 0.1, shape),
                     "running_var": rng.uniform(0.5, 1.5, shape)}[parameter]
        elif parameter == "gamma":
            value = np.array([0.4])
        elif parameter == "bias":
            value = rng.normal(0, 0.1, shape)
        else:  # conv (O, I, kh, kw) or linear (out, in): variance 1 / fan_in
            value = rng.normal(0, np.sqrt(1.0 / int(np.prod(shape[1:]))), shape)
        arrays[key] = np.asarray(value, np.int64 if parameter == "num_batches_tracked"
                                 else np.float32)
    return arrays


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(torch net in eval mode, {key: array}, checkpoint path, images NHWC)."""
    torch.manual_seed(0)
    net = TorchMSINet(list(MSMT_GENOTYPE), CLASSES, sam=True)
    arrays = _random_state_dict(net, seed=0)
    net.load_state_dict({key: torch.from_numpy(value) for key, value in arrays.items()})
    net.eval()
    path = str(tmp_path_factory.mktemp("checkpoint") / "msinet_test.pth.tar")
    torch.save({"state_dict": {key: torch.from_numpy(value) for key, value in arrays.items()},
                "epoch": 3}, path)
    images = np.random.default_rng(1).normal(size=(3, HEIGHT, WIDTH, 3)).astype(np.float32)
    return net, arrays, path, images


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """The checkpoint converted through ``convert`` (SAM, same classes) and its report."""
    _, _, path, _ = reference
    output = str(tmp_path_factory.mktemp("converted") / "msinet.h5")
    flags = types.SimpleNamespace(genotype_file_path=GENOTYPE_FILE, num_classes=0,
                                  image_height=HEIGHT, image_width=WIDTH, sam=True)
    report = convert(load_state_dict(path), output, **vars(flags))
    return report, output


def _torch_outputs(net, images):
    with torch.no_grad():
        outputs = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return {key: value.numpy() for key, value in outputs.items()}


def _assert_close(got, expected, rtol=1e-3):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)


def test_reference_state_dict_names(reference):
    net, arrays, path, _ = reference
    # The re-implementation reproduces the reference parameter count (spec §11.1).
    parameters = sum(p.numel() for p in net.parameters())
    assert parameters == 2_328_035 + 65_664 + 770 * CLASSES
    for key in ["conv1.conv.weight", "conv1.bn.num_batches_tracked",
                "cells.0.conv1a.conv.weight", "cells.0.conv2b.2.conv2.weight",
                "cells.0._op2.fc1.weight", "cells.0._op3.fc2.bias", "cells.0.downsample.bn.bias",
                "cells.2.0.conv.weight", "cells.5.0.bn.running_var", "cells.3._op2.gamma",
                "cells.7._op3.gamma", "head.bias", "fc.weight", "f_conv.bias",
                "f_head.running_mean", "f_fc.weight", "f_classifier.bias",
                "align_module.pos_pam.query_conv.weight", "align_module.pos_pam.key_conv.bias"]:
        assert key in arrays, key
    assert arrays["cells.0.conv2b.2.conv2.weight"].shape == (64, 1, 3, 3)
    assert arrays["cells.0._op2.fc1.weight"].shape == (4, 64, 1, 1)
    # 80 BN layers x 5 entries, 3 gammas ...
    assert sum(key.endswith("num_batches_tracked") for key in arrays) == 80
    loaded = load_state_dict(path)
    assert list(loaded) == list(arrays)


def test_every_weight_assigned_and_features_match_pytorch(reference, converted):
    net, arrays, _, images = reference
    report, output = converted
    assert report.skipped == [] and report.unused == [] and report.unassigned == []
    # Every checkpoint tensor except the 80 BN batch counters fills one Keras variable.
    assert len(report.assigned) == len(arrays) - 80
    assert dict(report.assigned)["cells_0_conv2b_2_conv2/depthwise_kernel:0"] == \
        "cells.0.conv2b.2.conv2.weight"
    assert dict(report.assigned)["head_bn/beta:0"] == "head.bias"

    training_model, inference_model = build_msinet(GENOTYPE_FILE, CLASSES,
                                                   input_shape=(HEIGHT, WIDTH, 3), sam=True)
    training_model.load_weights(output)
    expected = _torch_outputs(net, images)
    _assert_close(inference_model(images, training=False).numpy(), expected["features"])
    outputs = training_model(images, training=False)
    _assert_close(outputs["bnneck"][0].numpy(), expected["n_v"])
    _assert_close(outputs["bnneck"][1].numpy(), expected["n_f_v"])
    _assert_close(outputs["logits"][0].numpy(), expected["y"])
    _assert_close(outputs["logits"][1].numpy(), expected["f_y"])
    _assert_close(outputs["sam_scores"].numpy(), expected["sam"])
    np.testing.assert_array_equal(training_model.get_layer("cells_3_op2").gamma.numpy(), np.float32([0.4]))


def test_convolutions_follow_pytorch_layout(reference, converted):
    _, arrays, _, images = reference
    report, output = converted
    training_model, _ = build_msinet(GENOTYPE_FILE, CLASSES, input_shape=(HEIGHT, WIDTH, 3),
                                     sam=True)
    training_model.load_weights(output)
    names = ["conv1_conv", "maxpool", "cells_0_conv2a_conv1", "cells_0_conv2a_conv2"]
    probe = keras.Model(training_model.input,
                        [training_model.get_layer(name).output for name in names]
                        + [training_model.get_layer("cells_0_conv1a_relu").output])
    stem, pooled, pointwise, depthwise, branch = (t.numpy() for t in probe(images, training=False))
    # 7x7 stride-2 pad-3 stem conv, computed in NCHW with the original (O, I, kh, kw) weight.
    expected = F.conv2d(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                        torch.from_numpy(arrays["conv1.conv.weight"]), stride=2, padding=3)
    _assert_close(stem, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-4)
    assert stem.shape == (3, 32, 16, 64) and pooled.shape == (3, 16, 8, 64)
    # 1x1 conv in numpy: out[..., o] = sum_i x[..., i] * W[o, i, 0, 0].
    weight = arrays["cells.0.conv2a.conv1.weight"][:, :, 0, 0]
    _assert_close(pointwise, np.einsum("bhwi,oi->bhwo", branch, weight), rtol=1e-4)
    # Depthwise 3x3 pad 1 in numpy with the (C, 1, 3, 3) weight.
    kernel = arrays["cells.0.conv2a.conv2.weight"][:, 0]
    padded = np.pad(pointwise, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = sum(padded[:, dy:dy + 16, dx:dx + 8, :] * kernel[:, dy, dx]
                   for dy in range(3) for dx in range(3))
    _assert_close(depthwise, expected, rtol=1e-4)


def test_other_class_count_via_command_line(reference, tmp_path):
    """The CLI (num_classes 10, no SAM): only the classifier tensors are skipped and listed."""
    _, arrays, path, _ = reference
    output = str(tmp_path / "other.h5")
    result = subprocess.run(
        [sys.executable, "-m", "reid_tf.convert", "--architecture=msinet",
         f"--source_file_path={path}", f"--output_file_path={output}",
         f"--genotype_file_path={GENOTYPE_FILE}", "--num_classes=10",
         f"--image_height={HEIGHT}", f"--image_width={WIDTH}", "--nosam"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    skipped = stdout.split("Skipped 4 checkpoint tensors")[1].split("not used")[0]
    assert sorted(line.split(":")[0].strip() for line in skipped.strip().splitlines()[1:-1]) \
        == sorted(CLASSIFIER_KEYS)
    unused = stdout.split("4 checkpoint tensors not used:")[1].split("Keras variables")[0]
    assert sorted(unused.split()[:4]) == sorted(key for key in arrays
                                                 if key.startswith("align_module."))
    unassigned = stdout.split("4 Keras variables left at their initial value:")[1].split()
    assert sorted(unassigned[:4]) == ["classifier/bias:0", "classifier/kernel:0",
                                      "f_classifier/bias:0", "f_classifier/kernel:0"]
    training_model, _ = build_msinet("msmt", 10, input_shape=(HEIGHT, WIDTH, 3))
    training_model.load_weights(output)
    np.testing.assert_array_equal(training_model.get_layer("conv1_conv").kernel.numpy(),
                                  arrays["conv1.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(training_model.get_layer("cells_0_op2").fc2_kernel.numpy(),
                                  arrays["cells.0._op2.fc2.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(training_model.get_layer("f_fc").kernel.numpy(),
                                  arrays["f_fc.weight"].T)
    assert training_model.get_layer("classifier").kernel.shape == (512, 10)


def test_conversion_errors(reference, tmp_path):
    _, arrays, _, _ = reference
    without_classifier = {key: value for key, value in arrays.items()
                          if key not in CLASSIFIER_KEYS}
    with pytest.raises(ConversionError, match="--num_classes"):
        build_converted_model(without_classifier, "msmt", num_classes=0)
    with pytest.raises(ConversionError, match="--genotype_file_path"):
        build_converted_model(arrays, str(tmp_path / "missing.json"))
    with pytest.raises(ConversionError, match="--output_file_path must end with .h5"):
        convert(arrays, str(tmp_path / "weights.ckpt"))
    with pytest.raises(TypeError, match="unknown options"):
        convert(arrays, str(tmp_path / "weights.h5"), image_size=64)
