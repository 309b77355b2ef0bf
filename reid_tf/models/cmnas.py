"""CM-NAS (Fu et al., ICCV 2021): ResNet-50 with 53 switchable BNs and the two-stream network.

Follows ``/work/shared/spec/cmnas.md`` §2–§4 and §12, channels-last. Inputs are **normalised**
NHWC float32 images (ImageNet mean/std on the 0–1 scale).

Backbone: torchvision ResNet-50 "v1.5" (the stride of a bottleneck sits on its 3×3 conv), no
avg-pool/fc, ``last_stride = 1``; explicit symmetric zero padding + ``valid`` convolutions and
max-pool for PyTorch parity. Every BN is a
:class:`reid_tf.models.switchable_bn.SwitchableBatchNormalization`; the config's k-th value is
the switch of the k-th entry of :func:`switchable_bn_layout` (spec §3.3: stem, then per stage
the downsample BN first and then bn1, bn2, bn3 of each block).

Layer names mirror the reference module paths with ``.`` → ``_``: ``conv1``/``bn1`` (stem),
``layer{s}_{b}_conv{k}``, ``layer{s}_{b}_bn{k}``, ``layer{s}_0_downsample_conv``,
``layer{s}_0_downsample_bn``; the three BN sets of a switchable BN are the sub-layers
``visible_bn``, ``thermal_bn`` and ``sharable_bn`` (variables e.g.
``layer1_0_bn1/visible_bn/gamma:0``). Head: ``avgpool`` → ``bnneck`` (BN1d, ``center=False``:
the reference's frozen zero bias) → ``classifier`` (Dense, no bias).

The mode (0 mixed batch with the visible half first, 1 visible, 2 thermal) is a second model
input: ``model([images, mode])`` with a Python int or an int32 scalar tensor.
"""
import collections

import tensorflow as tf
import tf_keras as keras

from reid_tf.models.cmnas_config import NUM_SWITCHABLE_BN, resolve_config
from reid_tf.models.layers import check_model_arguments
from reid_tf.models.switchable_bn import (
    VariableGroups,
    SwitchableBatchNormalization,
    TorchBatchNormalization,
)

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = 4
LAST_STRIDE = 1
FEATURE_DIM = 2048
BNNECK_GAMMA_STDDEV = 0.01
CLASSIFIER_STDDEV = 0.001

# Layer-name prefixes of the backbone (convs + switchable BNs): the 0.1x learning-rate group.
BACKBONE_PREFIXES = ("conv1", "bn1", "maxpool", "layer1_", "layer2_", "layer3_", "layer4_")
HEAD_LAYER_NAMES = ("bnneck", "classifier")
# Keras BN variable name -> PyTorch BN tensor name.
BN_VARIABLES = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                ("moving_variance", "running_var"))

SwitchableBNSpec = collections.namedtuple(
    "SwitchableBNSpec", ["index", "name", "torch_name", "imagenet_name", "channels", "with_relu"])
SwitchableBNSpec.__doc__ = """One switchable BN of the CM-NAS ResNet-50, in config order.

index: position in the config (0..52); name: Keras layer name (``layer1_0_downsample_bn``);
torch_name: module path in the CM-NAS backbone (``layer1.0.downsample.bn``); imagenet_name:
module path in torchvision's ResNet-50 (``layer1.0.downsample.1``); channels; with_relu: whether
a ReLU follows the normalisation inside the layer.
"""

ConvSpec = collections.namedtuple("ConvSpec", ["name", "torch_name", "imagenet_name",
                                               "in_channels", "out_channels", "kernel_size",
                                               "stride"])
ConvSpec.__doc__ = """One convolution of the backbone (Keras name, CM-NAS and torchvision paths,
channels, kernel size and stride)."""

