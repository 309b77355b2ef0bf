"""MSINet (Gu et al., CVPR 2023) in Keras: cell, network, heads, SAM and the model builders.

Follows ``/work/shared/spec/msinet.md`` §3, §4, §7.1 and §11, channels-last. Inputs are
**normalised** NHWC float32 images (ImageNet mean/std on the 0–1 scale; the data pipeline
normalises).

Layer names mirror the reference PyTorch module paths (``.`` → ``_``, ``._op`` → ``_op``), e.g.
``cells.0.conv2b.1.conv1`` → ``cells_0_conv2b_1_conv1``, ``cells.2.0.bn`` → ``cells_2_0_bn``;
the two BN1d heads are ``head_bn`` and ``f_head_bn``, the SAM convs ``sam_query_conv`` and
``sam_key_conv``. :mod:`reid_tf.convert.msinet` relies on these names.

Batch normalisation order
-------------------------
Every BN is created through ``bn_factory(name, frozen_beta=False)`` (default
:func:`reid_tf.models.msinet_ops.default_batch_norm`), called exactly once per BN layer, in this
order (:func:`batch_norm_names` returns the list; 80 layers for the standard channels):

1. ``conv1_bn`` (stem);
2. for each cell index ``i`` in 0..7 in order:

   * a cell: ``cells_i_conv1a_bn``, ``cells_i_conv1b_bn``, ``cells_i_conv2a_bn``,
     ``cells_i_conv2b_{0,1,2}_bn``, ``cells_i_conv3a_bn``, ``cells_i_conv3b_{0,1,2}_bn``,
     ``cells_i_conv4a_bn``, ``cells_i_conv4b_bn`` and, for the first cell of a stage
     (cells 0, 3, 6: Cin != Cout), ``cells_i_downsample_bn`` — 12 or 13 layers, which is the
     reference module-registration (state-dict) order;
   * a transition (i = 2, 5): ``cells_i_0_bn``;

3. ``head_bn`` (BN1d 512, ``frozen_beta=True``), then ``f_head_bn`` (BN1d 256,
   ``frozen_beta=True``).

Switchable (two-stream) form
----------------------------
:mod:`reid_tf.models.msinet_switchable` builds the visible-infrared form of CM-NAS with a
``bn_factory`` that makes every one of these 80 BNs a switchable BN fed by a mode input.
"""
import contextlib

import tensorflow as tf
import tf_keras as keras

from reid_tf.models.genotypes import GENOTYPE_LENGTH, resolve_genotype
from reid_tf.models.layers import check_model_arguments
from reid_tf.models.msinet_ops import (
    PointwiseConv2D,
    conv1x1,
    conv1x1_linear,
    conv_kernel_initializer,
    conv_layer,
    default_batch_norm,
    light_conv3x3,
    linear_kernel_initializer,
    make_operation,
)

CHANNELS = (64, 256, 384, 512)
MID_CHANNEL_RULES = ("final", "search")
TRANSITION_INDICES = (2, 5)
PART_CHANNELS = 128  # f_conv output channels (part branch)
SAM_REDUCTION = 8  # PAM query/key channels = C // 8
FEATURE_CELL_INDEX = 5  # f_x is tapped after cells[5]

# Prefixes of the layers that make up the backbone (stem and cell list).
BACKBONE_PREFIXES = ("conv1_", "maxpool", "cells_")


# --------------------------------------------------------------------------------------------
# Cell and backbone
# --------------------------------------------------------------------------------------------
def mid_channels(in_channels, out_channels, rule="final"):
    """Branch width M of a cell: ``"final"`` → ``Cout // 4``, ``"search"`` → ``Cin // 4``."""
    if rule == "final":
        return out_channels // 4
    if rule == "search":
        return in_channels // 4
    raise ValueError(f"Unknown mid_channels_rule {rule!r}; allowed: {', '.join(MID_CHANNEL_RULES)}.")


def _operation_layer(op, channels, name):
    """An interaction layer from an op name or from a factory ``op(channels, name)``."""
    if isinstance(op, str):
        return make_operation(op, name)
    if callable(op):
        return op(channels, name)
    raise ValueError(f"Operation for {name} must be an op name or a callable "
                     f"(channels, name) -> layer, got {op!r}.")


