"""Batch normalisation with PyTorch semantics and CM-NAS's switchable (modality-aware) BN.

:class:`TorchBatchNormalization` is a channels-last batch normalisation that behaves like
``torch.nn.BatchNorm{1,2}d``: eps 1e-5, ``running = 0.9 * running + 0.1 * batch`` (Keras
``momentum=0.9``), normalisation with the *biased* batch variance and, by default, the running
variance updated with the *unbiased* batch variance (factor ``n / (n - 1)``, ``n`` = number of
values per channel), as PyTorch does. Keras' own ``BatchNormalization`` differs here (its
non-fused path uses the biased variance), which only matters for bit-level parity with
reference checkpoints; ``unbiased_moving_variance=False`` gives the Keras behaviour.

:class:`SwitchableBatchNormalization` is CM-NAS's ``SwitchBatchNorm2d`` (spec ``cmnas.md`` §2):
three BN sets (``visible_bn``, ``thermal_bn``, ``sharable_bn``) always exist; a fixed ``switch``
(0 split, 1 share) chooses which ones the forward pass uses, and a runtime ``mode`` says what the
batch holds (0 mixed: first half visible, second half thermal; 1 all visible; 2 all thermal).
With ``mixed=True`` the layer is the supernet cell of the BN-split search (§11.2 [RECON]):
``u = pi_split * SplitBN(x) + pi_share * ShareBN(x)`` followed by the optional ReLU, where
``pi = softmax(alpha / temperature)`` and ``alpha`` is the layer's architecture variable (or
``pi`` / ``alpha`` passed to the call).

The networks with switchable BNs (:mod:`reid_tf.models.cmnas`,
:mod:`reid_tf.models.msinet_switchable`) share one contract, four functions of a model:
``switchable_bn_layers`` (the layers in config order), ``switchable_config`` (the switches it
was built with), ``derived_config`` (the argmax of a mixed model's mixing weights) and
``variable_groups`` (:class:`VariableGroups`).
"""
import collections

import numpy as np
import tensorflow as tf
import tf_keras as keras

SPLIT = 0
SHARE = 1
VALID_SWITCHES = (SPLIT, SHARE)
MODE_MIXED = 0
MODE_VISIBLE = 1
MODE_THERMAL = 2
VALID_MODES = (MODE_MIXED, MODE_VISIBLE, MODE_THERMAL)
BN_SET_NAMES = ("visible_bn", "thermal_bn", "sharable_bn")
# The inference mode of each modality (mode 0, the mixed training batch, is not one).
MODE_BY_MODALITY = {"visible": MODE_VISIBLE, "infrared": MODE_THERMAL}

VariableGroups = collections.namedtuple("VariableGroups",
                                        ["backbone", "head", "architecture", "frozen"])
VariableGroups.__doc__ = """Variables of a network with switchable BNs, for the optimiser.

backbone: trainable convs + the used switchable-BN affine parameters (CM-NAS: Adam at
0.1 x lr); head: the layers after the backbone (CM-NAS: BNNeck gamma + classifier kernel);
architecture: the ``alpha`` variables of mixed (search) layers, in config order; frozen: every
variable of the BN sets the config never selects (gamma, beta and moving statistics), which
must keep their values forever.
"""


def resolve_training(training):
    if training is None:
        return False
    if isinstance(training, (bool, int, np.bool_, np.integer)):
        return bool(training)
    static = tf.get_static_value(training)
    if static is None:
        raise ValueError("`training` must be a Python bool or a constant tensor, got a "
                         f"symbolic tensor {training!r}; pass training=True/False explicitly.")
    return bool(static)