def switchable_bn_layout():
    """The 53 switchable BN layers in config order (spec §3.3), as :class:`SwitchableBNSpec`.

    Index 0 is the stem BN (64, ReLU); indices 1, 11, 24, 43 are the downsample BNs; then per
    block bn1 (ReLU), bn2 (ReLU), bn3 (no ReLU: the block adds the shortcut first).
    """
    layout = [SwitchableBNSpec(0, "bn1", "bn1", "bn1", 64, True)]
    in_channels = 64
    for stage, (blocks, planes) in enumerate(zip(STAGE_BLOCKS, STAGE_PLANES), start=1):
        out_channels = planes * EXPANSION
        stride = 1 if stage == 1 else (LAST_STRIDE if stage == 4 else 2)
        if stride != 1 or in_channels != out_channels:
            layout.append(SwitchableBNSpec(len(layout), f"layer{stage}_0_downsample_bn",
                                           f"layer{stage}.0.downsample.bn",
                                           f"layer{stage}.0.downsample.1", out_channels, False))
        for block in range(blocks):
            for k, channels, relu in ((1, planes, True), (2, planes, True),
                                      (3, out_channels, False)):
                layout.append(SwitchableBNSpec(len(layout), f"layer{stage}_{block}_bn{k}",
                                               f"layer{stage}.{block}.bn{k}",
                                               f"layer{stage}.{block}.bn{k}", channels, relu))
        in_channels = out_channels
    assert len(layout) == NUM_SWITCHABLE_BN
    return layout


def conv_layout():
    """The 53 convolutions of the backbone as :class:`ConvSpec` (stem, then per stage the
    downsample conv and the blocks' conv1, conv2, conv3)."""
    layout = [ConvSpec("conv1", "conv1", "conv1", 3, 64, 7, 2)]
    in_channels = 64
    for stage, (blocks, planes) in enumerate(zip(STAGE_BLOCKS, STAGE_PLANES), start=1):
        out_channels = planes * EXPANSION
        stride = 1 if stage == 1 else (LAST_STRIDE if stage == 4 else 2)
        if stride != 1 or in_channels != out_channels:
            layout.append(ConvSpec(f"layer{stage}_0_downsample_conv",
                                   f"layer{stage}.0.downsample.conv",
                                   f"layer{stage}.0.downsample.0", in_channels, out_channels, 1,
                                   stride))
        for block in range(blocks):
            block_in = in_channels if block == 0 else out_channels
            block_stride = stride if block == 0 else 1
            for k, (cin, cout, size, step) in enumerate(
                    ((block_in, planes, 1, 1), (planes, planes, 3, block_stride),
                     (planes, out_channels, 1, 1)), start=1):
                layout.append(ConvSpec(f"layer{stage}_{block}_conv{k}",
                                       f"layer{stage}.{block}.conv{k}",
                                       f"layer{stage}.{block}.conv{k}", cin, cout, size, step))
        in_channels = out_channels
    return layout


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------
def _conv(filters, kernel_size, strides, name):
    # torchvision's ResNet init (kaiming normal, fan_out, ReLU gain); replaced by ImageNet
    # weights in practice.
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="valid", use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out",
                                                              "untruncated_normal"),
        name=name)