def msinet_cell(x, in_channels, out_channels, op2, op3, name, bn_factory=default_batch_norm,
                mid_channels_rule="final"):
    """One MSINet cell (§3): two branches (2 and 6 light convs), two interactions, fusion.

    Args:
      x: input tensor ``(B, H, W, in_channels)``.
      in_channels, out_channels: Cin and Cout.
      op2, op3: the interaction after stage 1 / stage 2 of the branches: an op name
        (``none``, ``exc``, ``ag``, ``cross_att``) or a factory ``op(channels, name)``
        returning a layer that maps ``[a, b]`` to ``[a', b']`` (e.g. a search mixture).
      name: prefix of the cell's layers (``cells_i``).
      bn_factory: BN factory, see :mod:`reid_tf.models.msinet_ops`.
      mid_channels_rule: ``"final"`` (M = Cout//4) or ``"search"`` (M = Cin//4).

    Returns:
      ``ReLU(conv4a(a3) + conv4b(b3) + shortcut(x))``, shape ``(B, H, W, out_channels)``.
    """
    middle = mid_channels(in_channels, out_channels, mid_channels_rule)
    a = conv1x1(x, middle, f"{name}_conv1a", bn_factory)
    b = conv1x1(x, middle, f"{name}_conv1b", bn_factory)
    a = light_conv3x3(a, middle, f"{name}_conv2a", bn_factory)
    for index in range(3):
        b = light_conv3x3(b, middle, f"{name}_conv2b_{index}", bn_factory)
    a, b = _operation_layer(op2, middle, f"{name}_op2")([a, b])
    a = light_conv3x3(a, middle, f"{name}_conv3a", bn_factory)
    for index in range(3):
        b = light_conv3x3(b, middle, f"{name}_conv3b_{index}", bn_factory)
    a, b = _operation_layer(op3, middle, f"{name}_op3")([a, b])
    a = conv1x1_linear(a, out_channels, f"{name}_conv4a", bn_factory)
    b = conv1x1_linear(b, out_channels, f"{name}_conv4b", bn_factory)
    fused = keras.layers.Add(name=f"{name}_fuse")([a, b])
    shortcut = x
    if in_channels != out_channels:
        shortcut = conv1x1_linear(x, out_channels, f"{name}_downsample", bn_factory)
    out = keras.layers.Add(name=f"{name}_add")([fused, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(out)


def transition(x, channels, name, bn_factory=default_batch_norm):
    """Transition between stages: Conv1x1 (conv + BN + ReLU) then AvgPool 2x2 stride 2.

    Layers ``{name}_0_conv``, ``{name}_0_bn``, ``{name}_0_relu``, ``{name}_1_pool``.
    """
    x = conv1x1(x, channels, f"{name}_0", bn_factory)
    return keras.layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{name}_1_pool")(x)


def msinet_backbone(images, operations, bn_factory=default_batch_norm, mid_channels_rule="final",
                    channels=CHANNELS):
    """Stem and the 8-entry cell list (§4.1). Returns ``(x, f_x)``.

    Args:
      images: input tensor ``(B, H, W, 3)`` (normalised).
      operations: 12 entries, each an op name or a factory (see :func:`msinet_cell`); stage
        ``i`` uses ``operations[4i:4i+2]`` and ``operations[4i+2:4i+4]``.
      bn_factory, mid_channels_rule: see :func:`msinet_cell`.
      channels: ``[stem, stage1, stage2, stage3]`` widths.

    Returns:
      ``x``: output of ``cells[7]``; ``f_x``: output of ``cells[5]`` (the part-branch input).
    """
    if len(operations) != GENOTYPE_LENGTH:
        raise ValueError(f"MSINet needs {GENOTYPE_LENGTH} operations, got {len(operations)}.")
    x = conv_layer(images, channels[0], 7, strides=2, padding=3, name="conv1",
                   bn_factory=bn_factory)
    # PyTorch pads the max-pool with -inf; zeros are equivalent after a ReLU.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPool2D(3, strides=2, padding="valid", name="maxpool")(x)
    cell_index = 0
    feature = None
    for stage in range(3):
        in_channels, out_channels = channels[stage], channels[stage + 1]
        ops = operations[4 * stage:4 * stage + 4]
        x = msinet_cell(x, in_channels, out_channels, ops[0], ops[1], f"cells_{cell_index}",
                        bn_factory, mid_channels_rule)
        cell_index += 1
        x = msinet_cell(x, out_channels, out_channels, ops[2], ops[3], f"cells_{cell_index}",
                        bn_factory, mid_channels_rule)
        cell_index += 1
        if stage != 2:
            x = transition(x, out_channels, f"cells_{cell_index}", bn_factory)
            if cell_index == FEATURE_CELL_INDEX:
                feature = x
            cell_index += 1
    return x, feature


def batch_norm_names(channels=CHANNELS):
    """Names of the network's BN layers in the order ``bn_factory`` is called (see module doc)."""
    names = ["conv1_bn"]
    cell_index = 0
    for stage in range(3):
        for first in (True, False):
            prefix = f"cells_{cell_index}"
            names += [f"{prefix}_conv1a_bn", f"{prefix}_conv1b_bn", f"{prefix}_conv2a_bn"]
            names += [f"{prefix}_conv2b_{index}_bn" for index in range(3)]
            names += [f"{prefix}_conv3a_bn"]
            names += [f"{prefix}_conv3b_{index}_bn" for index in range(3)]
            names += [f"{prefix}_conv4a_bn", f"{prefix}_conv4b_bn"]
            if first and channels[stage] != channels[stage + 1]:
                names.append(f"{prefix}_downsample_bn")
            cell_index += 1
        if stage != 2:
            names.append(f"cells_{cell_index}_0_bn")
            cell_index += 1
    return names + ["head_bn", "f_head_bn"]


def num_batch_norms(channels=CHANNELS):
    """Number of BN layers (= entries of a switchable-BN config): 80 for the standard net."""
    return len(batch_norm_names(channels))


# --------------------------------------------------------------------------------------------
# Head helpers and SAM
# --------------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="reid_tf")
class HalfSplitPooling(keras.layers.Layer):
    """Part pooling: ``concat(GAP(rows [0, H//2)), GAP(rows [H//2, H)))``, upper half first."""

    def call(self, inputs):
        height = tf.shape(inputs)[1]
        upper = tf.reduce_mean(inputs[:, :height // 2], axis=[1, 2])
        lower = tf.reduce_mean(inputs[:, height // 2:], axis=[1, 2])
        return tf.concat([upper, lower], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return tf.TensorShape([input_shape[0], None if channels is None else 2 * channels])


def _flatten_positions(tensor):
    """``(B, h, w, C)`` → ``(B, h*w, C)`` in row-major order, keeping static sizes."""
    static = tensor.shape
    positions = -1
    if static[1] is not None and static[2] is not None:
        positions = static[1] * static[2]
    channels = static[3] if static[3] is not None else tf.shape(tensor)[3]
    return tf.reshape(tensor, [tf.shape(tensor)[0], positions, channels])


@keras.utils.register_keras_serializable(package="reid_tf")
class SpatialAlignScores(keras.layers.Layer):
    """Parameter-free part of SAM (§7.1): QAConv correlation maps and the PAM reduction.

    Inputs ``[x, query, key]``: the last feature map ``(B, h, w, C)`` and the PAM projections
    ``(B, h, w, C//8)``. With ``X`` = x reshaped to ``(B, M, C)`` (row-major positions):

    * ``K[g, p, i] = max_j <X[p, i], X[g, j]>`` → ``(B, B, M)`` (the batch is its own kernel);
    * ``P[b, i] = max_j <Q[b, i], Kk[b, j]>`` → ``(B, M)`` (no softmax);

    output ``concat([K, P[None]], axis=0)`` → ``(B + 1, B, M)``, with ``M = h*w`` taken from the
    actual feature map.
    """

    def call(self, inputs):
        features, query, key = (_flatten_positions(tensor) for tensor in inputs)
        correlation = tf.einsum("pic,gjc->gpij", features, features)
        kernel_scores = tf.reduce_max(correlation, axis=-1)
        energy = tf.einsum("bic,bjc->bij", query, key)
        position_scores = tf.reduce_max(energy, axis=-1)
        return tf.concat([kernel_scores, position_scores[tf.newaxis]], axis=0)

    def compute_output_shape(self, input_shape):
        feature_shape = input_shape[0]
        batch = feature_shape[0]
        positions = None
        if feature_shape[1] is not None and feature_shape[2] is not None:
            positions = feature_shape[1] * feature_shape[2]
        return tf.TensorShape([None if batch is None else batch + 1, batch, positions])


def spatial_align_module(x, name="sam"):
    """SAM on the last feature map ``x``: PAM 1x1 convs (C → C//8, with bias) + scores layer.

    Layers ``{name}_query_conv``, ``{name}_key_conv``, ``{name}_scores``. Returns the
    ``(B + 1, B, M)`` score tensor.
    """
    channels = x.shape[-1] // SAM_REDUCTION
    query = PointwiseConv2D(channels, 1, use_bias=True,
                            kernel_initializer=conv_kernel_initializer(),
                            bias_initializer="zeros", name=f"{name}_query_conv")(x)
    key = PointwiseConv2D(channels, 1, use_bias=True,
                          kernel_initializer=conv_kernel_initializer(),
                          bias_initializer="zeros", name=f"{name}_key_conv")(x)
    return SpatialAlignScores(name=f"{name}_scores")([x, query, key])


@contextlib.contextmanager
def float32_policy():
    """Build the layers created inside the block with the ``float32`` dtype policy.

    Under a mixed-precision global policy (``mixed_bfloat16``, ``mixed_float16``) the network
    body computes in 16 bits; the layers whose outputs reach the losses or the evaluation
    (pooled features, fc/BNNeck heads, classifiers) are built inside this block so that they
    cast their inputs to float32 and compute and return float32. The global policy is
    restored afterwards; under the float32 policy the block changes nothing.
    """
    previous = keras.mixed_precision.global_policy()
    if previous.compute_dtype not in ("float16", "bfloat16"):
        yield  # float32 (or float64, for parity checks): nothing to widen
        return
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _dense(units, use_bias, name):
    return keras.layers.Dense(units, use_bias=use_bias,
                              kernel_initializer=linear_kernel_initializer(),
                              bias_initializer="zeros", name=name)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------
def _check_arguments(num_classes, input_shape):
    return check_model_arguments(num_classes, input_shape, 32, "the network downsamples by 16 "
                                 "and splits the part map in two")


def _build_all(genotype, num_classes, input_shape, sam, bn_factory, name):
    """The four models sharing their layers. A ``bn_factory`` may give the models extra
    inputs: ``bn_factory.model_inputs()`` (after the images) and, called once after every BN
    of the network was made, ``bn_factory.head_model_inputs()`` (after the head model's
    features) — the switchable form's mode inputs (:mod:`reid_tf.models.msinet_switchable`)."""
    genotype = resolve_genotype(genotype)
    num_classes, input_shape = _check_arguments(num_classes, input_shape)
    images = keras.Input(shape=input_shape, name="images")
    extra_inputs = list(getattr(bn_factory, "model_inputs", list)())
    inputs = [images] + extra_inputs if extra_inputs else images
    x, f_x = msinet_backbone(images, genotype, bn_factory=bn_factory, mid_channels_rule="final")
    sam_scores = spatial_align_module(x, name="sam") if sam else None

    # Under a mixed-precision policy the pooled features, the heads and everything the losses
    # and the evaluation read are float32 (the backbone computes in float16/bfloat16).
    with float32_policy():
        v = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    f_map = PointwiseConv2D(PART_CHANNELS, 1, use_bias=True,
                            kernel_initializer=conv_kernel_initializer(),
                            bias_initializer="zeros", name="f_conv")(f_x)
    with float32_policy():
        f_v = HalfSplitPooling(name="f_pool")(f_map)

        # Head layers, shared by the training model and the stand-alone head model.
        global_channels, part_channels = x.shape[-1], 2 * PART_CHANNELS
        fc = _dense(global_channels, False, "fc")
        head_bn = bn_factory("head_bn", frozen_beta=True)
        f_fc = _dense(part_channels, False, "f_fc")
        f_head_bn = bn_factory("f_head_bn", frozen_beta=True)
        classifier = _dense(num_classes, True, "classifier")
        f_classifier = _dense(num_classes, True, "f_classifier")

    def heads(v_tensor, f_v_tensor):
        n_v = head_bn(fc(v_tensor))
        n_f_v = f_head_bn(f_fc(f_v_tensor))
        return {"logits": [classifier(n_v), f_classifier(n_f_v)], "bnneck": [n_v, n_f_v]}

    head_outputs = heads(v, f_v)
    embedding_outputs = {"embeddings": [v, f_v]}
    if sam:
        embedding_outputs["sam_scores"] = sam_scores
    training_outputs = {"embeddings": [v, f_v], **head_outputs}
    if sam:
        training_outputs["sam_scores"] = sam_scores
    with float32_policy():
        features = keras.layers.Concatenate(axis=-1, name="features")([v, f_v])

    training_model = keras.Model(inputs, training_outputs, name=f"{name}_training")
    inference_model = keras.Model(inputs, features, name=f"{name}_inference")
    embedding_model = keras.Model(inputs, embedding_outputs, name=f"{name}_embedding")
    v_input = keras.Input(shape=(global_channels,), name="head_input_v")
    f_v_input = keras.Input(shape=(part_channels,), name="head_input_f_v")
    head_inputs = [v_input, f_v_input] + list(getattr(bn_factory, "head_model_inputs", list)())
    head_model = keras.Model(head_inputs, heads(v_input, f_v_input), name=f"{name}_head")
    return training_model, inference_model, embedding_model, head_model


def build_msinet(genotype, num_classes, input_shape=(256, 128, 3), sam=False,
                 bn_factory=default_batch_norm, name="msinet"):
    """Build MSINet; returns ``(training_model, inference_model)`` sharing their layers.

    Args:
      genotype: 12 operation names, a genotype JSON file path, or a registered name
        (``"msmt"``).
      num_classes: classes of both classifiers.
      input_shape: ``(H, W, 3)``; 256×128 for persons, 256×256 for vehicles.
      sam: add the Spatial Alignment Module (PAM convs + scores, §7.1).
      bn_factory: BN factory (see module doc for the call order).
      name: model-name prefix.

    Returns:
      ``training_model``: normalised images → ``{"embeddings": [v, f_v], "logits": [y, f_y],
      "bnneck": [n_v, n_f_v]}`` plus ``"sam_scores"`` ``(B+1, B, M)`` when ``sam``;
      ``inference_model``: images → ``concat(v, f_v)`` ``(B, 768)`` (the raw, pre-BN
      evaluation feature, §4.3 defaults). The switchable form
      (:func:`reid_tf.models.msinet_switchable.build_switchable_msinet`) takes
      ``[images, mode]``.
    """
    training_model, inference_model, _, _ = _build_all(genotype, num_classes, input_shape, sam,
                                                        bn_factory, name)
    return training_model, inference_model


def build_msinet_models(genotype, num_classes, input_shape=(256, 128, 3), sam=False,
                        bn_factory=default_batch_norm, name="msinet"):
    """Build MSINet as a :class:`reid_tf.models.base.ReIDModels` (arguments as
    :func:`build_msinet`).

    ``embedding_model``: images → ``{"embeddings": [v, f_v]}`` (+ ``"sam_scores"``);
    ``head_model``: ``[v, f_v]`` → ``{"logits": [y, f_y], "bnneck": [n_v, n_f_v]}``;
    ``backbone_prefixes``: the stem and cell-list layer prefixes; ``regularization`` is empty
    because MSINet uses coupled SGD weight decay in the trainer.
    """
    from reid_tf.models.base import ReIDModels

    training_model, inference_model, embedding_model, head_model = _build_all(
        genotype, num_classes, input_shape, sam, bn_factory, name)
    return ReIDModels(training_model=training_model, inference_model=inference_model,
                      embedding_model=embedding_model, head_model=head_model,
                      backbone_prefixes=BACKBONE_PREFIXES, regularization=[])


def _layer_name(variable):
    return variable.name.split("/")[0]


def count_parameters(model, include_classifiers=True, prefix=None):
    """Parameter count as the reference reports it (§11).

    Counts every weight except BN moving statistics (``moving_mean``/``moving_variance``);
    frozen head-BN biases and cross-attention γ are included. ``include_classifiers=False``
    drops every weight of a layer whose name contains ``classifier`` (the reference's
    "Model Params"). ``prefix`` restricts the count to layers whose name starts with it
    (e.g. ``"cells_3_"``).
    """
    total = 0
    seen = set()
    for variable in model.weights:
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        name = variable.name
        if "moving_mean" in name or "moving_variance" in name:
            continue
        layer_name = _layer_name(variable)
        if not include_classifiers and "classifier" in layer_name:
            continue
        if prefix is not None and not layer_name.startswith(prefix):
            continue
        total += int(variable.shape.num_elements())
    return total
