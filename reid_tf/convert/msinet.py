"""Convert a reference MSINet PyTorch state dict (``vimar-gu/MSINet``) into Keras weights.

Mapping is by name: a PyTorch module path becomes the Keras layer name by replacing ``._``
and ``.`` with ``_`` (``cells.0.conv2b.1.conv1`` → ``cells_0_conv2b_1_conv1``,
``cells.3._op2`` → ``cells_3_op2``, ``cells.2.0.bn`` → ``cells_2_0_bn``), except
``head`` → ``head_bn``, ``f_head`` → ``f_head_bn`` and ``align_module.pos_pam.{query,key}_conv``
→ ``sam_{query,key}_conv``. The parameter is then mapped by the Keras layer type:

* Conv2D: ``weight`` (O, I, kh, kw) → ``kernel`` (kh, kw, I, O); ``bias`` → ``bias``;
* DepthwiseConv2D: ``weight`` (C, 1, 3, 3) → ``depthwise_kernel`` (3, 3, C, 1);
* Dense: ``weight`` (out, in) → ``kernel`` (in, out); ``bias`` → ``bias``;
* BatchNormalization: ``weight/bias/running_mean/running_var`` → ``gamma/beta/moving_mean/
  moving_variance``; ``num_batches_tracked`` is marked used and ignored;
* ChannelGate (``cells.i._opK``): ``fc1.weight`` (h, C, 1, 1) → ``fc1_kernel`` (C, h),
  ``fc1.bias`` → ``fc1_bias``, and the same for ``fc2``;
* CrossAttention: ``gamma`` (1,) → ``gamma`` (1,).

A tensor whose shape does not fit (e.g. a classifier trained on another number of classes) is
skipped and reported; the Keras variables it would have filled keep their initial values.
"""
import os

from reid_tf.runtime.checkpoints import (
    ConversionError,
    WeightAssigner,
    conv_kernel,
    depthwise_kernel,
    linear_kernel,
)

_MODULE_OVERRIDES = {
    "head": "head_bn",
    "f_head": "f_head_bn",
    "align_module.pos_pam.query_conv": "sam_query_conv",
    "align_module.pos_pam.key_conv": "sam_key_conv",
}

_BN_PARAMETERS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}

DEFAULTS = {
    "genotype_file_path": "configs/genotypes/msmt.json",
    "num_classes": 0,
    "image_height": 256,
    "image_width": 128,
    "sam": False,
}


def keras_layer_name(module_path):
    """Keras layer name of a reference PyTorch module path (see module doc)."""
    if module_path in _MODULE_OVERRIDES:
        return _MODULE_OVERRIDES[module_path]
    return module_path.replace("._", "_").replace(".", "_")


def _gate_kernel(weight):
    """ChannelGate 1x1 conv weight (O, I, 1, 1) → matrix (I, O)."""
    return conv_kernel(weight)[0, 0]


def _target(layer, parameter):
    """``(keras weight name, transform)`` for ``parameter`` of ``layer``, or None."""
    import tf_keras as keras

    from reid_tf.models.msinet_ops import ChannelGate, CrossAttention

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return {"weight": ("depthwise_kernel", depthwise_kernel)}.get(parameter)
    if isinstance(layer, keras.layers.Conv2D):
        return {"weight": ("kernel", conv_kernel), "bias": ("bias", None)}.get(parameter)
    if isinstance(layer, keras.layers.Dense):
        return {"weight": ("kernel", linear_kernel), "bias": ("bias", None)}.get(parameter)
    if isinstance(layer, keras.layers.BatchNormalization):
        if parameter in _BN_PARAMETERS:
            return _BN_PARAMETERS[parameter], None
        return None
    if isinstance(layer, ChannelGate):
        return {"fc1.weight": ("fc1_kernel", _gate_kernel), "fc1.bias": ("fc1_bias", None),
                "fc2.weight": ("fc2_kernel", _gate_kernel),
                "fc2.bias": ("fc2_bias", None)}.get(parameter)
    if isinstance(layer, CrossAttention):
        return {"gamma": ("gamma", None)}.get(parameter)
    return None


