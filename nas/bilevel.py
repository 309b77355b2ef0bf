"""The per-iteration updates of the search (msinet.md §6.3) as traced functions.

Per iteration ``n`` of an epoch, with the train batch and the valid batch (drawn on every
iteration, also when unused):

* default (the reference, quirks included): for ``n > 0`` an architecture step on the valid
  batch (``∇_α L_v(w, α)``, valid memory updated, Adam step on α), then a weight step whose
  SGD update uses ``∇_w L_v(w, α_before) + ∇_w L_t(w, α_after)`` (train memory updated); for
  ``n = 0`` the weight step alone with ``∇_w L_t``. α's gradient from ``L_t`` is never used.
* ``clean_bilevel``: the architecture step on every iteration and a weight update with
  ``∇_w L_t`` only.
* ``unrolled``: the architecture gradient is the second-order DARTS one
  (:mod:`nas.architect`); the weight update then uses ``∇_w L_t`` only (the validation loss is
  evaluated at the virtual weights, so there is no ``∇_w L_v(w, α)`` to accumulate), and the
  first iteration of each epoch is skipped unless ``clean_bilevel``.

The iteration with an architecture step and the weight-only iteration are one ``tf.function``
each (gradient tapes inside), each traced once for the whole search; without the accumulated
valid gradient the former is the architecture step's function followed by the weight step's.

Distribution: each replica receives ``P / R`` whole identities of every train and valid batch
and back-propagates its share ``L / R`` of the batch mean (the memory losses are per sample, so
the replicas' shares add up to the one-device loss); the optimisers sum the replicas'
gradients and the reported values are summed shares (:func:`reid_tf.training.engine.
on_replicas`). The second-order step needs one replica, and a search space runs on several
replicas only if it says so (``supports_replicas``).
"""
import tensorflow as tf

from nas.architect import Architect
from reid_tf.runtime import distribute
from reid_tf.training.engine import check_jit_compile, on_replicas


def _add_gradients(first, second):
    total = []
    for a, b in zip(first, second):
        if a is None:
            total.append(b)
        elif b is None:
            total.append(a)
        else:
            total.append(a + b)
    return total


