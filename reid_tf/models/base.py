"""The contract every model family returns (:class:`ReIDModels`) and model-walking helpers.

Every family (FlipReID, MSINet, CM-NAS) builds four Keras models that share their layers:

* ``training_model``: inputs -> dict with at least ``"embeddings"`` (list of tensors) and
  ``"logits"`` (list of tensors); used by the trainer.
* ``inference_model``: inputs -> evaluation features (a tensor or a list of tensors); the
  evaluation feature of an image is the concatenation of the outputs in order.
* ``embedding_model``: inputs -> ``{"embeddings": [tensors], ...extras}``.
* ``head_model``: ``[embedding tensors]`` -> ``{"logits": [tensors], ...extras}``.

All models take normalised images (ImageNet mean/std on the 0-1 scale, float32, NHWC).
"""
import dataclasses

import tensorflow as tf
import tf_keras as keras


@dataclasses.dataclass
class ReIDModels:
    """The models of one re-identification network (see the module docstring).

    Attributes:
      training_model: inputs -> dict (``embeddings``, ``logits`` and family extras).
      inference_model: inputs -> evaluation features (tensor or list of tensors).
      embedding_model: inputs -> ``{"embeddings": [tensors], ...extras}``.
      head_model: ``[embedding tensors]`` -> ``{"logits": [tensors], ...extras}``.
      backbone_prefixes: layer-name prefixes frozen by ``freeze_backbone_for_N_epochs``
        (see :func:`set_trainable_by_prefix`).
      regularization: ``[(variable, factor, kind)]`` explicit L2 penalties
        ``factor * sum(variable ** 2)``; ``kind`` is ``kernel``, ``bias``, ``gamma`` or ``beta``.
    """

    training_model: keras.Model
    inference_model: keras.Model
    embedding_model: keras.Model
    head_model: keras.Model
    backbone_prefixes: tuple = ()
    regularization: list = ()


def as_list(value):
    """``value`` as a list: lists/tuples are copied, anything else is wrapped."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def iter_layers(model):
    """Yield every layer nested in ``model`` (itself excluded) once, depth first.

    Functional/Sequential models are walked through ``model.layers`` (topological order);
    other layers (e.g. tf2cv units) through their tracked sub-modules. Each layer object is
    yielded once even if it is reachable along several paths.
    """
    seen = set()

    def _children(layer):
        if isinstance(layer, keras.Model):
            return list(layer.layers)
        # Plain layers (e.g. tf2cv units) expose every nested module through the public
        # tf.Module API; keep the Keras layers among them.
        return [module for module in layer.submodules if isinstance(module, keras.layers.Layer)]

    def _walk(layer):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            yield child
            yield from _walk(child)

    yield from _walk(model)


def set_trainable_by_prefix(model, prefixes, trainable):
    """Set ``trainable`` on every layer or nested model inside ``model`` whose name starts
    with one of ``prefixes`` (FlipReID spec section 5.9).

    Setting a container non-trainable also freezes everything inside it; frozen
    BatchNormalization layers then run in inference mode. Returns the names changed.
    """
    prefixes = tuple(prefixes)
    if not prefixes:
        return []
    changed = []
    for layer in iter_layers(model):
        if layer.name.startswith(prefixes):
            if layer.trainable != trainable:
                changed.append(layer.name)
            layer.trainable = trainable
    return changed


def set_all_trainable(model, trainable=True):
    """Set ``trainable`` on ``model`` and on every layer nested in it (unfreezing)."""
    model.trainable = trainable
    for layer in iter_layers(model):
        layer.trainable = trainable


def count_variables(variables):
    """Total number of scalars in ``variables``."""
    return int(sum(int(tf.size(variable)) for variable in variables))
