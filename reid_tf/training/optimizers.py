"""Optimisers with PyTorch semantics (coupled L2 weight decay, PyTorch momentum buffer).

* :class:`TorchSGD` — ``buf = momentum * buf + (g + wd * w)``; ``w -= lr * buf`` (msinet.md
  §9.4: the buffer holds gradients without the learning rate, so an lr change acts at once).
* :class:`TorchAdam` — PyTorch ``Adam`` with ``weight_decay`` added to the gradient (the coupled
  form CM-NAS and the MSINet architecture optimiser use), epsilon added after the bias-corrected
  square root.
* FlipReID uses Keras ``Adam`` (beta 0.9/0.999, epsilon 1e-7) and explicit L2 penalties.

They are tf-keras optimisers, so ``tf.distribute`` strategies, checkpoints and loss scaling work
as with the built-in ones.
"""
import tensorflow as tf
import tf_keras as keras

from reid_tf.runtime.choices import OPTIMIZERS


def _hyper(value, dtype):
    """A Python-number hyper-parameter in ``dtype``. ``tf.cast(0.9, tf.float64)`` would round it
    through float32 first (0.8999999762), so float64 training would not be float64."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype=dtype)
    return tf.cast(value, dtype)


class TorchSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch's momentum buffer and coupled (L2) weight decay; no dampening."""

    def __init__(self, learning_rate=0.01, momentum=0.9, weight_decay_l2=0.0, nesterov=False,
                 name="TorchSGD", **kwargs):
        kwargs.setdefault("jit_compile", False)
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.momentum = momentum
        self.weight_decay_l2 = weight_decay_l2
        self.nesterov = nesterov

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self.momentums = [self.add_variable_from_reference(variable, "buf")
                          for variable in var_list]
        self._built = True

    def update_step(self, gradient, variable):
        lr = tf.cast(self.learning_rate, variable.dtype)
        gradient = tf.convert_to_tensor(gradient)
        if self.weight_decay_l2:
            gradient = gradient + _hyper(self.weight_decay_l2, variable.dtype) * variable
        if self.momentum:
            buf = self.momentums[self._index_dict[self._var_key(variable)]]
            momentum = _hyper(self.momentum, variable.dtype)
            buf.assign(momentum * buf + gradient)
            step = gradient + momentum * buf if self.nesterov else buf
        else:
            step = gradient
        variable.assign_sub(lr * step)

    def get_config(self):
        config = super().get_config()
        config.update({"learning_rate": self._serialize_hyperparameter(self._learning_rate),
                       "momentum": self.momentum, "weight_decay_l2": self.weight_decay_l2,
                       "nesterov": self.nesterov})
        return config


class TorchAdam(keras.optimizers.Optimizer):
    """Adam as PyTorch computes it, with coupled (L2) weight decay added to the gradient."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay_l2=0.0, name="TorchAdam", **kwargs):
        kwargs.setdefault("jit_compile", False)
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.weight_decay_l2 = weight_decay_l2

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self.first_moments = [self.add_variable_from_reference(variable, "m")
                              for variable in var_list]
        self.second_moments = [self.add_variable_from_reference(variable, "v")
                               for variable in var_list]
        self._built = True

    def update_step(self, gradient, variable):
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = _hyper(self.beta_1, dtype)
        beta_2 = _hyper(self.beta_2, dtype)
        gradient = tf.convert_to_tensor(gradient)
        if self.weight_decay_l2:
            gradient = gradient + _hyper(self.weight_decay_l2, dtype) * variable
        index = self._index_dict[self._var_key(variable)]
        m = self.first_moments[index]
        v = self.second_moments[index]
        m.assign(beta_1 * m + (1.0 - beta_1) * gradient)
        v.assign(beta_2 * v + (1.0 - beta_2) * tf.square(gradient))
        bias_correction_1 = 1.0 - tf.pow(beta_1, step)
        bias_correction_2 = 1.0 - tf.pow(beta_2, step)
        denominator = tf.sqrt(v) / tf.sqrt(bias_correction_2) + _hyper(self.epsilon, dtype)
        variable.assign_sub(lr / bias_correction_1 * m / denominator)

    def get_config(self):
        config = super().get_config()
        config.update({"learning_rate": self._serialize_hyperparameter(self._learning_rate),
                       "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "weight_decay_l2": self.weight_decay_l2})
        return config


def build_optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0, beta_1=0.9,
                    beta_2=0.999, epsilon=None, jit_compile=False):
    """Optimiser for ``--optimizer_name``: ``adam`` (Keras Adam, FlipReID), ``sgd``
    (:class:`TorchSGD`) or ``torch_adam`` (:class:`TorchAdam`). ``weight_decay`` is the coupled
    L2 factor added to the gradients (rejected for ``adam``, whose recipe uses explicit
    penalties)."""
    if name == "adam":
        if weight_decay:
            raise ValueError("--weight_decay needs --optimizer_name sgd or torch_adam (coupled "
                             "L2); FlipReID's Adam uses the *_regularization_factor flags.")
        return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                                     epsilon=1e-7 if epsilon is None else epsilon,
                                     jit_compile=jit_compile)
    if name == "sgd":
        return TorchSGD(learning_rate=learning_rate, momentum=momentum,
                        weight_decay_l2=weight_decay, jit_compile=jit_compile)
    if name == "torch_adam":
        return TorchAdam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=1e-8 if epsilon is None else epsilon,
                         weight_decay_l2=weight_decay, jit_compile=jit_compile)
    raise ValueError(f"Unknown --optimizer_name {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
