"""The MSI search space: the search cell, the search network (SearchCNN) and its α.

Follows ``/work/shared/spec/msinet.md`` §5 (channels-last):

* the backbone is :func:`reid_tf.models.msinet.msinet_backbone` with the search mid-channel
  rule ``M = Cin // 4`` and, at each of the 12 interaction points, a
  :class:`MixedInteraction` holding **all four** operations of
  :mod:`reid_tf.models.msinet_ops` in ``PRIMITIVES`` order (``none, ag, cross_att, exc``), each
  with its own weights;
* the relaxation weights ``w = softmax(α, axis=-1)`` are computed once per forward pass by one
  ``Softmax`` layer (``arch_softmax``) and every mixture reads its row: cell ``ci`` in
  ``{0, 1, 3, 4, 6, 7}`` uses rows ``2t`` (op2) and ``2t + 1`` (op3) with ``t = ci - ci // 3``
  (the genotype order of §4.1);
* ``a' = Σ_k w_k op_k(a, b)[0]`` and ``b' = Σ_k w_k op_k(a, b)[1]`` (summed in ``PRIMITIVES``
  order, as the reference's ``sum`` of a list);
* head: ``x = GAP(cells[7])`` (512-d) is the feature of both modes; the training model also
  returns ``prob = classifier(BN1d(x))`` (BN β frozen at 0, Linear without bias, initialised
  ``N(0, 0.001)``). No loss uses ``prob``: the head BN and the classifier receive no gradient
  and keep their initial values; they are kept for parameter-count parity (§11.2).

α is **not** a model weight: it is a separate ``tf.Variable`` of shape ``(12, 4)`` drawn as
``1e-3 × N(0, 1)``, fed to the Keras models as their second input. The models therefore take
``[images, alpha]``; :class:`SearchNetwork` holds the models and α together and calls them.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from reid_tf.models.genotypes import GENOTYPE_LENGTH
from reid_tf.models.layers import check_model_arguments
from reid_tf.models.msinet import CHANNELS, count_parameters, float32_policy, msinet_backbone
from reid_tf.models.msinet_ops import PRIMITIVES, default_batch_norm, make_operation

NUM_ROWS = GENOTYPE_LENGTH  # 12 interaction points (6 cells x 2)
NUM_OPS = len(PRIMITIVES)  # 4 operations
ALPHA_SCALE = 1e-3
SEARCH_LINEAR_STDDEV = 0.001
SEARCH_CELL_INDICES = (0, 1, 3, 4, 6, 7)
# Operations whose mixture MixedInteraction computes in folded form (all of PRIMITIVES).
_FOLDABLE = ("none", "ag", "cross_att", "exc")


def alpha_row(cell_index, position):
    """Row of α used by cell ``cell_index`` (0, 1, 3, 4, 6 or 7) at ``position`` (0: op2,
    1: op3): ``2 t + position`` with ``t = cell_index - cell_index // 3``."""
    if cell_index not in SEARCH_CELL_INDICES:
        raise ValueError(f"Cell {cell_index} has no interaction (transitions are cells 2 and 5); "
                         f"cells with interactions: {SEARCH_CELL_INDICES}.")
    if position not in (0, 1):
        raise ValueError(f"position must be 0 (op2) or 1 (op3), got {position!r}.")
    return 2 * (cell_index - cell_index // 3) + position


@keras.utils.register_keras_serializable(package="reid_tf_nas")
class MixedInteraction(keras.layers.Layer):
    """Softmax-weighted mixture of all interaction operations at one interaction point.

    Inputs ``[a, b, weights]``: the two branch tensors ``(B, H, W, M)`` and the relaxation
    weights ``(12, 4)`` (``softmax(α)``); the layer uses row ``row``. Returns ``[a', b']`` with
    ``a' = Σ_k weights[row, k] · op_k(a, b)[0]`` (same for ``b'`` with output 1). The operation
    layers are those of :func:`reid_tf.models.msinet_ops.make_operation`, one per primitive,
    named ``{name}_{primitive}``.
    """

    def __init__(self, row, primitives=PRIMITIVES, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= int(row) < NUM_ROWS:
            raise ValueError(f"MixedInteraction {self.name}: row must be in [0, {NUM_ROWS}), "
                             f"got {row!r}.")
        self.row = int(row)
        self.primitives = tuple(primitives)
        self.operations = [make_operation(primitive, f"{self.name}_{primitive}")
                           for primitive in self.primitives]

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            raise ValueError(f"MixedInteraction {self.name} expects [a, b, weights].")
        a, b, weights = inputs
        row = tf.cast(weights[self.row], a.dtype)
        if set(self.primitives) <= set(_FOLDABLE):
            return self._folded_mixture(a, b, row)
        mixed_a = mixed_b = None
        for index, operation in enumerate(self.operations):
            out_a, out_b = operation([a, b])
            weight = row[index]
            term_a, term_b = out_a * weight, out_b * weight
            mixed_a = term_a if mixed_a is None else mixed_a + term_a
            mixed_b = term_b if mixed_b is None else mixed_b + term_b
        return [mixed_a, mixed_b]

    def _folded_mixture(self, a, b, row):
        """The same sum with the linear parts folded together (fewer full-size passes).

        With ``w`` the row, ``g`` the shared gate and ``out`` the cross-attention outputs
        before ``gamma`` and the residual::

            a' = a * (w_none + w_ca + w_ag * g(a)) + (w_ca * gamma) * out_a + w_exc * b

        (and symmetrically for ``b'``), which is ``Σ_k w_k op_k(a, b)[0]`` regrouped: three
        full-size products and two sums per branch instead of one product per operation plus
        the operations' own (the MSI search step's element-wise time, benchmarks/NOTES.md).
        Equal to the plain sum up to float rounding.
        """
        zero = tf.zeros([], a.dtype)
        own, other, gate_weight, attention_weight = zero, zero, None, None
        gates = attention = None
        for index, (primitive, operation) in enumerate(zip(self.primitives, self.operations)):
            weight = row[index]
            if primitive == "none":
                own = own + weight
            elif primitive == "exc":
                other = other + weight
            elif primitive == "ag":
                gate_weight = weight
                gates = operation([a, b], gates_only=True)
            else:  # cross_att
                own = own + weight
                attention = operation([a, b], attention_only=True)
                attention_weight = weight * tf.cast(operation.gamma, a.dtype)
        outputs = []
        for index, (own_tensor, other_tensor) in enumerate(((a, b), (b, a))):
            scale = own if gates is None else own + gate_weight * gates[index]
            mixed = own_tensor * scale
            if attention is not None:
                mixed = mixed + attention_weight * attention[index]
            if "exc" in self.primitives:
                mixed = mixed + other * other_tensor
            outputs.append(mixed)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({"row": self.row, "primitives": list(self.primitives)})
        return config


def _mixture_factory(row, weights):
    """An op factory ``(channels, name) -> callable([a, b])`` for :func:`msinet_cell`."""
    def factory(channels, name):
        layer = MixedInteraction(row, name=name)

        def apply(pair):
            return layer([pair[0], pair[1], weights])

        return apply

    return factory


def build_search_models(num_classes, input_shape=(256, 128, 3), channels=CHANNELS,
                        bn_factory=default_batch_norm, name="search_cnn"):
    """Build the SearchCNN Keras models (msinet.md §5).

    Args:
      num_classes: classes of the (untrained) classifier, e.g. the number of train classes of
        the twins split.
      input_shape: ``(H, W, 3)``; 256×128 for persons.
      channels: ``[stem, stage1, stage2, stage3]`` widths (the standard ``64, 256, 384, 512``).
      bn_factory: BN factory (see :mod:`reid_tf.models.msinet_ops`).
      name: model-name prefix.

    Returns:
      ``(training_model, inference_model)`` sharing their layers, both with inputs
      ``[images (B, H, W, 3), alpha (12, 4)]``: the training model returns
      ``{"features": x (B, C), "logits": prob (B, num_classes)}``, the inference model ``x``.
    """
    num_classes, input_shape = check_model_arguments(num_classes, input_shape, 16,
                                                     "the network downsamples by 16")
    images = keras.Input(shape=input_shape, name="images")
    alpha = keras.Input(shape=(NUM_OPS,), batch_size=NUM_ROWS, name="alpha")
    # Under a mixed-precision policy the relaxation weights, the pooled features (the memory
    # losses' input) and the head stay float32; the mixtures cast their row to the body's dtype.
    with float32_policy():
        weights = keras.layers.Softmax(axis=-1, name="arch_softmax")(alpha)
    factories = [_mixture_factory(row, weights) for row in range(NUM_ROWS)]
    x, _ = msinet_backbone(images, factories, bn_factory=bn_factory, mid_channels_rule="search",
                           channels=channels)
    with float32_policy():
        features = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        normalized = bn_factory("head_bn", frozen_beta=True)(features)
        logits = keras.layers.Dense(
            int(num_classes), use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(0.0, SEARCH_LINEAR_STDDEV),
            name="classifier")(normalized)
    training_model = keras.Model([images, alpha], {"features": features, "logits": logits},
                                 name=f"{name}_training")
    inference_model = keras.Model([images, alpha], features, name=f"{name}_inference")
    return training_model, inference_model


def initial_alpha(seed=0):
    """``1e-3 × N(0, 1)`` of shape ``(12, 4)`` (float32), from ``numpy`` seeded with ``seed``."""
    generator = np.random.default_rng(seed)
    return (ALPHA_SCALE * generator.standard_normal((NUM_ROWS, NUM_OPS))).astype(np.float32)


class SearchNetwork(tf.Module):
    """SearchCNN and its architecture parameters α.

    Attributes:
      training_model, inference_model: the Keras models of :func:`build_search_models`.
      alpha: ``tf.Variable (12, 4)``, not part of any Keras model.
    """

    def __init__(self, num_classes, input_shape=(256, 128, 3), seed=0, channels=CHANNELS,
                 name="search_network"):
        super().__init__(name=name)
        self.training_model, self.inference_model = build_search_models(
            num_classes, input_shape=input_shape, channels=channels)
        self.alpha = tf.Variable(initial_alpha(seed), trainable=True, name="alpha")
        self.num_classes = int(num_classes)
        self.feature_dim = int(self.training_model.output["features"].shape[-1])

    @property
    def weight_variables(self):
        """The network weights the weight optimiser updates (every trainable model weight)."""
        return self.training_model.trainable_variables

    @property
    def arch_variables(self):
        """``[alpha]``."""
        return [self.alpha]

    def __call__(self, images, training=True):
        """Training-model outputs ``{"features", "logits"}`` with the current α."""
        return self.training_model([images, self.alpha], training=training)

    def embed(self, images):
        """The 512-d GAP features in inference mode (evaluation)."""
        return self.inference_model([images, self.alpha], training=False)

    def relaxation_weights(self):
        """``softmax(α)`` as a numpy array ``(12, 4)``."""
        return tf.nn.softmax(self.alpha, axis=-1).numpy()


def search_parameter_counts(training_model):
    """Parameter counts of a SearchCNN as the reference reports them (msinet.md §11.2).

    Returns a dict: ``total``, ``without_classifier``, ``trainable`` (total minus the frozen head
    BN β) and one entry per module: ``stem``, ``cells_0`` ... ``cells_7``, ``head_bn``,
    ``classifier``. BN moving statistics are not parameters.
    """
    counts = {"total": count_parameters(training_model),
              "without_classifier": count_parameters(training_model, include_classifiers=False),
              "trainable": int(sum(int(v.shape.num_elements())
                                   for v in training_model.trainable_variables)),
              "stem": count_parameters(training_model, prefix="conv1_")}
    for index in range(8):
        counts[f"cells_{index}"] = count_parameters(training_model, prefix=f"cells_{index}_")
    counts["head_bn"] = count_parameters(training_model, prefix="head_bn")
    counts["classifier"] = count_parameters(training_model, prefix="classifier")
    return counts
