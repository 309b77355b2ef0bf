"""Exponential moving average of the *whole* model state (spec ``cmnas.md`` §6.6).

The shadow covers every floating-point variable: trainable weights **and** non-trainable
state such as BN moving means/variances (of every BN copy, used or not). Integer variables
(counters) are left out. After every optimiser step::

    shadow <- decay * shadow + (1 - decay) * current

computed as ``shadow - (1 - decay) * (shadow - current)`` so that a variable that never changes
keeps a bit-identical shadow (the never-selected CM-NAS BN copies stay exactly at their
ImageNet values). :meth:`WeightEMA.copy_shadow_to_model` is the periodic EMA -> live reset
of CM-NAS; the shadow variables are tracked by ``tf.train.Checkpoint``.
"""
import numpy as np
import tensorflow as tf


def _collect_variables(source):
    if hasattr(source, "training_model"):  # ReIDModels
        source = source.training_model
    variables = source.weights if hasattr(source, "weights") else list(source)
    unique, seen = [], set()
    for variable in variables:
        key = variable.ref() if hasattr(variable, "ref") else id(variable)
        if key in seen:
            continue
        seen.add(key)
        if variable.dtype.is_floating:
            unique.append(variable)
    return unique


class _Untracked:
    """Holds references that ``tf.Module``/checkpoints must not track (the live variables
    belong to the model; only the shadow belongs to the EMA)."""

    def __init__(self, items):
        self.items = tuple(items)


def _shadow_name(variable):
    return "ema/" + variable.name.split(":")[0]


class WeightEMA(tf.Module):
    """Shadow copy of a model's variables, updated as an exponential moving average.

    Args:
      source: a Keras model (all of ``model.weights``), a ``ReIDModels`` (its training model)
        or an iterable of variables. Non-floating variables are ignored.
      decay: the EMA decay ``d`` (CM-NAS: 0.997 SYSU-MM01, 0.968 RegDB); a ``tf.Variable`` so
        it can be changed without retracing.

    The shadow is initialised to the current values (take it after the ImageNet
    initialisation, before the first step). :meth:`update` returns tf ops and can be called
    inside ``tf.function``.
    """

    def __init__(self, source, decay=0.997, name="weight_ema"):
        super().__init__(name=name)
        decay = float(decay)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay} (flag --ema_decay).")
        live = _collect_variables(source)
        if not live:
            raise ValueError("WeightEMA: no floating-point variables to track (is the model "
                             "built?).")
        self._live_holder = _Untracked(live)
        # float64 so that 1 - d is rounded once (float32(0.003), as PyTorch's Python-float rate).
        self.decay = tf.Variable(decay, dtype=tf.float64, trainable=False, name="ema_decay")
        with tf.init_scope():
            self.shadow = [tf.Variable(variable.read_value(), trainable=False,
                                       name=_shadow_name(variable))
                           for variable in live]

    @property
    def _live(self):
        return self._live_holder.items

    @property
    def variables_tracked(self):
        """The live variables whose averages are kept (same order as :attr:`shadow`)."""
        return list(self._live)

    def update(self):
        """One EMA step: ``shadow <- d * shadow + (1 - d) * current`` for every variable."""
        updates = []
        rate64 = 1.0 - self.decay
        for shadow, variable in zip(self.shadow, self._live):
            rate = tf.cast(rate64, shadow.dtype)
            updates.append(shadow.assign_sub(rate * (shadow - tf.cast(variable, shadow.dtype))))
        return tf.group(*updates)

    def copy_shadow_to_model(self):
        """Overwrite the live variables with the shadow (CM-NAS's periodic reset)."""
        return tf.group(*[variable.assign(tf.cast(shadow, variable.dtype))
                          for shadow, variable in zip(self.shadow, self._live)])

    def copy_model_to_shadow(self):
        """Re-take the shadow from the current live values."""
        return tf.group(*[shadow.assign(tf.cast(variable, shadow.dtype))
                          for shadow, variable in zip(self.shadow, self._live)])

    def get_weights(self):
        """The shadow values as a list of numpy arrays (order of :attr:`variables_tracked`)."""
        return [shadow.numpy() for shadow in self.shadow]

    def set_weights(self, weights):
        """Set the shadow from a list of arrays as returned by :meth:`get_weights`."""
        weights = list(weights)
        if len(weights) != len(self.shadow):
            raise ValueError(f"WeightEMA.set_weights: expected {len(self.shadow)} arrays, got "
                             f"{len(weights)}.")
        for position, (shadow, value) in enumerate(zip(self.shadow, weights)):
            value = np.asarray(value)
            if tuple(value.shape) != tuple(shadow.shape):
                raise ValueError(f"WeightEMA.set_weights: array {position} for "
                                 f"{self._live[position].name} has shape {value.shape}, "
                                 f"expected {tuple(shadow.shape)}.")
            shadow.assign(value.astype(shadow.dtype.as_numpy_dtype))

    def shadow_dict(self):
        """``{live variable name: shadow value}`` (numpy), e.g. for inspection."""
        return {variable.name: shadow.numpy() for variable, shadow in zip(self._live,
                                                                           self.shadow)}

    def swap(self):
        """Exchange live and shadow values (evaluate the average, then swap back)."""
        for shadow, variable in zip(self.shadow, self._live):
            live_value = tf.identity(variable)
            variable.assign(tf.cast(shadow, variable.dtype))
            shadow.assign(tf.cast(live_value, shadow.dtype))
