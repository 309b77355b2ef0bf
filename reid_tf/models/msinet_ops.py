"""MSINet building blocks: initialisers, basic conv layers and the four interaction operations.

Everything here follows ``/work/shared/spec/msinet.md`` §1, §2, §4.4 and §13 (channels-last).
Both the final MSINet (:mod:`reid_tf.models.msinet`) and the architecture-search network use
these layers, so there is exactly one implementation of every operation.

Interaction operations are Keras layers that take the pair ``(a, b)`` (a list or tuple of two
``(B, H, W, C)`` tensors) and return the pair ``[a', b']``:

* ``none``      :class:`InteractionIdentity` — ``(a, b)``;
* ``exc``       :class:`InteractionExchange` — ``(b, a)``;
* ``ag``        :class:`ChannelGate` — ``(a * g(a), b * g(b))`` with one shared gate ``g``;
* ``cross_att`` :class:`CrossAttention` — channel attention whose key is the other branch.

They can be used on their own in a functional model or called inside another layer (for
example a softmax-weighted mixture of all four in the search network): ``op([a, b])``.

Batch normalisation is never created directly by the network builders: they call a
``bn_factory(name, frozen_beta=False)`` that returns a callable mapping one tensor to one
tensor. :func:`default_batch_norm` is plain Keras BN with the PyTorch hyper-parameters; a
switchable BN (CM-NAS) can be plugged in by passing another factory.
"""
import math

import tensorflow as tf
import tf_keras as keras

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
GATE_REDUCTION = 16
LINEAR_STDDEV = 0.01

# Names accepted in a genotype, in the order of the reference OPS table.
OP_NAMES = ("none", "exc", "ag", "cross_att")
# Order of the operations in the search space (rows of the architecture parameters alpha).
PRIMITIVES = ("none", "ag", "cross_att", "exc")


# --------------------------------------------------------------------------------------------
# Initialisers (§4.4)
# --------------------------------------------------------------------------------------------
def conv_kernel_initializer(seed=None):
    """Kaiming normal, fan_out, gain sqrt(2), untruncated: ``std = sqrt(2 / (kh*kw*out))``.

    Matches PyTorch's ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` for regular
    convolutions (Keras kernels ``(kh, kw, in, out)``) and for 2-D ``(in, out)`` kernels of 1x1
    convolutions stored as matrices.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal", seed=seed)


@keras.utils.register_keras_serializable(package="reid_tf")
class DepthwiseKaimingNormal(keras.initializers.Initializer):
    """Kaiming fan_out normal for a depthwise kernel ``(kh, kw, C, multiplier)``.

    PyTorch counts ``fan_out = out_channels * kh * kw`` without dividing by the groups, so a
    depthwise 3x3 conv with C channels gets ``std = sqrt(2 / (9 * C))``. (Keras's own
    ``VarianceScaling`` would use ``kh * kw * multiplier`` here, which is wrong.)
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None, **kwargs):
        if len(shape) != 4:
            raise ValueError(f"DepthwiseKaimingNormal expects a 4-D depthwise kernel shape "
                             f"(kh, kw, channels, multiplier), got {tuple(shape)}.")
        fan_out = int(shape[0]) * int(shape[1]) * int(shape[2]) * int(shape[3])
        stddev = math.sqrt(2.0 / fan_out)
        dtype = tf.as_dtype(dtype or keras.backend.floatx())
        if self.seed is None:
            return tf.random.normal(shape, 0.0, stddev, dtype=dtype)
        return tf.random.stateless_normal(shape, seed=[self.seed, 0], mean=0.0, stddev=stddev,
                                          dtype=dtype)

    def get_config(self):
        return {"seed": self.seed}


