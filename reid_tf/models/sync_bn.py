"""Synchronised batch normalisation: every BN layer of a model computes its training statistics
over the global batch of all replicas in sync (``--strategy`` with several replicas).

:func:`synchronize_batch_normalization` swaps the class of every Keras ``BatchNormalization``
(FlipReID's tf2cv backbones and heads, MSINet, the search network) and every
:class:`~reid_tf.models.switchable_bn.TorchBatchNormalization` (CM-NAS, the switchable MSINet)
for a cross-replica subclass of its own class (same variables, names and weights files). The
statistics come from :func:`reid_tf.runtime.distribute.cross_replica_moments`: one all-reduce
of the sums, squared sums and counts per layer and pass. The moving statistics are then
identical on every replica and equal the one-device ones (Keras BNs that used the fused kernel
and MSINet's :class:`~reid_tf.models.msinet_ops.TorchStatisticsBatchNormalization` keep their
unbiased moving variance, with the global count), and reads outside a replica take the first copy instead of
averaging the copies.
"""
import tensorflow as tf
import tf_keras as keras

from reid_tf.models.base import iter_layers
from reid_tf.models.msinet_ops import TorchStatisticsBatchNormalization
from reid_tf.models.switchable_bn import TorchBatchNormalization, resolve_training
from reid_tf.runtime.distribute import DistributionError, cross_replica_moments


class _CrossReplicaKerasBatchNormalization:
    """Mixin for ``keras.layers.BatchNormalization`` subclasses: global-batch statistics.

    Replaces the statistics of the (non-fused) training path by :func:`cross_replica_moments`;
    a layer that used the fused kernel, and every
    :class:`~reid_tf.models.msinet_ops.TorchStatisticsBatchNormalization` (MSINet: PyTorch's
    update on every path), keeps its unbiased moving-variance update (factor ``n / (n - 1)``
    with ``n`` the global number of values per channel), applied here once.
    """

    _reid_unbiased_moving_variance = False
    _reid_sample_count = None

    def _calculate_mean_and_var(self, inputs, reduction_axes, keep_dims, mask=None):
        if mask is not None:
            return super()._calculate_mean_and_var(inputs, reduction_axes, keep_dims, mask)
        mean, variance, count = cross_replica_moments(inputs, reduction_axes, keep_dims,
                                                      shift=self.moving_mean)
        self._reid_sample_count = count
        if isinstance(self, TorchStatisticsBatchNormalization):
            # Its own correction would use this replica's count (and, for a formerly fused
            # layer, come on top of the one in _assign_moving_average): turned off here.
            self._values_per_channel = None
        return mean, variance

    def _assign_moving_average(self, variable, value, momentum, inputs_size):
        count = self._reid_sample_count
        if self._reid_unbiased_moving_variance and count is not None \
                and variable is self.moving_variance:
            count = tf.cast(count, value.dtype)
            value = value * count / tf.maximum(count - 1.0, 1.0)
            self._reid_sample_count = None
        return super()._assign_moving_average(variable, value, momentum, inputs_size)


class _CrossReplicaTorchBatchNormalization:
    """Mixin for :class:`~reid_tf.models.switchable_bn.TorchBatchNormalization`: training
    statistics over the global batch (:func:`cross_replica_moments`), moving statistics updated
    by the layer's own rule with the global count."""

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        if not resolve_training(training):
            return super().call(inputs, training=False)
        axes = list(range(len(inputs.shape) - 1))
        mean, variance, count = cross_replica_moments(inputs, axes, shift=self.moving_mean)
        self._update_moving_statistics(tf.stop_gradient(mean), tf.stop_gradient(variance),
                                       tf.stop_gradient(count))
        return tf.nn.batch_normalization(inputs, mean, variance, self.beta, self.gamma,
                                         self.epsilon)


_SYNCHRONIZED_CLASSES = {}


def _read_first_replica(*variables):
    """Keras keeps BN moving statistics as on-read variables whose cross-replica value is the
    mean over the replicas: every read outside a replica (a checkpoint, an ``.h5`` file, each
    inference batch) is then an all-reduce, one per variable. Once the statistics are
    synchronised the copies are identical, so reads take the first replica's copy instead
    (the on-read aggregation ``ONLY_FIRST_REPLICA``; updates inside a replica are unchanged)."""
    for variable in variables:
        on_read = getattr(variable, "synchronization", None) == tf.VariableSynchronization.ON_READ
        if on_read and hasattr(variable, "_aggregation") \
                and getattr(variable, "_policy", None) is None:
            variable._aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA  # noqa: SLF001


def _synchronized_class(layer_class, mixin):
    key = (layer_class, mixin)
    if key not in _SYNCHRONIZED_CLASSES:
        _SYNCHRONIZED_CLASSES[key] = type(f"CrossReplica{layer_class.__name__}",
                                          (mixin, layer_class), {"__module__": __name__})
    return _SYNCHRONIZED_CLASSES[key]


def synchronize_batch_normalization(model):
    """Make every BN layer inside ``model`` use global-batch statistics under a strategy.

    Keras ``BatchNormalization`` layers (and subclasses: tf2cv's, MSINet's frozen-β heads) and
    :class:`~reid_tf.models.switchable_bn.TorchBatchNormalization` layers (also those inside
    switchable BNs) get a cross-replica subclass of their own class (same variables, names and
    weights files); on one replica they compute what they computed before, except that Keras
    layers leave the fused kernel. Returns the number of layers changed (already synchronised
    layers are left alone).
    """
    changed = 0
    layers = [model] + list(iter_layers(model)) if isinstance(model, keras.layers.Layer) \
        else list(model)
    for layer in layers:
        if isinstance(layer, (_CrossReplicaKerasBatchNormalization,
                              _CrossReplicaTorchBatchNormalization)):
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.virtual_batch_size is not None or layer.renorm:
                raise DistributionError(f"{layer.name}: BatchNormalization with virtual batches "
                                        "or renorm cannot be synchronised across replicas.")
            # PyTorch-statistics layers (MSINet) want the unbiased update on every path.
            unbiased = bool(layer.fused) or isinstance(layer, TorchStatisticsBatchNormalization)
            layer.__class__ = _synchronized_class(type(layer),
                                                  _CrossReplicaKerasBatchNormalization)
            layer.fused = False
            layer._reid_unbiased_moving_variance = unbiased  # noqa: SLF001
            _read_first_replica(layer.moving_mean, layer.moving_variance)
            changed += 1
        elif isinstance(layer, TorchBatchNormalization):
            layer.__class__ = _synchronized_class(type(layer),
                                                  _CrossReplicaTorchBatchNormalization)
            changed += 1
    return changed