class _Layers:
    """The layer objects of one CM-NAS network, created once and applied to several graphs."""

    def __init__(self, config, num_classes, mixed, dropout_rate):
        specs = switchable_bn_layout()
        self.config = list(config)
        self.bn = {spec.name: SwitchableBatchNormalization(
            self.config[spec.index], with_relu=spec.with_relu, mixed=mixed, name=spec.name)
            for spec in specs}
        self.conv = {spec.name: _conv(spec.out_channels, spec.kernel_size, spec.stride, spec.name)
                     for spec in conv_layout()}
        self.other = {
            "conv1_pad": keras.layers.ZeroPadding2D(3, name="conv1_pad"),
            "maxpool_pad": keras.layers.ZeroPadding2D(1, name="maxpool_pad"),
            "maxpool": keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool"),
        }
        for stage, blocks in enumerate(STAGE_BLOCKS, start=1):
            for block in range(blocks):
                prefix = f"layer{stage}_{block}"
                self.other[f"{prefix}_conv2_pad"] = keras.layers.ZeroPadding2D(
                    1, name=f"{prefix}_conv2_pad")
                self.other[f"{prefix}_add"] = keras.layers.Add(name=f"{prefix}_add")
                self.other[f"{prefix}_relu"] = keras.layers.ReLU(name=f"{prefix}_relu")
        self.avgpool = keras.layers.GlobalAveragePooling2D(name="avgpool")
        self.bnneck = TorchBatchNormalization(
            center=False, scale=True,
            gamma_initializer=keras.initializers.RandomNormal(1.0, BNNECK_GAMMA_STDDEV),
            name="bnneck")
        self.dropout = (keras.layers.Dropout(dropout_rate, name="dropout")
                        if dropout_rate > 0 else None)
        self.classifier = keras.layers.Dense(
            num_classes, use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(0.0, CLASSIFIER_STDDEV),
            name="classifier")

    @staticmethod
    def _kwargs(training):
        return {} if training is None else {"training": training}

    def backbone(self, images, mode, training=None):
        """Backbone feature map (n, H/16, W/16, 2048) of ``images`` under ``mode``."""
        kwargs = self._kwargs(training)
        x = self.other["conv1_pad"](images)
        x = self.conv["conv1"](x)
        x = self.bn["bn1"](x, mode, **kwargs)
        x = self.other["maxpool_pad"](x)
        x = self.other["maxpool"](x)
        for stage, blocks in enumerate(STAGE_BLOCKS, start=1):
            for block in range(blocks):
                prefix = f"layer{stage}_{block}"
                shortcut = x
                if f"{prefix}_downsample_conv" in self.conv:
                    shortcut = self.conv[f"{prefix}_downsample_conv"](x)
                    shortcut = self.bn[f"{prefix}_downsample_bn"](shortcut, mode, **kwargs)
                y = self.conv[f"{prefix}_conv1"](x)
                y = self.bn[f"{prefix}_bn1"](y, mode, **kwargs)
                y = self.other[f"{prefix}_conv2_pad"](y)
                y = self.conv[f"{prefix}_conv2"](y)
                y = self.bn[f"{prefix}_bn2"](y, mode, **kwargs)
                y = self.conv[f"{prefix}_conv3"](y)
                y = self.bn[f"{prefix}_bn3"](y, mode, **kwargs)
                x = self.other[f"{prefix}_add"]([y, shortcut])
                x = self.other[f"{prefix}_relu"](x)
        return x

    def head(self, global_feat, training=None):
        """(feat, logits) from the pooled feature."""
        kwargs = self._kwargs(training)
        feat = self.bnneck(global_feat, **kwargs)
        classifier_input = feat
        if self.dropout is not None:
            classifier_input = self.dropout(feat, **kwargs)
        return feat, self.classifier(classifier_input)


def _check_arguments(num_classes, input_shape):
    return check_model_arguments(num_classes, input_shape, 32, "ResNet-50 downsamples by 16")


def _inputs(input_shape):
    images = keras.Input(shape=input_shape, name="images")
    mode = keras.Input(batch_shape=(), dtype=tf.int32, name="mode")
    return images, mode


def _build_all(config, num_classes, input_shape, mixed, dropout_rate, name):
    config = resolve_config(config)
    num_classes, input_shape = _check_arguments(num_classes, input_shape)
    layers = _Layers(config, num_classes, mixed, float(dropout_rate))

    # Training graph: follows the `training` argument of the call.
    images, mode = _inputs(input_shape)
    feature_map = layers.backbone(images, mode)
    global_feat = layers.avgpool(feature_map)
    feat, logits = layers.head(global_feat)
    training_model = keras.Model(
        [images, mode], {"embeddings": [global_feat], "logits": [logits], "bnneck": [feat]},
        name=f"{name}_training")
    embedding_model = keras.Model([images, mode], {"embeddings": [global_feat]},
                                  name=f"{name}_embedding")
    head_input = keras.Input(shape=(FEATURE_DIM,), name="global_feat")
    head_feat, head_logits = layers.head(head_input)
    head_model = keras.Model([head_input], {"logits": [head_logits], "bnneck": [head_feat]},
                             name=f"{name}_head")

    # Inference graph: always eval mode (running statistics), outputs (global_feat, feat).
    images_eval, mode_eval = _inputs(input_shape)
    global_eval = layers.avgpool(layers.backbone(images_eval, mode_eval, training=False))
    feat_eval, _ = layers.head(global_eval, training=False)
    inference_model = keras.Model([images_eval, mode_eval], [global_eval, feat_eval],
                                  name=f"{name}_inference")
    return training_model, inference_model, embedding_model, head_model