def linear_kernel_initializer(seed=None):
    """``Normal(0, 0.01)`` for the Linear layers (fc, f_fc, classifier, f_classifier)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=LINEAR_STDDEV, seed=seed)


# --------------------------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="reid_tf")
class TorchStatisticsBatchNormalization(keras.layers.BatchNormalization):
    """Keras batch normalisation whose moving variance follows PyTorch on every code path.

    PyTorch updates ``running_var`` with the *unbiased* batch variance (``n / (n - 1)`` times
    the biased one, ``n`` the number of values per channel) and normalises with the biased one.
    Keras's fused kernel (4-D inputs, float32/16-bit) already does the same; its non-fused path
    (2-D inputs such as MSINet's BN1d heads, float64) updates with the biased variance. This
    layer corrects that path, so both agree with ``torch.nn.BatchNorm{1,2}d``. The weights,
    names and the fused path are those of ``keras.layers.BatchNormalization``.
    """

    _values_per_channel = None

    def call(self, inputs, training=None, mask=None):  # noqa: D102 (Keras API)
        self._values_per_channel = tf.reduce_prod(tf.shape(inputs)[:-1])
        return super().call(inputs, training=training, mask=mask)

    def _assign_moving_average(self, variable, value, momentum, inputs_size):
        if not self.fused and variable is self.moving_variance \
                and self._values_per_channel is not None:
            count = tf.cast(self._values_per_channel, value.dtype)
            value = value * count / tf.maximum(count - 1.0, 1.0)
        return super()._assign_moving_average(variable, value, momentum, inputs_size)


@keras.utils.register_keras_serializable(package="reid_tf")
class FrozenBetaBatchNormalization(TorchStatisticsBatchNormalization):
    """Batch normalisation whose shift β exists but is not trainable (stays at its value, 0).

    Used for the two BN1d heads (BNNeck) of MSINet, whose PyTorch bias has
    ``requires_grad=False``: β is still a weight of the layer, so it is counted, saved and
    converted, but it is not in ``trainable_weights``.
    """

    def add_weight(self, *args, **kwargs):  # noqa: D102 (Keras API)
        name = kwargs.get("name", args[0] if args else None)
        if name == "beta":
            kwargs["trainable"] = False
        return super().add_weight(*args, **kwargs)


def default_batch_norm(name, frozen_beta=False):
    """Default BN factory: Keras BN with PyTorch hyper-parameters (momentum 0.9, epsilon 1e-5)
    and PyTorch's moving-variance update (:class:`TorchStatisticsBatchNormalization`).

    Args:
      name: layer name (e.g. ``"cells_0_conv1a_bn"``).
      frozen_beta: give the layer a non-trainable β (the MSINet heads).

    Returns:
      A Keras layer (callable on one tensor, channels-last, normalising the last axis).

    Any replacement factory must accept the same arguments and return a callable mapping one
    tensor to one tensor (it may be a closure over extra inputs, e.g. a modality switch).
    """
    layer_class = FrozenBetaBatchNormalization if frozen_beta else TorchStatisticsBatchNormalization
    return layer_class(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


# --------------------------------------------------------------------------------------------
# Pointwise convolution
# --------------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="reid_tf")
class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1, stride-1 ``Conv2D`` (same weights, names and results) that trains as a matmul.

    In training mode the convolution is computed as ``reshape(x, (-1, Cin)) @ kernel`` (then
    bias and activation as ``Conv2D``): oneDNN's matmul backward (weight gradient
    ``X^T dY``) is cheaper than its 1x1 ``Conv2DBackpropFilter``, most of all in bfloat16
    (benchmarks/NOTES.md). In inference mode it stays a ``Conv2D`` so that TensorFlow's
    remapper can fold the following inference-mode batch norm and ReLU into the convolution.
    The kernel keeps the ``Conv2D`` layout ``(1, 1, Cin, Cout)``, so checkpoints, converters
    and ``isinstance(layer, keras.layers.Conv2D)`` see an ordinary convolution.
    """

    def __init__(self, filters, kernel_size=1, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        checks = {"kernel_size": (self.kernel_size, (1, 1)), "strides": (self.strides, (1, 1)),
                  "dilation_rate": (self.dilation_rate, (1, 1)), "groups": (self.groups, 1),
                  "data_format": (self.data_format, "channels_last")}
        for argument, (value, expected) in checks.items():
            if value != expected:
                raise ValueError(f"PointwiseConv2D {self.name}: {argument} must be "
                                 f"{expected!r}, got {value!r}.")

    def call(self, inputs, training=None):
        if training is not None and not isinstance(training, bool):
            training = tf.get_static_value(training)
        if not training:
            return super().call(inputs)
        channels = self.kernel.shape[-2]
        shape = tf.shape(inputs)
        outputs = tf.matmul(tf.reshape(inputs, [-1, channels]),
                            tf.reshape(self.kernel, [channels, self.filters]))
        outputs = tf.reshape(outputs, tf.concat([shape[:-1], [self.filters]], axis=0))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


# --------------------------------------------------------------------------------------------
# Basic layers (§1). Each function builds named layers and applies them to x.
# --------------------------------------------------------------------------------------------
def conv_layer(x, filters, kernel_size, strides, padding, name, bn_factory=default_batch_norm):
    """ConvLayer (stem): symmetric ``ZeroPadding2D(padding)`` → valid conv → BN → ReLU.

    Layers: ``{name}_pad``, ``{name}_conv``, ``{name}_bn``, ``{name}_relu``.
    """
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="valid",
                            use_bias=False, kernel_initializer=conv_kernel_initializer(),
                            name=f"{name}_conv")(x)
    x = bn_factory(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def conv1x1(x, filters, name, bn_factory=default_batch_norm, activation=True):
    """Conv1x1 (conv → BN → ReLU) or, with ``activation=False``, Conv1x1Linear (conv → BN).

    Layers: ``{name}_conv``, ``{name}_bn`` and, with activation, ``{name}_relu``.
    """
    x = PointwiseConv2D(filters, 1, use_bias=False,
                        kernel_initializer=conv_kernel_initializer(),
                        name=f"{name}_conv")(x)
    x = bn_factory(f"{name}_bn")(x)
    if activation:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def conv1x1_linear(x, filters, name, bn_factory=default_batch_norm):
    """Conv1x1Linear: 1x1 conv → BN, no activation (fusion and projection shortcut)."""
    return conv1x1(x, filters, name, bn_factory=bn_factory, activation=False)


def light_conv3x3(x, filters, name, bn_factory=default_batch_norm):
    """LightConv3x3: 1x1 conv → depthwise 3x3 conv (pad 1) → BN → ReLU, no bias anywhere.

    There is no BN or activation between the two convolutions. Layers: ``{name}_conv1``
    (Conv2D), ``{name}_conv2`` (DepthwiseConv2D), ``{name}_bn``, ``{name}_relu``.
    """
    x = PointwiseConv2D(filters, 1, use_bias=False,
                        kernel_initializer=conv_kernel_initializer(),
                        name=f"{name}_conv1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                     depthwise_initializer=DepthwiseKaimingNormal(),
                                     name=f"{name}_conv2")(x)
    x = bn_factory(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


# --------------------------------------------------------------------------------------------
# Interaction operations (§2)
# --------------------------------------------------------------------------------------------
def _split_pair(inputs, layer_name):
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
        raise ValueError(f"Layer {layer_name} expects the pair [a, b] of branch tensors, got "
                         f"{type(inputs).__name__} of length "
                         f"{len(inputs) if isinstance(inputs, (list, tuple)) else 1}.")
    return inputs[0], inputs[1]


@keras.utils.register_keras_serializable(package="reid_tf")
class InteractionIdentity(keras.layers.Layer):
    """``none``: returns the pair unchanged (not a zero op). No parameters."""

    def call(self, inputs):
        a, b = _split_pair(inputs, self.name)
        return [tf.identity(a), tf.identity(b)]


@keras.utils.register_keras_serializable(package="reid_tf")
class InteractionExchange(keras.layers.Layer):
    """``exc``: the two branches swap features, ``(a, b) -> (b, a)``. No parameters."""

    def call(self, inputs):
        a, b = _split_pair(inputs, self.name)
        return [tf.identity(b), tf.identity(a)]


@keras.utils.register_keras_serializable(package="reid_tf")
class ChannelGate(keras.layers.Layer):
    """``ag``: one channel gate shared by both branches, ``x' = x * g(x)`` for x in (a, b).

    ``g(x) = sigmoid(W2 relu(W1 GAP(x) + b1) + b2)`` with hidden width ``C // reduction``
    (both 1x1 convs with bias). The weights are stored as matrices: ``fc1_kernel (C, C//16)``,
    ``fc1_bias``, ``fc2_kernel (C//16, C)``, ``fc2_bias``; they are the reference's
    ``fc1.weight[:, :, 0, 0].T`` etc. Kernels are initialised Kaiming fan_out (PyTorch:
    ``fan_out`` = output channels of each 1x1 conv), biases 0.
    """

    def __init__(self, reduction=GATE_REDUCTION, **kwargs):
        super().__init__(**kwargs)
        self.reduction = int(reduction)

    def build(self, input_shape):
        channels = input_shape[0][-1]
        if channels is None:
            raise ValueError(f"ChannelGate {self.name}: the channel dimension must be known.")
        channels = int(channels)
        hidden = channels // self.reduction
        if hidden < 1:
            raise ValueError(f"ChannelGate {self.name}: {channels} channels // reduction "
                             f"{self.reduction} leaves no hidden unit.")
        if input_shape[1][-1] is not None and int(input_shape[1][-1]) != channels:
            raise ValueError(f"ChannelGate {self.name}: both branches need the same channels, "
                             f"got {channels} and {input_shape[1][-1]}.")
        self.channels, self.hidden = channels, hidden
        self.fc1_kernel = self.add_weight(name="fc1_kernel", shape=(channels, hidden),
                                          initializer=conv_kernel_initializer())
        self.fc1_bias = self.add_weight(name="fc1_bias", shape=(hidden,), initializer="zeros")
        self.fc2_kernel = self.add_weight(name="fc2_kernel", shape=(hidden, channels),
                                          initializer=conv_kernel_initializer())
        self.fc2_bias = self.add_weight(name="fc2_bias", shape=(channels,), initializer="zeros")
        super().build(input_shape)

    def gate(self, x):
        """The gate values ``g(x)``, shape ``(B, 1, 1, C)``."""
        pooled = tf.reduce_mean(x, axis=[1, 2])
        hidden = tf.nn.relu(tf.matmul(pooled, self.fc1_kernel) + self.fc1_bias)
        gates = tf.sigmoid(tf.matmul(hidden, self.fc2_kernel) + self.fc2_bias)
        return gates[:, tf.newaxis, tf.newaxis, :]

    def call(self, inputs, gates_only=False):
        """``[a * g(a), b * g(b)]``; ``gates_only=True`` returns ``[g(a), g(b)]`` instead
        (``(B, 1, 1, C)`` each, for callers that fold the gate into other products)."""
        a, b = _split_pair(inputs, self.name)
        if gates_only:
            return [self.gate(a), self.gate(b)]
        return [a * self.gate(a), b * self.gate(b)]

    def get_config(self):
        config = super().get_config()
        config["reduction"] = self.reduction
        return config


@keras.utils.register_keras_serializable(package="reid_tf")
class CrossAttention(keras.layers.Layer):
    """``cross_att``: channel attention with the key taken from the other branch (§2.2).

    With ``A, Bm`` the branches reshaped to ``(B, N, C)``:
    ``E_a[c, d] = sum_n A[n, c] Bm[n, d]``, ``E_b = E_a^T``;
    ``Att = softmax(rowmax(E) - E)`` over the last axis;
    ``a' = gamma * (Att_a applied to A) + a`` and ``b' = gamma * (Att_b applied to Bm) + b``.
    The values come from each branch's own tensor. ``gamma`` (shape ``(1,)``, shared by both
    outputs) starts at 0, so the op is the identity at initialisation.
    """

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(1,), initializer="zeros")
        super().build(input_shape)

    @staticmethod
    def _attend(energy, values):
        energy = tf.reduce_max(energy, axis=-1, keepdims=True) - energy
        attention = tf.nn.softmax(energy, axis=-1)
        # out[n, c] = sum_d Att[c, d] * values[n, d]: values (B, N, C) @ Att^T. A batched
        # matmul with a transpose flag is the same product as einsum("bcd,bnd->bnc") but
        # about twice as fast on CPU (einsum materialises transposes; benchmarks/NOTES.md).
        return tf.matmul(values, attention, transpose_b=True)

    def attention_outputs(self, a, b):
        """``(out_a, out_b)``: the attended tensors before ``gamma`` and the residual."""
        shape = tf.shape(a)
        batch, channels = shape[0], shape[3]
        flat_a = tf.reshape(a, [batch, -1, channels])
        flat_b = tf.reshape(b, [batch, -1, channels])
        # E_a[c, d] = sum_n A[n, c] Bm[n, d] = A^T Bm (einsum "bnc,bnd->bcd").
        energy_a = tf.matmul(flat_a, flat_b, transpose_a=True)
        energy_b = tf.transpose(energy_a, [0, 2, 1])
        out_a = tf.reshape(self._attend(energy_a, flat_a), shape)
        out_b = tf.reshape(self._attend(energy_b, flat_b), shape)
        return out_a, out_b

    def call(self, inputs, attention_only=False):
        """``[gamma * out_a + a, gamma * out_b + b]``; ``attention_only=True`` returns
        ``[out_a, out_b]`` (before ``gamma`` and the residual) instead."""
        a, b = _split_pair(inputs, self.name)
        out_a, out_b = self.attention_outputs(a, b)
        if attention_only:
            return [out_a, out_b]
        gamma = tf.cast(self.gamma, a.dtype)
        return [gamma * out_a + a, gamma * out_b + b]


OP_CLASSES = {
    "none": InteractionIdentity,
    "exc": InteractionExchange,
    "ag": ChannelGate,
    "cross_att": CrossAttention,
}


def make_operation(op_name, name):
    """A new interaction-operation layer for ``op_name`` (one of :data:`OP_NAMES`)."""
    if op_name not in OP_CLASSES:
        raise ValueError(f"Unknown MSINet interaction operation {op_name!r} for layer {name}; "
                         f"allowed: {', '.join(OP_NAMES)}.")
    return OP_CLASSES[op_name](name=name)
