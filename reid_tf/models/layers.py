"""Small named Keras layers used by the FlipReID models (no Python lambdas, all serialisable).

* :class:`GlobalGeMPooling2D`: generalised-mean pooling with one trainable scalar ``power``.
* :class:`ClipValues`: element-wise clipping of embeddings to ``[min_value, max_value]``.
* :class:`HeightSlice`: rows ``[start, stop)`` of an NHWC feature map (regional stripes).
* :class:`HorizontalFlip`: mirror of an NHWC image batch along the width axis.
"""
import numbers

import tensorflow as tf
import tf_keras as keras

GEM_THRESHOLD = 1e-6


class GlobalGeMPooling2D(keras.layers.Layer):
    """Generalised-mean (GeM) pooling over height and width of an NHWC tensor.

    ``y[b, c] = (mean_{h,w} max(x[b, h, w, c], 1e-6) ** p) ** (1 / p)`` with one scalar weight
    ``p`` (named ``power``) per layer, initialised to ``initial_power`` and trained when
    ``trainable_power`` is true (no constraint). With ``p = 1`` it is average pooling of the
    clamped map, so outputs are never below ``1e-6``.
    """

    def __init__(self, initial_power=1.0, trainable_power=True, **kwargs):
        super().__init__(**kwargs)
        self.initial_power = float(initial_power)
        self.trainable_power = bool(trainable_power)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.power = self.add_weight(
            name="power",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_power),
            trainable=self.trainable_power,
        )
        super().build(input_shape)

    def call(self, inputs):
        power = tf.cast(self.power, inputs.dtype)
        clamped = tf.maximum(inputs, tf.cast(GEM_THRESHOLD, inputs.dtype))
        mean = tf.reduce_mean(tf.pow(clamped, power), axis=[1, 2])
        return tf.pow(mean, 1.0 / power)

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape).as_list()
        return tf.TensorShape([input_shape[0], input_shape[3]])

    def get_config(self):
        config = super().get_config()
        config.update({"initial_power": self.initial_power,
                       "trainable_power": self.trainable_power})
        return config


class ClipValues(keras.layers.Layer):
    """Element-wise clipping to ``[min_value, max_value]`` (``tf.clip_by_value``)."""

    def __init__(self, min_value=0.0, max_value=1.0, **kwargs):
        super().__init__(**kwargs)
        min_value, max_value = float(min_value), float(max_value)
        if min_value > max_value:
            raise ValueError(
                f"ClipValues: min_value ({min_value}) must not exceed max_value ({max_value}) "
                "(flags --min_value / --max_value).")
        self.min_value = min_value
        self.max_value = max_value

    def call(self, inputs):
        return tf.clip_by_value(inputs, tf.cast(self.min_value, inputs.dtype),
                                tf.cast(self.max_value, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"min_value": self.min_value, "max_value": self.max_value})
        return config


class HeightSlice(keras.layers.Layer):
    """Rows ``[start, stop)`` of an NHWC tensor (a horizontal stripe)."""

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        start, stop = int(start), int(stop)
        if not 0 <= start < stop:
            raise ValueError(f"HeightSlice: need 0 <= start < stop, got start={start}, "
                             f"stop={stop}.")
        self.start = start
        self.stop = stop
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        height = tf.TensorShape(input_shape)[1]
        if height is not None and self.stop > height:
            raise ValueError(f"HeightSlice {self.name!r}: stop={self.stop} exceeds the input "
                             f"height {height}.")
        super().build(input_shape)

    def call(self, inputs):
        return inputs[:, self.start:self.stop]

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        shape[1] = self.stop - self.start
        return tf.TensorShape(shape)

    def get_config(self):
        config = super().get_config()
        config.update({"start": self.start, "stop": self.stop})
        return config


class HorizontalFlip(keras.layers.Layer):
    """Mirror an NHWC batch along the width axis (``tf.reverse`` on axis 2)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        return tf.reverse(inputs, axis=[2])

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)


def check_model_arguments(num_classes, input_shape, min_size, reason):
    """Validate a builder's ``num_classes`` and ``(height, width, 3)`` ``input_shape``.

    Returns ``(int(num_classes), tuple(input_shape))``; raises ``ValueError`` naming the value
    (and the flags that set the image size) otherwise. ``min_size`` is the smallest height
    and width the network accepts, ``reason`` says why (e.g. "the network downsamples by 16").
    """
    if (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape} "
                         "(flags --image_height/--image_width).")
    for size in input_shape[:2]:
        if size is not None and size < min_size:
            raise ValueError(f"input_shape {input_shape}: height and width must be at least "
                             f"{min_size} ({reason}; flags --image_height/--image_width).")
    return int(num_classes), input_shape


def custom_objects():
    """Classes to pass as ``custom_objects`` when deserialising models that use these layers."""
    return {cls.__name__: cls for cls in (GlobalGeMPooling2D, ClipValues, HeightSlice,
                                          HorizontalFlip)}