def static_mode(mode):
    """The mode as a Python int when it is known at trace time, otherwise None.

    Accepts Python/numpy ints and scalar (or one-element) tensors. A known mode outside
    {0, 1, 2} raises ValueError.
    """
    if isinstance(mode, (bool, np.bool_)):
        raise ValueError(f"mode must be 0, 1 or 2, got {mode!r}.")
    if isinstance(mode, (int, np.integer)):
        value = int(mode)
    else:
        static = tf.get_static_value(mode)
        if static is None:
            return None
        static = np.asarray(static).reshape(-1)
        if static.size != 1:
            raise ValueError(f"mode must be a single value for the whole batch, got {static}.")
        value = int(static[0])
    if value not in VALID_MODES:
        raise ValueError(
            f"mode must be 0 (mixed batch: visible first half, thermal second half), "
            f"1 (visible) or 2 (thermal); got {value}.")
    return value


def _in_keras_shape_inference():
    """True while tf-keras traces a layer on placeholders only to infer its output signature
    (functional-model construction uses a throw-away graph named ``<layer>_scratch_graph``)."""
    graph = tf.compat.v1.get_default_graph()
    return str(getattr(graph, "name", "")).endswith("_scratch_graph")


def _dynamic_mode(mode):
    """A scalar int32 tensor from a runtime mode, with a range check."""
    mode = tf.cast(tf.reshape(mode, [-1])[0], tf.int32)
    check = tf.debugging.Assert(
        tf.logical_and(mode >= 0, mode <= 2),
        ["mode must be 0 (mixed), 1 (visible) or 2 (thermal); got", mode])
    with tf.control_dependencies([check]):
        return tf.identity(mode)


class TorchBatchNormalization(keras.layers.Layer):
    """Batch normalisation over the last axis with PyTorch ``BatchNorm`` semantics.

    Args:
      momentum: Keras convention, ``moving = momentum * moving + (1 - momentum) * batch``
        (PyTorch momentum 0.1 is ``momentum=0.9``).
      epsilon: added to the variance (PyTorch 1e-5).
      center, scale: create the bias ``beta`` / the weight ``gamma``. ``center=False`` is a
        BN whose bias is frozen at 0 (the CM-NAS/BoT BNNeck).
      gamma_initializer, beta_initializer: initialisers of the affine parameters.
      unbiased_moving_variance: update the moving variance with the unbiased batch variance
        (PyTorch); normalisation always uses the biased one.

    Call ``layer(x, training=...)``: training uses batch statistics over every axis but the last
    and updates the moving statistics; otherwise the moving statistics are used.
    """

    def __init__(self, momentum=0.9, epsilon=1e-5, center=True, scale=True,
                 gamma_initializer="ones", beta_initializer="zeros",
                 unbiased_moving_variance=True, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"{self.name}: momentum must be in [0, 1], got {momentum}.")
        if float(epsilon) <= 0.0:
            raise ValueError(f"{self.name}: epsilon must be positive, got {epsilon}.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.unbiased_moving_variance = bool(unbiased_moving_variance)
        self.gamma = None
        self.beta = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel (last) axis must be known, got "
                             f"input shape {input_shape}.")
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(channels,),
                                         initializer=self.gamma_initializer, trainable=True)
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(channels,),
                                        initializer=self.beta_initializer, trainable=True)
        self.moving_mean = self.add_weight(name="moving_mean", shape=(channels,),
                                           initializer="zeros", trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(channels,),
                                               initializer="ones", trainable=False)
        super().build(input_shape)

    def _update_moving_statistics(self, mean, variance, count):
        if self.unbiased_moving_variance:
            variance = variance * count / tf.maximum(count - 1.0, 1.0)
        # tf.constant, not tf.cast: a Python float cast to float64 goes through float32.
        decay = tf.constant(self.momentum, dtype=mean.dtype)
        self.moving_mean.assign(decay * self.moving_mean + (1.0 - decay) * mean)
        self.moving_variance.assign(decay * self.moving_variance + (1.0 - decay) * variance)

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        training = resolve_training(training)
        axes = list(range(len(inputs.shape) - 1))
        if training:
            mean, variance = tf.nn.moments(inputs, axes=axes)
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), inputs.dtype)
            self._update_moving_statistics(tf.stop_gradient(mean), tf.stop_gradient(variance),
                                           count)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return tf.nn.batch_normalization(inputs, mean, variance, self.beta, self.gamma,
                                         self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "unbiased_moving_variance": self.unbiased_moving_variance,
        })
        return config


