"""The switchable (visible-infrared) MSINet: every BN a switchable BN (CM-NAS's two streams).

``build_switchable_msinet_models(genotype, num_classes, bn_config)`` builds the visible-infrared
form of CM-NAS (``cmnas.md`` §2) around MSINet: **every** one of the 80 BNs of
:func:`reid_tf.models.msinet.batch_norm_names`, the two heads included, becomes a
:class:`~reid_tf.models.switchable_bn.SwitchableBatchNormalization` whose switch (0 split,
1 share) is the config's entry at the layer's position. The models then take
``[images, mode]`` like CM-NAS (mode 0: mixed batch, visible half first; 1 visible;
2 infrared). The ReLUs stay outside the BNs (``with_relu=False``), so layer names are those of
the plain network. The head BNs are switchable too, so a config can give each modality its own
BNNeck; their shift is frozen at 0 in all three BN sets (``center=False``, the plain network's
frozen β), and a share entry there is CM-NAS's single shared BNNeck. Because the head BNs need
the mode, the switchable ``head_model`` takes ``[v, f_v, mode]``. ``mixed=True`` builds the
BN-split search supernet exactly as ``build_cmnas_resnet50(..., mixed=True)`` does (one
architecture variable ``alpha`` per BN).

The switchable-BN contract, the same four functions as :mod:`reid_tf.models.cmnas` (the
BN-split search uses either module through them): :func:`switchable_bn_layers`,
:func:`switchable_config`, :func:`derived_config` and :func:`variable_groups`.
"""
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from reid_tf.models.base import ReIDModels
from reid_tf.models.cmnas_config import ConfigError, read_config, validate_config
from reid_tf.models.msinet import (BACKBONE_PREFIXES, CHANNELS, _build_all, batch_norm_names,
                                    num_batch_norms)
from reid_tf.models.switchable_bn import (SwitchableBatchNormalization, TorchBatchNormalization,
                                          VariableGroups)


def _length_error(source, expected, got):
    return ConfigError(f"{source}: an MSINet BN config needs exactly {expected} values (one per "
                       f"BN layer in reid_tf.models.msinet.batch_norm_names() order, see "
                       f"configs/cmnas/README.md), got {got}.")


def resolve_bn_config(config, channels=CHANNELS):
    """An MSINet switchable-BN config as a list of 0/1 ints, checked against the BN count.

    ``config`` is a sequence of 0 (split) / 1 (share) values or the path of a config file in
    the CM-NAS format (first line, space-separated; :func:`reid_tf.models.cmnas_config.
    read_config`). Entry k is the BN ``batch_norm_names(channels)[k]``.

    Raises FileNotFoundError for a missing file and ConfigError (a ValueError) for a wrong
    length (naming the file and the expected count, 80 for the standard channels) or a value
    other than 0/1.
    """
    expected = num_batch_norms(channels)
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MSINet BN config file not found: {path} "
                                    f"(flag --cmnas_config_file_path).")
        with open(path, "r", encoding="utf-8") as stream:
            count = len(stream.readline().split())
        if count != expected:
            raise _length_error(path, expected, count)
        return read_config(path, length=expected)
    values = np.asarray(config).reshape(-1).tolist() if isinstance(config, np.ndarray) \
        else list(config)
    if len(values) != expected:
        raise _length_error("bn_config", expected, len(values))
    return validate_config(values, source="bn_config", length=expected)


@keras.utils.register_keras_serializable(package="reid_tf")
class FrozenBetaSwitchableBatchNormalization(SwitchableBatchNormalization):
    """Switchable BN whose three BN sets have no shift (``center=False``: β is exactly 0).

    The switchable form of MSINet's head BNs (``head_bn``, ``f_head_bn``), whose bias is frozen
    at 0 in the plain network. Arguments as :class:`SwitchableBatchNormalization`.
    """

    def __init__(self, switch, **kwargs):
        super().__init__(switch, **kwargs)
        options = dict(momentum=self.momentum, epsilon=self.epsilon,
                       unbiased_moving_variance=self.unbiased_moving_variance, center=False)
        # Replace the three BN sets of the base class (not built yet) by shift-free ones.
        self.visible_bn = TorchBatchNormalization(name="visible_bn", **options)
        self.thermal_bn = TorchBatchNormalization(name="thermal_bn", **options)
        self.sharable_bn = TorchBatchNormalization(name="sharable_bn", **options)


class _ModeBoundBatchNorm:
    """What :class:`SwitchableBatchNormFactory` returns: calls the switchable layer on one
    tensor with the factory's current mode tensor (the ``bn_factory`` contract: one tensor in,
    one tensor out). Not a layer: the model graph only holds the switchable layer."""

    def __init__(self, layer, factory):
        self.layer = layer
        self.factory = factory

    def __call__(self, inputs):
        return self.layer(inputs, self.factory.mode)


