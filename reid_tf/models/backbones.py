"""tf2cv ImageNet backbones cut into named functional blocks, with last stride 1.

The blocks are assembled from tf2cv's own unit and init-block classes (``ResInitBlock`` /
``ResUnit``, ``IBNResUnit``, ``SEInitBlock`` / ``ResNeStAUnit``) exactly as tf2cv's classifiers
build them, with the FlipReID change (spec flipreid.md section 5.1): the first unit of the
**last** stage uses stride 1, so the final feature map is 1/16 of the input.

Block sub-models (Keras names never contain ``/``):

* ``features_init_block`` holding one layer ``features_init_block_stem`` (the tf2cv init block);
* ``features_stage1`` ... ``features_stage{n-1}`` holding the units
  ``features_stage{i}_unit{j}``;
* the last stage is built twice, ``features_stage4_global_branch`` and
  ``features_stage4_regional_branch`` (units ``features_stage4_global_branch_unit{j}``, ...):
  two replicas with the same initial weights but their own variables. Layer names are unique
  in the whole network, so variable names are unique and HDF5 weight files save and load.

ImageNet weights are never downloaded: :func:`load_tf2cv_weights` reads a local tf2cv weights
file (``.tf2.h5``, what tf2cv's ``model.save_weights`` writes for its classifier, e.g.
``resnet50-0604-728800bf.tf2.h5``) and assigns it by weight name and shape.
"""
import dataclasses
import os
import re

import numpy as np
import tf_keras as keras
from tf2cv.models.ibnresnet import IBNResUnit
from tf2cv.models.resnesta import ResNeStAUnit
from tf2cv.models.resnet import ResInitBlock, ResUnit
from tf2cv.models.senet import SEInitBlock

WEIGHTS_FLAG = "backbone_weights_file_path"
BACKBONE_FLAG = "backbone_model_name"

_STAGE_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_STAGE_WIDTHS = (256, 512, 1024, 2048)
_FAMILIES = ("resnet", "ibn_resnet", "resnesta")
# Documented by the FlipReID spec: resnet50, ibn_resnet50, resnesta50; deeper variants of the
# same tf2cv families are built the same way.
SUPPORTED_BACKBONES = tuple(f"{family}{depth}" for depth in _STAGE_UNITS for family in _FAMILIES)
REPLICA_SUFFIXES = ("global_branch", "regional_branch")


def validate_backbone_name(backbone_model_name):
    """Return ``(family, depth)`` of a supported backbone name, else raise ``ValueError``
    naming the flag and the allowed values."""
    return _parse_backbone_name(backbone_model_name)


def _parse_backbone_name(backbone_model_name):
    match = re.fullmatch(r"(resnet|ibn_resnet|resnesta)(\d+)", str(backbone_model_name))
    if match is None or int(match.group(2)) not in _STAGE_UNITS:
        raise ValueError(
            f"Unknown --{BACKBONE_FLAG} {backbone_model_name!r}; allowed values: "
            f"{', '.join(SUPPORTED_BACKBONES)}.")
    return match.group(1), int(match.group(2))


def _make_init_block(family, depth, name):
    if family == "resnesta":
        # tf2cv doubles the ResNeSt stem width from depth 101 on.
        return SEInitBlock(in_channels=3, out_channels=128 if depth >= 101 else 64, name=name)
    return ResInitBlock(in_channels=3, out_channels=64, name=name)


def _make_unit(family, in_channels, out_channels, strides, name):
    if family == "resnet":
        # tf2cv resnet50 (not resnet50b): stride in the first 1x1 convolution.
        return ResUnit(in_channels=in_channels, out_channels=out_channels, strides=strides,
                       bottleneck=True, conv1_stride=True, name=name)
    if family == "ibn_resnet":
        return IBNResUnit(in_channels=in_channels, out_channels=out_channels, strides=strides,
                          conv1_ibn=out_channels < 2048, name=name)
    return ResNeStAUnit(in_channels=in_channels, out_channels=out_channels, strides=strides,
                        bottleneck=True, name=name)


def _wrap_block(name, input_shape, layers):
    """A functional sub-model named ``name`` applying ``layers`` in order."""
    inputs = keras.Input(shape=tuple(input_shape), name=f"{name}_input")
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name=name)


