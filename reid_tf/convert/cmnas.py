"""Import a CM-NAS (``TwoStreamSwitchBNOp``) PyTorch checkpoint into Keras ``.h5`` weights.

``python -m reid_tf.convert --architecture cmnas_resnet50 --source_file_path X.pth.tar
--cmnas_config_file_path net.cfg --output_file_path Y.h5 [--state_dict_key ema]``

The reference checkpoint is ``{"epoch", "model", "ema", "optimizer"}``; ``model`` and ``ema`` are
state dicts of the ``DataParallel`` network (``module.`` prefixes, stripped by
:func:`reid_tf.runtime.checkpoints.load_state_dict`). Mapping (spec §4.6):

* ``backbone.conv1.weight`` / ``backbone.layer{s}.{b}.conv{k}.weight`` /
  ``backbone.layer{s}.0.downsample.conv.weight`` -> ``conv1`` / ``layer{s}_{b}_conv{k}`` /
  ``layer{s}_0_downsample_conv`` kernels, ``(O, I, kh, kw)`` -> ``(kh, kw, I, O)``;
* ``backbone.<bn>.{visible,thermal,sharable}_bn.{weight,bias,running_mean,running_var}`` ->
  ``<bn>/{visible,thermal,sharable}_bn/{gamma,beta,moving_mean,moving_variance}``, for all
  three sets of every layer whatever its switch;
* ``bnneck.{weight,running_mean,running_var}`` -> ``bnneck/{gamma,moving_mean,
  moving_variance}``; ``bnneck.bias`` must be all zeros (frozen in the reference; the Keras
  BNNeck has no bias);
* ``classifier.weight`` ``(C, 2048)`` -> ``classifier/kernel`` ``(2048, C)``;
* ``num_batches_tracked`` counters are ignored.

The weights are written with ``training_model.save_weights``, so
``build_cmnas_resnet50(config, C, (H, W, 3))[0].load_weights(Y.h5)`` reads them. Their layout
does not depend on the config (all three BN sets are stored for every layer).
"""
import os

import numpy as np

from reid_tf.runtime.checkpoints import (
    ConversionError,
    WeightAssigner,
    conv_kernel,
    linear_kernel,
)
from reid_tf.models.cmnas import (
    BN_VARIABLES,
    build_cmnas_resnet50,
    conv_layout,
    switchable_bn_layout,
)
from reid_tf.models.cmnas_config import read_config
from reid_tf.models.switchable_bn import BN_SET_NAMES

BACKBONE_PREFIX = "backbone."


# The options of convert() (the flags of ``python -m reid_tf.convert``) and their defaults.
DEFAULTS = {"cmnas_config_file_path": None, "num_classes": 0, "image_height": 256,
            "image_width": 128}


def _strip_module(state_dict):
    result = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        result[key] = np.asarray(value)
    return result


def cmnas_key_map():
    """``[(keras variable name, checkpoint key, transform)]`` for every backbone and head
    tensor of a CM-NAS checkpoint (keys without ``module.``)."""
    mapping = []
    for spec in conv_layout():
        mapping.append((f"{spec.name}/kernel:0", f"{BACKBONE_PREFIX}{spec.torch_name}.weight",
                        conv_kernel))
    for spec in switchable_bn_layout():
        for set_name in BN_SET_NAMES:
            for keras_variable, torch_variable in BN_VARIABLES:
                mapping.append((f"{spec.name}/{set_name}/{keras_variable}:0",
                                f"{BACKBONE_PREFIX}{spec.torch_name}.{set_name}.{torch_variable}",
                                None))
    for keras_variable, torch_variable in BN_VARIABLES:
        if keras_variable != "beta":
            mapping.append((f"bnneck/{keras_variable}:0", f"bnneck.{torch_variable}", None))
    mapping.append(("classifier/kernel:0", "classifier.weight", linear_kernel))
    return mapping


def convert(state_dict, output_file_path, **options):
    """Convert a CM-NAS state dict and write ``output_file_path`` (``.h5``).

    Args:
      state_dict: ``{name: array}`` of the ``model`` or ``ema`` entry (``module.`` prefixes
        allowed).
      output_file_path: the Keras weights file to write.
      **options: (the flags of ``python -m reid_tf.convert``, :data:`DEFAULTS`)
        ``cmnas_config_file_path`` (required; selects which BN sets the built model uses, the
        weights of all three sets are imported anyway), ``num_classes`` (0: from
        ``classifier.weight``), ``image_height``, ``image_width`` (default 256 x 128).

    Returns:
      :class:`reid_tf.runtime.checkpoints.ConversionReport`.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"convert() got unknown options {sorted(unknown)}; "
                        f"allowed: {sorted(DEFAULTS)}.")
    options = dict(DEFAULTS, **options)
    state_dict = _strip_module(state_dict)
    config_path = options["cmnas_config_file_path"]
    if not config_path:
        raise ConversionError("Converting a CM-NAS checkpoint needs its config: set "
                              "--cmnas_config_file_path (a .cfg file with 53 values 0/1).")
    try:
        config = read_config(config_path)
    except (OSError, ValueError) as error:
        raise ConversionError(str(error)) from error

    classifier = state_dict.get("classifier.weight")
    num_classes = int(options["num_classes"] or 0)
    if num_classes <= 0:
        if classifier is None:
            raise ConversionError("The checkpoint has no classifier.weight; set --num_classes "
                                  "to build the classifier.")
        num_classes = int(classifier.shape[0])
    height = int(options["image_height"] or 256)
    width = int(options["image_width"] or 128)

    bias = state_dict.get("bnneck.bias")
    if bias is not None and np.any(bias != 0):
        raise ConversionError(
            f"bnneck.bias must be all zeros (the BNNeck bias is frozen at 0 in CM-NAS and the "
            f"Keras BNNeck has none), but its largest magnitude is {np.abs(bias).max():g}.")

    training_model, _ = build_cmnas_resnet50(config, num_classes, (height, width, 3))
    assigner = WeightAssigner(training_model, state_dict)
    for keras_name, key, transform in cmnas_key_map():
        assigner.assign(keras_name, key, transform)
    if bias is not None:
        assigner.mark_used("bnneck.bias")
    for key in state_dict:
        if key.endswith("num_batches_tracked"):
            assigner.mark_used(key)
    report = assigner.report()

    directory = os.path.dirname(os.path.abspath(output_file_path))
    os.makedirs(directory, exist_ok=True)
    training_model.save_weights(output_file_path)
    return report