class SwitchableBatchNormalization(keras.layers.Layer):
    """CM-NAS switchable BN: three BN sets, a fixed split/share switch and a runtime mode.

    Args:
      switch: 0 = split (``visible_bn`` for visible samples, ``thermal_bn`` for thermal ones),
        1 = share (``sharable_bn`` for every sample). Anything else raises ValueError.
      with_relu: apply ReLU after the normalisation (after the mixing when ``mixed``).
      mixed: architecture-search cell. The output before the ReLU is
        ``pi[0] * SplitBN(x, mode) + pi[1] * ShareBN(x)``; both paths run (and in training both
        update their moving statistics). ``pi`` is, in order of precedence, the call argument
        ``arch_weights``, ``softmax(arch_logits / temperature)`` from the call, or
        ``softmax(alpha / temperature)`` with the layer's own trainable variable ``alpha``
        (shape (2,), order (split, share), initialised to zeros). ``switch`` is then only the
        value :meth:`derived_switch` falls back to and is not used in the forward pass.
      temperature: softmax temperature of the mixed cell.
      momentum, epsilon, unbiased_moving_variance: of the three BNs (see
        :class:`TorchBatchNormalization`).

    Call: ``layer(x, mode, training=..., arch_weights=None, arch_logits=None)``. ``mode`` is a
    Python int or an int tensor (scalar or one element): 0 mixed batch (first half visible,
    second half thermal; the batch must be even), 1 all visible, 2 all thermal. A mode known at
    trace time picks the branch in Python; a runtime tensor mode uses ``tf.switch_case``. BN
    sets the forward pass does not use get no gradient and no moving-statistic update.
    """

    def __init__(self, switch, with_relu=False, mixed=False, temperature=1.0, momentum=0.9,
                 epsilon=1e-5, unbiased_moving_variance=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(switch, (bool, np.bool_)) or not isinstance(switch, (int, np.integer)) \
                or int(switch) not in VALID_SWITCHES:
            raise ValueError(f"{self.name}: invalid switch value {switch!r}, must be 0 (split) "
                             f"or 1 (share).")
        if float(temperature) <= 0.0:
            raise ValueError(f"{self.name}: temperature must be positive, got {temperature}.")
        self.switch = int(switch)
        self.with_relu = bool(with_relu)
        self.mixed = bool(mixed)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.unbiased_moving_variance = bool(unbiased_moving_variance)
        # The three sets compute in this layer's dtype policy (a float64 layer has float64
        # sets; by default both follow the global policy, as before).
        options = dict(momentum=momentum, epsilon=epsilon,
                       unbiased_moving_variance=unbiased_moving_variance,
                       dtype=self.dtype_policy)
        self.visible_bn = TorchBatchNormalization(name="visible_bn", **options)
        self.thermal_bn = TorchBatchNormalization(name="thermal_bn", **options)
        self.sharable_bn = TorchBatchNormalization(name="sharable_bn", **options)
        self.alpha = None

    @property
    def bn_sets(self):
        """``{"visible_bn": layer, "thermal_bn": layer, "sharable_bn": layer}``."""
        return {"visible_bn": self.visible_bn, "thermal_bn": self.thermal_bn,
                "sharable_bn": self.sharable_bn}

    @property
    def selected_bn_sets(self):
        """Names of the BN sets the forward pass can use (all three when ``mixed``)."""
        if self.mixed:
            return BN_SET_NAMES
        return ("visible_bn", "thermal_bn") if self.switch == SPLIT else ("sharable_bn",)

    @property
    def unselected_bn_sets(self):
        """Names of the BN sets that are never used (they must keep their values forever)."""
        return tuple(name for name in BN_SET_NAMES if name not in self.selected_bn_sets)

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        for layer in (self.visible_bn, self.thermal_bn, self.sharable_bn):
            with tf.name_scope(layer.name):
                layer.build(input_shape)
        if self.mixed:
            self.alpha = self.add_weight(name="alpha", shape=(2,), initializer="zeros",
                                         trainable=True)
        super().build(input_shape)

    # Forward pieces -----------------------------------------------------------------------
    def _split_mixed_batch(self, inputs, training):
        batch = inputs.shape[0]
        if batch is not None:
            if batch % 2:
                raise ValueError(f"{self.name}: mode 0 needs an even batch (first half visible, "
                                 f"second half thermal), got {batch} samples.")
            half = batch // 2
        else:
            size = tf.shape(inputs)[0]
            check = tf.debugging.Assert(
                tf.equal(size % 2, 0),
                [f"{self.name}: mode 0 needs an even batch, got", size])
            with tf.control_dependencies([check]):
                half = size // 2
        visible = self.visible_bn(inputs[:half], training=training)
        thermal = self.thermal_bn(inputs[half:], training=training)
        return tf.concat([visible, thermal], axis=0)

    def _split(self, inputs, mode, static, training):
        if static == MODE_MIXED:
            return self._split_mixed_batch(inputs, training)
        if static == MODE_VISIBLE:
            return self.visible_bn(inputs, training=training)
        if static == MODE_THERMAL:
            return self.thermal_bn(inputs, training=training)
        return tf.switch_case(_dynamic_mode(mode), [
            lambda: self._split_mixed_batch(inputs, training),
            lambda: self.visible_bn(inputs, training=training),
            lambda: self.thermal_bn(inputs, training=training),
        ])

    def _share(self, inputs, training):
        return self.sharable_bn(inputs, training=training)

    def mixing_weights(self, arch_weights=None, arch_logits=None):
        """``pi`` = (pi_split, pi_share) of the mixed cell (see the class docstring)."""
        if arch_weights is not None:
            return tf.reshape(tf.cast(arch_weights, self.compute_dtype), [2])
        if arch_logits is None:
            if self.alpha is None:
                raise ValueError(f"{self.name}: not a mixed layer and no architecture weights "
                                 f"given.")
            arch_logits = self.alpha
        logits = tf.reshape(tf.cast(arch_logits, self.compute_dtype), [2])
        return tf.nn.softmax(logits / self.temperature)

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, mode=0, training=None, arch_weights=None, arch_logits=None):
        training = resolve_training(training)
        static = static_mode(mode)
        if static is None and _in_keras_shape_inference():
            # Building a functional model: only the output signature (that of the input) is
            # needed, so skip tracing the three-way tf.switch_case on the symbolic mode. The
            # real computation runs when the model is called.
            return tf.nn.relu(inputs) if self.with_relu else tf.identity(inputs)
        mixing = self.mixed or arch_weights is not None or arch_logits is not None
        if mixing:
            weights = self.mixing_weights(arch_weights, arch_logits)
            outputs = (weights[0] * self._split(inputs, mode, static, training)
                       + weights[1] * self._share(inputs, training))
        elif self.switch == SPLIT:
            outputs = self._split(inputs, mode, static, training)
        else:
            outputs = self._share(inputs, training)
        if self.with_relu:
            outputs = tf.nn.relu(outputs)
        return outputs

    def derived_switch(self):
        """The discrete choice of a mixed cell: argmax of pi, split (0) on an exact tie."""
        if self.alpha is None:
            return self.switch
        values = self.alpha.numpy()
        return SHARE if values[1] > values[0] else SPLIT

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "switch": self.switch,
            "with_relu": self.with_relu,
            "mixed": self.mixed,
            "temperature": self.temperature,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "unbiased_moving_variance": self.unbiased_moving_variance,
        })
        return config