@dataclasses.dataclass
class BackboneBlocks:
    """A backbone cut into block sub-models.

    Attributes:
      backbone_model_name: e.g. ``"resnet50"``.
      trunk: block sub-models applied in sequence before the last stage
        (``features_init_block``, ``features_stage1`` ... ``features_stage{n-1}``).
      last_stage: ``{suffix: sub-model}`` replicas of the last stage, each with its own
        variables (``features_stage4_global_branch``, ``features_stage4_regional_branch``).
      tf2cv_paths: ``{layer name: tf2cv path}`` of every layer inside the blocks, e.g.
        ``{"features_stage1_unit1": ("stage1", "unit1")}``; used to map weight files.
    """

    backbone_model_name: str
    trunk: list
    last_stage: dict
    tf2cv_paths: dict

    @property
    def last_stage_name(self):
        """Name of the last stage as tf2cv writes it (``"stage4"``)."""
        return f"stage{len(self.trunk)}"

    @property
    def prefixes(self):
        """Block-name prefixes for freezing: init block and every stage (replicas included)."""
        names = [block.name for block in self.trunk]
        names.append(f"features_{self.last_stage_name}")
        return tuple(names)

    @property
    def blocks(self):
        """All block sub-models: the trunk then the last-stage replicas."""
        return list(self.trunk) + list(self.last_stage.values())

    def apply_trunk(self, tensor):
        """Chain the trunk blocks on ``tensor`` (a Keras tensor) and return stage-3 output."""
        for block in self.trunk:
            tensor = block(tensor)
        return tensor


def build_backbone_blocks(backbone_model_name, input_shape, replica_suffixes=REPLICA_SUFFIXES,
                          last_stride=1):
    """Build ``backbone_model_name`` as block sub-models for images of ``input_shape``.

    Args:
      backbone_model_name: one of :data:`SUPPORTED_BACKBONES` (the FlipReID spec documents
        ``resnet50``, ``ibn_resnet50`` and ``resnesta50``).
      input_shape: ``(H, W, 3)`` of the (normalised) images.
      replica_suffixes: one last-stage replica is built per suffix, named
        ``features_stage4_<suffix>``; all replicas start from the same weights.
      last_stride: stride of the first unit of the last stage (1 in FlipReID, 2 in tf2cv).

    Returns:
      :class:`BackboneBlocks`.
    """
    family, depth = _parse_backbone_name(backbone_model_name)
    input_shape = tuple(int(size) for size in input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape} "
                         "(flags --image_height / --image_width).")
    if not replica_suffixes:
        raise ValueError("replica_suffixes must name at least one last-stage replica.")

    tf2cv_paths = {}
    trunk = []
    stem_name = "features_init_block_stem"
    stem = _make_init_block(family, depth, stem_name)
    tf2cv_paths[stem_name] = ("init_block",)
    trunk.append(_wrap_block("features_init_block", input_shape, [stem]))

    stage_units = _STAGE_UNITS[depth]
    stage_count = len(stage_units)
    in_channels = trunk[-1].output_shape[-1]
    shape = trunk[-1].output_shape[1:]
    last_stage = {}
    for stage_index, (unit_count, width) in enumerate(zip(stage_units, _STAGE_WIDTHS), start=1):
        is_last = stage_index == stage_count
        block_names = ([f"features_stage{stage_index}_{suffix}" for suffix in replica_suffixes]
                       if is_last else [f"features_stage{stage_index}"])
        for block_name in block_names:
            units = []
            unit_in_channels = in_channels
            for unit_index in range(1, unit_count + 1):
                if unit_index == 1 and stage_index != 1:
                    strides = last_stride if is_last else 2
                else:
                    strides = 1
                unit_name = f"{block_name}_unit{unit_index}"
                units.append(_make_unit(family, unit_in_channels, width, strides, unit_name))
                tf2cv_paths[unit_name] = (f"stage{stage_index}", f"unit{unit_index}")
                unit_in_channels = width
            block = _wrap_block(block_name, shape, units)
            if is_last:
                last_stage[block_name[len(f"features_stage{stage_index}_"):]] = block
            else:
                trunk.append(block)
        if not is_last:
            shape = trunk[-1].output_shape[1:]
            in_channels = width

    replicas = list(last_stage.values())
    initial_weights = replicas[0].get_weights()
    for replica in replicas[1:]:
        replica.set_weights(initial_weights)
    return BackboneBlocks(backbone_model_name=str(backbone_model_name), trunk=trunk,
                          last_stage=last_stage, tf2cv_paths=tf2cv_paths)


# --------------------------------------------------------------------------------------------
# Loading tf2cv ImageNet weight files
# --------------------------------------------------------------------------------------------

_BLOCK_COMPONENT = re.compile(r"^(init_block|stage\d+)$")


def _collapse(components):
    """Drop consecutive repeated path components (tf2cv files repeat container scopes)."""
    collapsed = []
    for component in components:
        if not collapsed or collapsed[-1] != component:
            collapsed.append(component)
    return tuple(collapsed)


