"""FlipReID models (spec flipreid.md section 5): backbone blocks, global and regional branches,
pooling (Average / Max / GeM), clipping, classification heads and the training model.

Input normalisation: the reference starts with a ``preprocess_input`` block (ImageNet 'torch'
mode on raw 0-255 RGB). In reid-tf the data pipeline already delivers normalised images
(``(x / 255 - mean) / std`` with the ImageNet mean/std, float32, NHWC), so that block is
replaced by nothing; it has no weights, so weight files are unaffected.

Structure for ``(H, W, 3)`` inputs (spec section 5.3; 384 x 128 gives the shapes in brackets)::

  image -> features_init_block -> features_stage1 -> features_stage2 -> features_stage3
        [24 x 8 x 1024]
    global:   -> features_stage4_global_branch [24 x 8 x 2048] -> pooling -> clip  (2048)
    regional: -> features_stage4_regional_branch [24 x 8 x 2048]
              -> stripe r (rows [r*s, (r+1)*s), s = h // R, the last stripe to h)
              -> Conv2D(C // R, 3x3, same, bias) -> ReLU -> pooling -> clip     (C // R each)

Layer names: ``global_ge_m_pooling2d`` (GeM) / ``global_average_pooling2d`` /
``global_max_pooling2d`` for the global branch and the same with ``_1`` ... ``_R`` for the
stripes (the names Keras gave the reference's layers, so logged GeM keys
``<name>_power`` match), ``global_clipping`` / ``regional_clipping_{r}``,
``regional_slice_{r}``, ``regional_conv_{r}``, ``regional_relu_{r}`` (r = 1 ... R). Heads:
``head_bn_{i}`` -> ``head_dense_{i}`` for embedding i = 0 (global) ... R.
"""
import os

import tf_keras as keras

from reid_tf.models import flipping
from reid_tf.models.backbones import (REPLICA_SUFFIXES, WEIGHTS_FLAG, build_backbone_blocks,
                                      load_tf2cv_weights, validate_backbone_name)
from reid_tf.models.base import ReIDModels
from reid_tf.models.layers import ClipValues, GlobalGeMPooling2D, HeightSlice
from reid_tf.models.regularization import collect_l2_terms
from reid_tf.runtime.choices import POOLING_MODES

HEAD_BN_EPSILON = 2e-5
HEAD_BN_MOMENTUM = 0.99
HEAD_KERNEL_STDDEV = 0.001


def _pooling_layer(pooling_mode, index):
    suffix = "" if index == 0 else f"_{index}"
    if pooling_mode == "Average":
        return keras.layers.GlobalAveragePooling2D(name=f"global_average_pooling2d{suffix}")
    if pooling_mode == "Max":
        return keras.layers.GlobalMaxPooling2D(name=f"global_max_pooling2d{suffix}")
    return GlobalGeMPooling2D(initial_power=1.0, trainable_power=True,
                              name=f"global_ge_m_pooling2d{suffix}")


def stripe_bounds(height, region_num):
    """``[(start, stop)]`` row ranges of the ``region_num`` stripes of a map of ``height`` rows.

    Stripes have ``height // region_num`` rows; the last one extends to ``height``.
    """
    size = height // region_num
    if size < 1:
        raise ValueError(f"--region_num {region_num} is larger than the stage-4 feature map "
                         f"height {height}; use fewer regions or taller images.")
    bounds = [(index * size, (index + 1) * size) for index in range(region_num)]
    bounds[-1] = (bounds[-1][0], height)
    return bounds


def build_head_model(embedding_widths, num_classes, name="head_model"):
    """Classification heads: per embedding BatchNormalization(epsilon 2e-5, momentum 0.99)
    -> Dense(num_classes, no bias, RandomNormal(0, 0.001)) -> logits.

    Inputs: one tensor per embedding (widths ``embedding_widths``). Output:
    ``{"logits": [tensor per embedding]}`` (softmax is applied in the loss).
    """
    inputs = [keras.Input(shape=(int(width),), name=f"head_input_{index}")
              for index, width in enumerate(embedding_widths)]
    logits = []
    for index, tensor in enumerate(inputs):
        tensor = keras.layers.BatchNormalization(
            epsilon=HEAD_BN_EPSILON, momentum=HEAD_BN_MOMENTUM, name=f"head_bn_{index}")(tensor)
        tensor = keras.layers.Dense(
            int(num_classes), use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(mean=0.0,
                                                               stddev=HEAD_KERNEL_STDDEV),
            name=f"head_dense_{index}")(tensor)
        logits.append(tensor)
    return keras.Model(inputs, {"logits": logits}, name=name)


