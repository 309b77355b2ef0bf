"""Explicit L2 penalties (FlipReID spec flipreid.md section 5.8).

Instead of attaching Keras regularisers to layers, the models list their penalties as
``(variable, factor, kind)`` triples; the trainer adds ``factor * sum(variable ** 2)`` for each
(:func:`l2_penalty`). Every layer nested in the model (sub-models and tf2cv units walked
through) is visited once:

===================================  =======  ==============================================
layer kind                           weight   condition
===================================  =======  ==============================================
convolution (Conv1D/2D/3D and their  kernel   ``kernel_factor > 0`` (depthwise/pointwise
transposes, depthwise, separable)             kernels count as kernels)
or Dense
same                                 bias     ``bias_factor > 0`` and the layer has a bias
BatchNormalization (subclasses too)  gamma    ``gamma_factor > 0`` and ``scale``
same                                 beta     ``beta_factor > 0`` and ``center``
===================================  =======  ==============================================

Not regularised: instance-norm parameters (e.g. IBN), GeM ``power``, BN moving statistics.
Frozen variables are listed too (their penalty is a constant during frozen training).
"""
import collections

import tensorflow as tf
import tf_keras as keras

from reid_tf.models.base import iter_layers

KINDS = ("kernel", "bias", "gamma", "beta")

_CONV_CLASSES = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
)
_KERNEL_ATTRIBUTES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def _check_factor(name, value):
    value = float(value)
    if value < 0:
        raise ValueError(f"--{name} must be >= 0, got {value}.")
    return value


def collect_l2_terms(model, kernel_regularization_factor=0.0, bias_regularization_factor=0.0,
                     gamma_regularization_factor=0.0, beta_regularization_factor=0.0):
    """List the L2 penalties of ``model`` as ``[(variable, factor, kind)]``.

    Args:
      model: a Keras model or layer; everything nested in it is visited once.
      *_regularization_factor: the four factors of the FlipReID flags; a factor of 0 lists no
        term of that kind.

    Returns:
      A list in layer order (each variable at most once).
    """
    factors = {
        "kernel": _check_factor("kernel_regularization_factor", kernel_regularization_factor),
        "bias": _check_factor("bias_regularization_factor", bias_regularization_factor),
        "gamma": _check_factor("gamma_regularization_factor", gamma_regularization_factor),
        "beta": _check_factor("beta_regularization_factor", beta_regularization_factor),
    }
    terms = []
    seen = set()

    def _add(variable, kind):
        if variable is None or factors[kind] <= 0:
            return
        key = variable.ref() if hasattr(variable, "ref") else id(variable)
        if key in seen:
            return
        seen.add(key)
        terms.append((variable, factors[kind], kind))

    layers = [model] + list(iter_layers(model))
    for layer in layers:
        if isinstance(layer, _CONV_CLASSES + (keras.layers.Dense,)):
            for attribute in _KERNEL_ATTRIBUTES:
                _add(getattr(layer, attribute, None), "kernel")
            if getattr(layer, "use_bias", False):
                _add(getattr(layer, "bias", None), "bias")
        elif isinstance(layer, keras.layers.BatchNormalization):
            if getattr(layer, "scale", False):
                _add(getattr(layer, "gamma", None), "gamma")
            if getattr(layer, "center", False):
                _add(getattr(layer, "beta", None), "beta")
    return terms


def l2_penalty(terms, trainable_only=False):
    """``sum(factor * sum(variable ** 2))`` over ``terms`` as a float32 scalar tensor.

    With ``trainable_only`` the terms of non-trainable (frozen) variables are skipped.
    """
    total = tf.constant(0.0, tf.float32)
    for variable, factor, _ in terms:
        if trainable_only and not variable.trainable:
            continue
        total += factor * tf.reduce_sum(tf.square(tf.cast(variable, tf.float32)))
    return total


def summarize_terms(terms):
    """``{kind: count}`` for the kinds present in ``terms`` (in :data:`KINDS` order)."""
    counts = collections.Counter(kind for _, _, kind in terms)
    return {kind: counts[kind] for kind in KINDS if counts[kind]}