class BilevelStep:
    """The per-iteration updates of the search as ``tf.function`` s (module docstring).

    * ``full_step(train_images, train_labels, valid_images, valid_labels)``: the architecture
      step on the valid batch, then the weight step on the train batch; with
      ``accumulate_valid_gradients`` (the reference; first order only) the weight update adds
      the architecture step's ``∇_w L_v``;
    * ``weight_step(train_images, train_labels)``: the weight update alone (``∇_w L_t``), the
      first iteration of an epoch in the reference;
    * ``architecture_step(train_images, train_labels, valid_images, valid_labels)``: the
      architecture update alone (the train batch is only used by the unrolled gradient).

    Each is traced once and returns a dict of scalar tensors; calling the object runs
    ``full_step`` or ``weight_step``. Under a ``strategy`` other than the default one the
    batches are per-replica values, each step runs on every replica (``strategy.run``) and the
    returned values are the global ones.
    """

    def __init__(self, space, weight_optimizer, arch_optimizer, accumulate_valid_gradients=True,
                 unrolled=False, jit_compile=False, strategy=None):
        self.space = space
        self.weight_optimizer = weight_optimizer
        self.unrolled = bool(unrolled)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.distributed = distribute.is_distributed(self.strategy)
        self.replicas = distribute.num_replicas(self.strategy)
        if self.replicas > 1 and self.unrolled:
            raise ValueError(f"--unrolled needs one replica, --strategy gives {self.replicas} "
                             "(the virtual weight step is not distributed); drop --unrolled or "
                             "use --strategy=default.")
        if self.replicas > 1 and not space.supports_replicas:
            raise ValueError(f"--search_space={space.name} runs on one replica only, "
                             f"--strategy gives {self.replicas}; use --strategy=default.")
        check_jit_compile(jit_compile, self.strategy)
        self.accumulate = bool(accumulate_valid_gradients) and not self.unrolled
        self.architect = Architect(space.weight_variables, space.arch_variables,
                                   weight_optimizer, arch_optimizer, unrolled=unrolled,
                                   state_variables=space.state_variables)
        # No tensor-dependent Python control flow in the steps: autograph is not needed.
        options = {"jit_compile": bool(jit_compile), "reduce_retracing": True,
                   "autograph": False}
        self.full_step = tf.function(self._on_replicas(self._full_step), **options)
        self.weight_step = tf.function(self._on_replicas(self._weight_step), **options)
        self.architecture_step = tf.function(self._on_replicas(self._architecture_step),
                                             **options)

    def _on_replicas(self, step):
        """``step`` itself, or under a strategy: ``step`` on every replica with the values
        summed (each replica returns its share of the global value, see :meth:`_share`)."""
        return on_replicas(self.strategy, step, "sum")

    def _share(self, result):
        """A replica's share ``(L / R, aux)`` of a space loss ``(L, aux)`` (``aux["accuracy"]``
        likewise): summed over the replicas it is the global batch mean."""
        if self.replicas == 1:
            return result
        loss, aux = result
        aux = dict(aux)
        if "accuracy" in aux:
            aux["accuracy"] = aux["accuracy"] / self.replicas
        return loss / self.replicas, aux

    # Building blocks (traced inside the tf.functions)
    def _architecture_update(self, train_images, train_labels, valid_images, valid_labels):
        """The architecture step; returns ``(L_v, ∇_w L_v or None)``."""
        space = self.space
        weight_gradients = None
        if self.unrolled:
            loss, aux, arch_gradients = self.architect.unrolled_gradients(
                lambda: space.train_loss(train_images, train_labels),
                lambda: space.valid_loss(valid_images, valid_labels))
        else:
            loss, aux, arch_gradients, weight_gradients = self.architect.first_order_gradients(
                lambda: self._share(space.valid_loss(valid_images, valid_labels)))
        space.commit_valid(aux)
        self.architect.apply(arch_gradients)
        return loss, weight_gradients

    def _weight_update(self, images, labels, extra_gradients=None):
        space = self.space
        variables = space.weight_variables
        with tf.GradientTape() as tape:
            loss, aux = self._share(space.train_loss(images, labels))
        gradients = tape.gradient(loss, variables)
        if extra_gradients is not None:
            gradients = _add_gradients(gradients, extra_gradients)
        space.commit_train(aux)
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        self.weight_optimizer.apply_gradients(pairs)
        return loss, aux

    # The tf.functions
    def _weight_step(self, train_images, train_labels):
        loss, aux = self._weight_update(train_images, train_labels)
        return {"loss": loss, "accuracy": aux["accuracy"]}

    def _architecture_step(self, train_images, train_labels, valid_images, valid_labels):
        loss, _ = self._architecture_update(train_images, train_labels, valid_images,
                                            valid_labels)
        return {"valid_loss": loss}

    def _full_step(self, train_images, train_labels, valid_images, valid_labels):
        valid_loss, valid_gradients = self._architecture_update(
            train_images, train_labels, valid_images, valid_labels)
        extra = valid_gradients if self.accumulate else None
        loss, aux = self._weight_update(train_images, train_labels, extra)
        return {"loss": loss, "accuracy": aux["accuracy"], "valid_loss": valid_loss}

    def __call__(self, train_images, train_labels, valid_images, valid_labels,
                 architecture_update=True):
        """One iteration: ``full_step`` or, without ``architecture_update``, ``weight_step``.

        Without the accumulated valid gradient (``clean_bilevel``, ``unrolled``) the full step
        is exactly ``architecture_step`` followed by ``weight_step``, and runs as those two
        functions: the weight-only iterations reuse the same trace (two traces in all).
        """
        if not architecture_update:
            return self.weight_step(train_images, train_labels)
        if self.accumulate:
            return self.full_step(train_images, train_labels, valid_images, valid_labels)
        values = dict(self.architecture_step(train_images, train_labels, valid_images,
                                             valid_labels))
        values.update(self.weight_step(train_images, train_labels))
        return values