def build_cmnas_resnet50(config, num_classes, input_shape=(256, 128, 3), mixed=False,
                         dropout_rate=0.0, name="cmnas_resnet50"):
    """Build CM-NAS's ``TwoStreamSwitchBNOp`` (spec §4) and return ``(training, inference)``.

    Args:
      config: 53 switch values (0 split, 1 share) in :func:`switchable_bn_layout` order, or the
        path of a ``.cfg`` file (first line read).
      num_classes: classifier outputs (395 SYSU-MM01, 206 RegDB).
      input_shape: (height, width, 3) of the normalised NHWC images.
      mixed: build the BN-split search supernet (every switchable BN mixed, see
        :class:`SwitchableBatchNormalization`); the config then only gives the fallback switch.
      dropout_rate: dropout on ``feat`` before the classifier in training (reference 0).

    Returns:
      training_model: ``[images, mode]`` -> ``{"embeddings": [global_feat], "logits": [logits],
        "bnneck": [feat]}``; call with ``training=True`` and mode 0 on a batch whose first half
        is visible and second half thermal (identity-aligned).
      inference_model: ``[images, mode]`` -> ``[global_feat, feat]`` in eval mode (running
        statistics); mode 1 for visible images, 2 for infrared ones.
    """
    training_model, inference_model, _, _ = _build_all(config, num_classes, input_shape, mixed,
                                                       dropout_rate, name)
    return training_model, inference_model


def build_cmnas_models(config, num_classes, input_shape=(256, 128, 3), mixed=False,
                       dropout_rate=0.0, name="cmnas_resnet50"):
    """The CM-NAS network as :class:`reid_tf.models.base.ReIDModels`.

    ``embedding_model``: ``[images, mode]`` -> ``{"embeddings": [global_feat]}``;
    ``head_model``: ``[global_feat]`` -> ``{"logits": [logits], "bnneck": [feat]}``;
    ``backbone_prefixes`` = :data:`BACKBONE_PREFIXES` (convs and switchable BNs, the 0.1 x lr
    group); no explicit regularisation (CM-NAS decays through the optimiser). All four models
    share their layers. See :func:`build_cmnas_resnet50` for the arguments and
    :func:`variable_groups` for the optimiser groups and the never-changing variables.
    """
    from reid_tf.models.base import ReIDModels

    training_model, inference_model, embedding_model, head_model = _build_all(
        config, num_classes, input_shape, mixed, dropout_rate, name)
    return ReIDModels(training_model=training_model, inference_model=inference_model,
                      embedding_model=embedding_model, head_model=head_model,
                      backbone_prefixes=BACKBONE_PREFIXES, regularization=[])


# --------------------------------------------------------------------------------------------
# Model inspection
# --------------------------------------------------------------------------------------------
def _as_model(model):
    return getattr(model, "training_model", model)


def switchable_bn_layers(model):
    """The model's 53 :class:`SwitchableBatchNormalization` layers in config order."""
    model = _as_model(model)
    return [model.get_layer(spec.name) for spec in switchable_bn_layout()]


def switchable_config(model):
    """The switch values the model was built with, in config order."""
    return [layer.switch for layer in switchable_bn_layers(model)]


def derived_config(model):
    """Discretised architecture of a mixed (search) model: argmax of each layer's pi,
    split on an exact tie (spec §11.2)."""
    return [layer.derived_switch() for layer in switchable_bn_layers(model)]


def variable_groups(model):
    """Split the model's variables into :class:`VariableGroups` (spec §8.1).

    ``model`` is a CM-NAS Keras model (any of the four) or a ``ReIDModels``. The backbone group
    holds the trainable conv kernels and the gamma/beta of the BN sets the config selects; the
    frozen group holds every variable of the never-selected BN sets.
    """
    model = _as_model(model)
    backbone, architecture, frozen = [], [], []
    for spec in conv_layout():
        backbone.extend(model.get_layer(spec.name).trainable_weights)
    for layer in switchable_bn_layers(model):
        for set_name in layer.selected_bn_sets:
            backbone.extend(layer.bn_sets[set_name].trainable_weights)
        for set_name in layer.unselected_bn_sets:
            frozen.extend(layer.bn_sets[set_name].weights)
        if layer.alpha is not None:
            architecture.append(layer.alpha)
    head = []
    for layer_name in HEAD_LAYER_NAMES:
        head.extend(model.get_layer(layer_name).trainable_weights)
    return VariableGroups(backbone, head, architecture, frozen)


def backbone_output(model):
    """A Keras model ``[images, mode]`` -> the backbone feature map (n, H/16, W/16, 2048),
    sharing the layers (and the training flag of the call) of ``model``'s training graph."""
    model = _as_model(model)
    return keras.Model(model.inputs, model.get_layer("layer4_2_relu").output,
                       name=f"{model.name}_backbone")
