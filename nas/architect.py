"""The architecture step of the bilevel search: first-order (the reference) or unrolled.

An :class:`Architect` works on lists of variables and on loss *closures*, so that it serves
any search space: ``loss_fn() -> (loss, aux)`` computes a scalar loss from the current variable
values (``aux`` is whatever the space needs afterwards, e.g. the normalised features that update
a cluster memory). Every method is meant to be traced inside a ``tf.function``.

First order (msinet.md §6.3, the reference)
    ``g_α = ∇_α L_v(w, α)``. The weight gradient ``∇_w L_v(w, α)`` comes out of the same tape;
    the reference accumulates it into the weight update (its ``[quirk]``), so
    :meth:`Architect.first_order_gradients` returns it too.

Second order (``--unrolled``, DARTS, Liu et al. 2019, §2.3)
    With ``ξ`` the weight optimiser's current learning rate:

    * virtual step ``w' = w − ξ (∇_w L_t(w, α) + λ w + μ b)``: the step the weight optimiser
      would take, as DARTS does — ``λ`` is the optimiser's coupled weight decay and ``b`` its
      momentum buffer (``μ`` its momentum), read but not changed. With ``λ = μ = 0`` this is
      ``w − ξ ∇_w L_t``;
    * ``g_α = ∇_α L_v(w', α) − ξ (∇_α L_t(w⁺, α) − ∇_α L_t(w⁻, α)) / (2ε)`` with
      ``w^± = w ± ε ∇_{w'} L_v(w', α)`` and ``ε = 0.01 / ‖∇_{w'} L_v(w', α)‖`` (global norm
      over all weights, floored at 1e-12);
    * the weights and the ``state_variables`` (BN moving statistics) are restored to their
      values before the step, so the four auxiliary forward passes leave no trace: only α
      changes (when the caller applies ``g_α``). The ``aux`` returned is that of the valid loss
      at ``w'`` (the search space updates its valid memory with it); the auxiliary train
      losses do not update anything.

Variables whose train gradient is ``None`` (parameters no loss reaches, such as the search
network's untrained classifier) take no virtual step, as PyTorch's SGD skips parameters without
a gradient.
"""
import tensorflow as tf

UNROLLED_RADIUS = 0.01
_NORM_FLOOR = 1e-12


def momentum_buffer(optimizer, variable):
    """The PyTorch-style momentum buffer of ``variable`` in ``optimizer`` (or ``None``).

    Works with :class:`reid_tf.training.optimizers.TorchSGD` (``momentums``); optimisers
    without momentum buffers give ``None``.
    """
    buffers = getattr(optimizer, "momentums", None)
    if not buffers or not getattr(optimizer, "momentum", 0):
        return None
    index = optimizer._index_dict.get(optimizer._var_key(variable))  # noqa: SLF001
    if index is None:
        return None
    return buffers[index]