def _find_layer(layers, key):
    """``(layer, parameter)`` for a checkpoint key; tries the parent module for nested keys."""
    parts = key.split(".")
    # Longest module path first: "cells.0._op2.fc1.weight" -> module "cells.0._op2.fc1"
    # (no such layer) -> module "cells.0._op2", parameter "fc1.weight".
    for split in range(len(parts) - 1, 0, -1):
        layer = layers.get(keras_layer_name(".".join(parts[:split])))
        if layer is not None:
            return layer, ".".join(parts[split:])
    return None, None


def assign_state_dict(model, state_dict):
    """Assign every reference tensor of ``state_dict`` to ``model`` by name.

    Returns:
      The :class:`reid_tf.runtime.checkpoints.ConversionReport`.
    """
    from reid_tf.models.base import iter_layers

    assigner = WeightAssigner(model, state_dict)
    layers = {layer.name: layer for layer in iter_layers(model)}
    for key in state_dict:
        layer, parameter = _find_layer(layers, key)
        if layer is None:
            continue
        if parameter == "num_batches_tracked":
            import tf_keras as keras
            if isinstance(layer, keras.layers.BatchNormalization):
                assigner.mark_used(key)
            continue
        target = _target(layer, parameter)
        if target is None:
            continue
        weight_name, transform = target
        assigner.assign(f"{layer.name}/{weight_name}:0", key, transform)
    return assigner.report()


def build_converted_model(state_dict, genotype, num_classes=0, input_shape=(256, 128, 3),
                          sam=False):
    """Build MSINet and fill it from ``state_dict``.

    Args:
      state_dict: ``{reference key: numpy array}`` (see :func:`reid_tf.convert.load_state_dict`).
      genotype: 12 op names, a genotype JSON path or a registered name.
      num_classes: classes of the built classifiers; 0 takes them from ``classifier.weight``.
      input_shape: ``(H, W, 3)`` of the built model.
      sam: build the SAM module (its PAM convs are then converted too).

    Returns:
      ``(training_model, inference_model, report)``.
    """
    from reid_tf.models.genotypes import resolve_genotype
    from reid_tf.models.msinet import build_msinet

    try:
        genotype = resolve_genotype(genotype)
    except ValueError as error:
        raise ConversionError(f"{error} (flag --genotype_file_path)") from error
    if not num_classes:
        if "classifier.weight" not in state_dict:
            raise ConversionError("The checkpoint has no 'classifier.weight' to take the number "
                                  "of classes from; set --num_classes.")
        num_classes = int(state_dict["classifier.weight"].shape[0])
    if num_classes < 0:
        raise ConversionError(f"--num_classes must be >= 0, got {num_classes}.")
    training_model, inference_model = build_msinet(genotype, num_classes,
                                                   input_shape=tuple(input_shape), sam=sam)
    report = assign_state_dict(training_model, state_dict)
    return training_model, inference_model, report


def convert(state_dict, output_file_path, **options):
    """Convert a reference MSINet state dict and write Keras ``.h5`` weights.

    Args:
      state_dict: ``{reference key: numpy array}``.
      output_file_path: ``.h5`` file written with ``training_model.save_weights``; load it
        with ``training_model.load_weights`` on a model built by
        :func:`reid_tf.models.msinet.build_msinet` with the same genotype, classes, input size
        and SAM setting.
      **options: ``genotype_file_path``, ``num_classes``, ``image_height``, ``image_width``
        and ``sam`` (the flags of ``python -m reid_tf.convert``); missing ones take
        :data:`DEFAULTS`.

    Returns:
      :class:`reid_tf.runtime.checkpoints.ConversionReport`.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"convert() got unknown options {sorted(unknown)}; "
                        f"allowed: {sorted(DEFAULTS)}.")
    output_file_path = os.path.expanduser(str(output_file_path))
    if not output_file_path.endswith((".h5", ".hdf5")):
        raise ConversionError(f"--output_file_path must end with .h5 (Keras HDF5 weights), got "
                              f"{output_file_path}.")
    options = dict(DEFAULTS, **options)
    input_shape = (int(options["image_height"]), int(options["image_width"]), 3)
    training_model, _, report = build_converted_model(
        state_dict, options["genotype_file_path"], num_classes=int(options["num_classes"] or 0),
        input_shape=input_shape, sam=bool(options["sam"]))
    directory = os.path.dirname(os.path.abspath(output_file_path))
    os.makedirs(directory, exist_ok=True)
    training_model.save_weights(output_file_path)
    return report
