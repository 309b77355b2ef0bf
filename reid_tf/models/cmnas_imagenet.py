"""ImageNet initialisation of CM-NAS's two-stream ResNet-50 (cmnas.md §3.5).

:func:`load_imagenet_weights` copies a torchvision ResNet-50 state dict (or a tf2cv
``resnet50`` ``.h5`` file) into the backbone: every conv kernel one to one, and every
pretrained BN into **all three** BN sets of its switchable BN.
"""
import os
import re

import numpy as np

from reid_tf.models.cmnas import BN_VARIABLES, _as_model, conv_layout, switchable_bn_layout
from reid_tf.models.switchable_bn import BN_SET_NAMES
from reid_tf.runtime.checkpoints import (ConversionError, WeightAssigner, conv_kernel,
                                         load_state_dict)

_TF2CV_STEM = re.compile(
    r"(?:^|/)init_block/conv/(?:conv/)*(?:(bn)/)?(kernel|gamma|beta|moving_mean|moving_variance)"
    r":0$")
_TF2CV_UNIT = re.compile(
    r"(?:^|/)stage(\d+)/(?:.*/)?unit(\d+)/(?:body/conv(\d)|(identity_conv))/(?:conv/)*(?:(bn)/)?"
    r"(kernel|gamma|beta|moving_mean|moving_variance):0$")


def _tf2cv_state_dict(file_path):
    """Read a tf2cv ResNet-50 ``.h5`` into ``{torchvision-style name: array}`` (Keras layout)."""
    import h5py

    result = {}
    torch_names = dict((keras_name, torch_name) for keras_name, torch_name in BN_VARIABLES)

    def visit(path, item):
        if not isinstance(item, h5py.Dataset):
            return
        match = _TF2CV_STEM.search(path)
        if match:
            is_bn, variable = match.group(1), match.group(2)
            module = "bn1" if is_bn else "conv1"
        else:
            match = _TF2CV_UNIT.search(path)
            if not match:
                return
            stage, unit, conv_index, identity, is_bn, variable = match.groups()
            block = int(unit) - 1
            if identity:
                module = (f"layer{stage}.{block}.downsample.1" if is_bn
                          else f"layer{stage}.{block}.downsample.0")
            else:
                module = (f"layer{stage}.{block}.bn{conv_index}" if is_bn
                          else f"layer{stage}.{block}.conv{conv_index}")
        if (variable == "kernel") == bool(is_bn):
            return
        key = f"{module}.{'weight' if variable == 'kernel' else torch_names[variable]}"
        if key in result:
            raise ValueError(f"{file_path}: two datasets map to {key} (second: {path}).")
        result[key] = np.asarray(item)

    with h5py.File(file_path, "r") as archive:
        archive.visititems(visit)
    return result


def load_imagenet_weights(model, file_path, allow_pickle=False, flag="--backbone_weights_file_path"):
    """Initialise the backbone from ImageNet weights (spec §3.5) and return the report.

    ``file_path`` is either a torchvision ResNet-50 state dict (``resnet50-19c8e357.pth``;
    ``.pth``/``.pt``/``.npz``, read with :func:`reid_tf.runtime.checkpoints.load_state_dict`) or a
    tf2cv ``resnet50`` weights file (``.h5``, e.g. ``resnet50-0633-….tf2.h5``). Conv kernels
    are copied one to one and every pretrained BN (gamma, beta, running mean/var) into **all
    three** BN sets of its switchable BN, so right after loading the eval-mode output does not
    depend on the config or the mode. ``fc`` is ignored; BNNeck and classifier keep their
    initialisation.

    Note: tf2cv's ``resnet50`` is ResNet "v1" (stride on the first 1×1 conv of a block) and was
    trained as such; its weights fit this torchvision "v1.5" architecture tensor for tensor,
    but the network they give is not the one they were trained in. Prefer the torchvision file.

    Raises FileNotFoundError naming a missing file, and ConversionError (a ValueError) when a
    backbone variable finds no fitting tensor.
    """
    model = _as_model(model)
    file_path = os.path.expanduser(os.fspath(file_path))
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"ImageNet weights file not found: {file_path}.")
    if file_path.endswith(".h5"):
        state_dict = _tf2cv_state_dict(file_path)
        conv_transform = None  # already (kh, kw, in, out)
    else:
        state_dict = load_state_dict(file_path, state_dict_key="auto",
                                     allow_pickle=allow_pickle, flag=flag)
        conv_transform = conv_kernel
    assigner = WeightAssigner(model, state_dict)
    backbone_names = set()
    for spec in conv_layout():
        keras_name = f"{spec.name}/kernel:0"
        backbone_names.add(keras_name)
        assigner.assign(keras_name, f"{spec.imagenet_name}.weight", conv_transform)
    for spec in switchable_bn_layout():
        for keras_variable, torch_variable in BN_VARIABLES:
            key = f"{spec.imagenet_name}.{torch_variable}"
            for set_name in BN_SET_NAMES:
                keras_name = f"{spec.name}/{set_name}/{keras_variable}:0"
                backbone_names.add(keras_name)
                assigner.assign(keras_name, key)
            assigner.mark_used(key)
        assigner.mark_used(f"{spec.imagenet_name}.num_batches_tracked")
    report = assigner.report()
    missing = sorted(name for name in report.unassigned if name in backbone_names)
    if missing or report.skipped:
        details = "; ".join(f"{key}: {reason}" for key, reason in report.skipped[:5])
        raise ConversionError(
            f"{file_path} is not a ResNet-50 ImageNet checkpoint this model can use: "
            f"{len(missing)} backbone variables without a fitting tensor (e.g. {missing[:5]})"
            + (f"; shape mismatches: {details}" if details else "") + ".")
    return report