class Architect:
    """Computes and applies the architecture gradient (see the module docstring).

    Args:
      weight_variables: the network weights (what the weight optimiser updates).
      arch_variables: the architecture parameters (α).
      weight_optimizer: the weights' optimiser; its learning rate is ``ξ`` of the unrolled
        step, its ``momentum``/``weight_decay_l2`` (TorchSGD) enter the virtual step.
      arch_optimizer: the architecture optimiser (TorchAdam in the reference).
      unrolled: use the second-order gradient.
      state_variables: non-trainable variables changed by forward passes (BN moving
        statistics), restored after the unrolled step's auxiliary passes.
    """

    def __init__(self, weight_variables, arch_variables, weight_optimizer, arch_optimizer,
                 unrolled=False, state_variables=()):
        self.weight_variables = list(weight_variables)
        self.arch_variables = list(arch_variables)
        self.weight_optimizer = weight_optimizer
        self.arch_optimizer = arch_optimizer
        self.unrolled = bool(unrolled)
        self.state_variables = list(state_variables)

    # ------------------------------------------------------------------ first order
    def first_order_gradients(self, valid_loss_fn):
        """``(L_v, aux, ∇_α L_v, ∇_w L_v)`` at the current weights and α (one tape)."""
        with tf.GradientTape() as tape:
            loss, aux = valid_loss_fn()
        gradients = tape.gradient(loss, self.arch_variables + self.weight_variables)
        count = len(self.arch_variables)
        return loss, aux, gradients[:count], gradients[count:]

    # ------------------------------------------------------------------ second order
    def unrolled_gradients(self, train_loss_fn, valid_loss_fn):
        """``(L_v(w'), aux, g_α)`` of the second-order DARTS approximation (module docstring)."""
        weights = self.weight_variables
        saved_weights = [tf.identity(variable) for variable in weights]
        saved_state = [tf.identity(variable) for variable in self.state_variables]
        xi = tf.cast(self.weight_optimizer.learning_rate, tf.float32)

        with tf.GradientTape() as tape:
            train_loss, _ = train_loss_fn()
        train_gradients = tape.gradient(train_loss, weights)
        self._virtual_step(train_gradients, saved_weights, xi)

        with tf.GradientTape() as tape:
            valid_loss, aux = valid_loss_fn()
        gradients = tape.gradient(valid_loss, self.arch_variables + weights)
        count = len(self.arch_variables)
        arch_gradients = [self._dense(g, v) for g, v in zip(gradients[:count],
                                                             self.arch_variables)]
        valid_weight_gradients = gradients[count:]
        present = [g for g in valid_weight_gradients if g is not None]
        norm = tf.linalg.global_norm(present) if present else tf.constant(0.0)
        epsilon = UNROLLED_RADIUS / tf.maximum(norm, _NORM_FLOOR)

        plus = self._arch_gradients_at(train_loss_fn, saved_weights, valid_weight_gradients,
                                       epsilon)
        minus = self._arch_gradients_at(train_loss_fn, saved_weights, valid_weight_gradients,
                                        -epsilon)
        self._restore(saved_weights, saved_state)
        arch_gradients = [g - xi * (p - m) / (2.0 * epsilon)
                          for g, p, m in zip(arch_gradients, plus, minus)]
        return valid_loss, aux, arch_gradients

    @staticmethod
    def _dense(gradient, variable):
        if gradient is None:
            return tf.zeros_like(variable)
        return tf.convert_to_tensor(gradient)

    def _virtual_step(self, gradients, saved_weights, xi):
        optimizer = self.weight_optimizer
        decay = float(getattr(optimizer, "weight_decay_l2", 0.0) or 0.0)
        momentum = float(getattr(optimizer, "momentum", 0.0) or 0.0)
        for variable, value, gradient in zip(self.weight_variables, saved_weights, gradients):
            if gradient is None:
                continue
            direction = tf.convert_to_tensor(gradient)
            if decay:
                direction = direction + decay * value
            buffer = momentum_buffer(optimizer, variable) if momentum else None
            if buffer is not None:
                direction = direction + momentum * buffer
            variable.assign(value - xi * direction)

    def _arch_gradients_at(self, train_loss_fn, saved_weights, directions, epsilon):
        for variable, value, direction in zip(self.weight_variables, saved_weights, directions):
            if direction is None:
                variable.assign(value)
            else:
                variable.assign(value + epsilon * direction)
        with tf.GradientTape() as tape:
            loss, _ = train_loss_fn()
        gradients = tape.gradient(loss, self.arch_variables)
        return [self._dense(g, v) for g, v in zip(gradients, self.arch_variables)]

    def _restore(self, saved_weights, saved_state):
        for variable, value in zip(self.weight_variables, saved_weights):
            variable.assign(value)
        for variable, value in zip(self.state_variables, saved_state):
            variable.assign(value)

    # ------------------------------------------------------------------ apply
    def apply(self, arch_gradients):
        """One optimiser step on α with ``arch_gradients`` (``None`` entries are skipped)."""
        pairs = [(g, v) for g, v in zip(arch_gradients, self.arch_variables) if g is not None]
        if pairs:
            self.arch_optimizer.apply_gradients(pairs)