class SwitchableBatchNormFactory:
    """A ``bn_factory`` that makes every BN a switchable BN fed by a mode input.

    Args:
      config: the switch values (see :func:`resolve_bn_config`).
      mixed, temperature: build mixed search cells (see
        :class:`~reid_tf.models.switchable_bn.SwitchableBatchNormalization`).
      channels: network widths (the BN names and count depend on them).

    The factory must be called in :func:`~reid_tf.models.msinet.batch_norm_names` order; a BN
    requested out of order raises ValueError. :attr:`layers` maps names to the layers created.
    The network's models take the factory's ``mode`` input (:meth:`model_inputs`); the
    stand-alone head model gets a mode input of its own (:meth:`head_model_inputs`).
    """

    def __init__(self, config, mixed=False, temperature=1.0, channels=CHANNELS):
        self.names = batch_norm_names(channels)
        self.config = resolve_bn_config(config, channels)
        self.mode = _mode_input()
        self.mixed = bool(mixed)
        self.temperature = float(temperature)
        self.layers = {}

    def __call__(self, name, frozen_beta=False):
        position = len(self.layers)
        expected = self.names[position] if position < len(self.names) else None
        if name != expected:
            raise ValueError(f"Switchable MSINet: BN {name!r} requested at position {position}, "
                             f"but batch_norm_names() has {expected!r} there; the network and "
                             f"batch_norm_names() disagree.")
        layer_class = (FrozenBetaSwitchableBatchNormalization if frozen_beta
                       else SwitchableBatchNormalization)
        layer = layer_class(self.config[position], with_relu=False, mixed=self.mixed,
                            temperature=self.temperature, name=name)
        self.layers[name] = layer
        return _ModeBoundBatchNorm(layer, self)

    def model_inputs(self):
        """The extra inputs of the network's models: ``[mode]``."""
        return [self.mode]

    def head_model_inputs(self):
        """After every BN was made: a new ``mode`` input that the switchable head BNs read
        when the stand-alone head model calls them."""
        self.check_complete()
        self.mode = _mode_input("head_mode")
        return [self.mode]

    def check_complete(self):
        """Raise ValueError unless every BN of ``batch_norm_names()`` was created."""
        if len(self.layers) != len(self.names):
            raise ValueError(f"Switchable MSINet: {len(self.layers)} BN layers were created, "
                             f"batch_norm_names() lists {len(self.names)}.")


def _mode_input(name="mode"):
    return keras.Input(batch_shape=(), dtype=tf.int32, name=name)


def build_switchable_msinet_models(genotype, num_classes, bn_config=None,
                                   input_shape=(256, 128, 3), sam=False, name="msinet",
                                   mixed=False, temperature=1.0):
    """The switchable MSINet as :class:`reid_tf.models.base.ReIDModels` (module docstring).

    Args:
      genotype, num_classes, input_shape, sam, name: as
        :func:`reid_tf.models.msinet.build_msinet_models`.
      bn_config: 80 switch values (0 split, 1 share) in ``batch_norm_names()`` order, or a
        config file path (:func:`resolve_bn_config`).
      mixed: make every BN a mixed search cell with its own architecture variable ``alpha``
        (the config then only gives the fallback switches), as
        ``build_cmnas_resnet50(..., mixed=True)``.
      temperature: softmax temperature of the mixed cells.

    Every model takes ``[images, mode]`` (mode 0 for a training batch whose first half is
    visible and second half infrared; 1 visible, 2 infrared at test time); the head model
    ``[v, f_v, mode]``.
    """
    if bn_config is None:
        raise ValueError("build_switchable_msinet_models: the switchable form needs bn_config "
                         "(80 switch values or a config file); mixed=True (the BN-split search "
                         "supernet) needs bn_config for its fallback switches (e.g. all share).")
    factory = SwitchableBatchNormFactory(bn_config, mixed=mixed, temperature=temperature)
    training_model, inference_model, embedding_model, head_model = _build_all(
        genotype, num_classes, input_shape, sam, factory, name)
    return ReIDModels(training_model=training_model, inference_model=inference_model,
                      embedding_model=embedding_model, head_model=head_model,
                      backbone_prefixes=BACKBONE_PREFIXES, regularization=[])


def _as_model(model):
    return getattr(model, "training_model", model)


def switchable_bn_layers(model, channels=CHANNELS):
    """The switchable BN layers of a switchable MSINet (any of its models or its
    ``ReIDModels``), in config order. Raises ValueError for a plain MSINet."""
    model = _as_model(model)
    layers = [model.get_layer(name) for name in batch_norm_names(channels)]
    plain = [layer.name for layer in layers
             if not isinstance(layer, SwitchableBatchNormalization)]
    if plain:
        raise ValueError(f"{model.name} is not a switchable MSINet (e.g. {plain[0]} is a "
                         f"{type(model.get_layer(plain[0])).__name__}); build it with "
                         f"bn_config.")
    return layers


def switchable_config(model, channels=CHANNELS):
    """The switch values a switchable MSINet was built with, in config order."""
    return [layer.switch for layer in switchable_bn_layers(model, channels)]


def derived_config(model, channels=CHANNELS):
    """Discretised architecture of a mixed (search) MSINet: per BN the argmax of its mixing
    weights, split on an exact tie (as :func:`reid_tf.models.cmnas.derived_config`)."""
    return [layer.derived_switch() for layer in switchable_bn_layers(model, channels)]


def variable_groups(model, channels=CHANNELS):
    """The variables of a switchable MSINet as
    :class:`reid_tf.models.switchable_bn.VariableGroups`.

    backbone: trainable variables of the stem and cell layers (:data:`BACKBONE_PREFIXES`),
    switchable BNs counted with their selected BN sets only; head: every other trainable
    variable (fc, head BNs, part branch, classifiers, SAM); architecture: the ``alpha`` of
    every mixed BN in config order; frozen: every variable of the BN sets the config never
    selects (they must keep their values forever).
    """
    model = _as_model(model)
    switchable = switchable_bn_layers(model, channels)
    switchable_ids = {id(layer) for layer in switchable}
    backbone, head, frozen = [], [], []
    for layer in model.layers:
        group = backbone if layer.name.startswith(BACKBONE_PREFIXES) else head
        if id(layer) in switchable_ids:
            for set_name in layer.selected_bn_sets:
                group.extend(layer.bn_sets[set_name].trainable_weights)
            for set_name in layer.unselected_bn_sets:
                frozen.extend(layer.bn_sets[set_name].weights)
        else:
            group.extend(layer.trainable_weights)
    architecture = [layer.alpha for layer in switchable if layer.alpha is not None]
    return VariableGroups(backbone, head, architecture, frozen)