def build_flipreid(backbone_model_name, input_shape, num_classes, region_num=2,
                   pooling_mode="GeM", min_value=0.0, max_value=1.0,
                   kernel_regularization_factor=5e-4, bias_regularization_factor=5e-4,
                   gamma_regularization_factor=5e-4, beta_regularization_factor=5e-4,
                   use_horizontal_flipping_inside_model=False, backbone_weights_file_path=""):
    """Build the FlipReID models.

    Args:
      backbone_model_name: ``resnet50``, ``ibn_resnet50`` or ``resnesta50`` (also the 101/152
        variants of these tf2cv families).
      input_shape: ``(H, W, 3)``; images are normalised (see the module docstring).
      num_classes: number of training identities (softmax width).
      region_num: stripes R of the regional branch; 0 disables it.
      pooling_mode: ``Average``, ``Max`` or ``GeM``.
      min_value, max_value: clip bounds of every embedding.
      *_regularization_factor: L2 factors (spec section 5.8), listed in ``regularization``.
      use_horizontal_flipping_inside_model: the FlipReID flip structure in the training model.
      backbone_weights_file_path: optional local tf2cv ImageNet weights file (``.tf2.h5``);
        empty = random initialisation. Nothing is ever downloaded.

    Returns:
      :class:`~reid_tf.models.base.ReIDModels`. ``inference_model`` (name ``inference_model``)
      outputs ``[global, regional_1, ..., regional_R]`` (a single tensor when R = 0);
      ``embedding_model`` outputs ``{"embeddings": [same list]}``; ``head_model`` maps the
      embeddings to ``{"logits": [...]}``; ``training_model`` is
      :func:`reid_tf.models.flipping.build_training_model` around them.
    """
    validate_backbone_name(backbone_model_name)
    if pooling_mode not in POOLING_MODES:
        raise ValueError(f"Unknown --pooling_mode {pooling_mode!r}; allowed values: "
                         f"{', '.join(POOLING_MODES)}.")
    region_num = int(region_num)
    if region_num < 0:
        raise ValueError(f"--region_num must be >= 0, got {region_num}.")
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if float(min_value) > float(max_value):
        raise ValueError(f"--min_value ({min_value}) must not exceed --max_value ({max_value}).")

    if backbone_weights_file_path and not os.path.isfile(
            os.path.expanduser(str(backbone_weights_file_path))):
        raise FileNotFoundError(f"Backbone weights file not found: {backbone_weights_file_path} "
                                f"(flag --{WEIGHTS_FLAG}).")

    # With R = 0 the regional replica of the last stage would be unused: do not build it.
    replicas = REPLICA_SUFFIXES if region_num > 0 else REPLICA_SUFFIXES[:1]
    blocks = build_backbone_blocks(backbone_model_name, input_shape, replica_suffixes=replicas)
    if backbone_weights_file_path:
        load_tf2cv_weights(blocks, backbone_weights_file_path)

    image = keras.Input(shape=tuple(int(size) for size in input_shape), name="image")
    trunk_output = blocks.apply_trunk(image)

    def _pool_and_clip(tensor, index):
        tensor = _pooling_layer(pooling_mode, index)(tensor)
        name = "global_clipping" if index == 0 else f"regional_clipping_{index}"
        return ClipValues(min_value=min_value, max_value=max_value, name=name)(tensor)

    embeddings = [_pool_and_clip(blocks.last_stage["global_branch"](trunk_output), 0)]
    if region_num > 0:
        regional_map = blocks.last_stage["regional_branch"](trunk_output)
        height, channels = int(regional_map.shape[1]), int(regional_map.shape[-1])
        for index, (start, stop) in enumerate(stripe_bounds(height, region_num), start=1):
            stripe = HeightSlice(start, stop, name=f"regional_slice_{index}")(regional_map)
            stripe = keras.layers.Conv2D(channels // region_num, kernel_size=3, padding="same",
                                         use_bias=True, name=f"regional_conv_{index}")(stripe)
            stripe = keras.layers.ReLU(name=f"regional_relu_{index}")(stripe)
            embeddings.append(_pool_and_clip(stripe, index))

    inference_model = keras.Model(image, embeddings if region_num > 0 else embeddings[0],
                                  name="inference_model")
    embedding_model = keras.Model(image, {"embeddings": list(embeddings)},
                                  name="embedding_model")
    head_model = build_head_model([int(tensor.shape[-1]) for tensor in embeddings], num_classes)
    training_model = flipping.build_training_model(
        embedding_model, head_model, use_horizontal_flipping_inside_model)

    factors = dict(kernel_regularization_factor=kernel_regularization_factor,
                   bias_regularization_factor=bias_regularization_factor,
                   gamma_regularization_factor=gamma_regularization_factor,
                   beta_regularization_factor=beta_regularization_factor)
    regularization = (collect_l2_terms(inference_model, **factors)
                      + collect_l2_terms(head_model, **factors))
    return ReIDModels(training_model=training_model, inference_model=inference_model,
                      embedding_model=embedding_model, head_model=head_model,
                      backbone_prefixes=blocks.prefixes, regularization=regularization)