def _file_key(weight_name):
    """Canonical key of a weight name in a tf2cv file, or None outside the feature blocks.

    ``features/features/stage1/stage1/unit1/body/conv1/conv/conv/kernel:0`` ->
    ``("stage1", "unit1", "body", "conv1", "conv", "kernel")``.
    """
    components = weight_name.split(":")[0].split("/")
    for index, component in enumerate(components):
        if _BLOCK_COMPONENT.match(component):
            rest = list(components[index + 1:])
            while rest and rest[0] == component:
                rest.pop(0)
            return (component,) + _collapse(rest)
    return None


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_tf2cv_weights(file_path):
    """Read the feature-block weights of a tf2cv HDF5 weights file.

    Returns ``{canonical key: numpy array}`` (see :func:`_file_key`); the classifier and any
    weight outside ``init_block``/``stageN`` is ignored.
    """
    import h5py  # local import: only needed when a weights file is given

    file_path = os.path.expanduser(str(file_path))
    if not file_path:
        raise ValueError(f"No weights file given (flag --{WEIGHTS_FLAG}).")
    if not os.path.isfile(file_path):
        raise FileNotFoundError(
            f"Backbone weights file not found: {file_path} (flag --{WEIGHTS_FLAG}).")
    weights = {}
    try:
        with h5py.File(file_path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" not in root.attrs:
                raise ValueError(
                    f"{file_path} is not a Keras HDF5 weights file (no 'layer_names' attribute; "
                    f"flag --{WEIGHTS_FLAG}).")
            for layer_name in root.attrs["layer_names"]:
                group = root[_decode(layer_name)]
                for weight_name in group.attrs.get("weight_names", []):
                    weight_name = _decode(weight_name)
                    key = _file_key(weight_name)
                    if key is None:
                        continue
                    if key in weights:
                        raise ValueError(
                            f"{file_path}: two weights map to {'/'.join(key)} (second one "
                            f"{weight_name}); cannot assign them unambiguously "
                            f"(flag --{WEIGHTS_FLAG}).")
                    weights[key] = np.asarray(group[weight_name])
    except OSError as error:
        raise ValueError(f"Cannot read {file_path} as an HDF5 weights file ({error}; "
                         f"flag --{WEIGHTS_FLAG}).") from error
    return weights


def _model_keys(blocks):
    """``[(canonical key, variable)]`` for every variable of every block sub-model."""
    entries = []
    for block in blocks.blocks:
        for layer in block.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            path = blocks.tf2cv_paths[layer.name]
            prefix = layer.name + "/"
            for variable in layer.weights:
                name = variable.name.split(":")[0]
                if not name.startswith(prefix):
                    raise RuntimeError(f"Variable {variable.name} of layer {layer.name} does "
                                       "not carry the layer's name scope.")
                relative = name[len(prefix):].split("/")
                entries.append(((path[0],) + _collapse(list(path[1:]) + relative), variable))
    return entries


def load_tf2cv_weights(blocks, file_path, max_listed=5):
    """Assign a tf2cv ImageNet weights file to ``blocks`` (a :class:`BackboneBlocks`).

    Weights are matched by canonical name (container scopes collapsed) and shape; every
    last-stage replica receives the last-stage weights; the classifier is ignored. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and the first
    mismatches when names or shapes do not fit the backbone (e.g. a file of another
    architecture). Returns the number of variables assigned.
    """
    file_weights = read_tf2cv_weights(file_path)
    entries = _model_keys(blocks)
    missing, wrong_shape = [], []
    for key, variable in entries:
        if key not in file_weights:
            missing.append("/".join(key))
        elif tuple(file_weights[key].shape) != tuple(variable.shape):
            wrong_shape.append(f"{'/'.join(key)}: file {tuple(file_weights[key].shape)} vs "
                               f"model {tuple(variable.shape)}")
    model_keys = {key for key, _ in entries}
    unexpected = sorted("/".join(key) for key in file_weights if key not in model_keys)
    if missing or wrong_shape or unexpected:
        parts = []
        for label, items in (("missing in the file", missing), ("shape mismatch", wrong_shape),
                             ("not in the backbone", unexpected)):
            if items:
                listed = "; ".join(items[:max_listed])
                more = f" (+{len(items) - max_listed} more)" if len(items) > max_listed else ""
                parts.append(f"{len(items)} {label}: {listed}{more}")
        raise ValueError(
            f"Weights file {file_path} does not match backbone {blocks.backbone_model_name!r} "
            f"(flag --{WEIGHTS_FLAG}): " + " | ".join(parts))
    keras.backend.batch_set_value(
        [(variable, file_weights[key].astype(variable.dtype.as_numpy_dtype))
         for key, variable in entries])
    return len(entries)


def block_output_shapes(blocks):
    """``{block name: output shape without batch}`` (handy for summaries and checks)."""
    return {block.name: tuple(block.output_shape[1:]) for block in blocks.blocks}


__all__ = ["SUPPORTED_BACKBONES", "BackboneBlocks", "build_backbone_blocks",
           "validate_backbone_name", "load_tf2cv_weights", "read_tf2cv_weights",
           "block_output_shapes"]
