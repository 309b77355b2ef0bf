"""CM-NAS's weight optimiser for the BN-split search (cmnas.md §8.1): two learning-rate groups
(backbone at 0.1 x the head rate) behind the single-optimiser interface of the search step.
"""
import tensorflow as tf

# Weight optimiser of CM-NAS (cmnas.md §8.1).
WEIGHT_BETA_1 = 0.5
WEIGHT_BETA_2 = 0.999
WEIGHT_EPSILON = 1e-8


class _Untracked:
    """Holds an object that checkpoints must not track through this one."""

    def __init__(self, item):
        self.item = item


class GroupedWeightOptimizer(tf.Module):
    """CM-NAS's weight optimiser (cmnas.md §8.1) behind the single-optimiser interface of the
    searcher: one :class:`reid_tf.training.optimizers.TorchAdam` per group, the backbone's at
    ``backbone_multiplier`` × the learning rate, the head's at the learning rate.

    Args:
      backbone_variables, head_variables: the two groups (disjoint).
      learning_rate: the head (base) learning rate.
      backbone_multiplier: backbone learning rate / base learning rate (0.1).
      weight_decay: coupled L2 weight decay of both groups.
      ema: optional :class:`reid_tf.training.ema.WeightEMA`, updated after every step.

    ``learning_rate`` reads the base rate (a variable, so traced steps see changes) and
    setting it sets both groups; ``apply_gradients(pairs)`` steps each group on its pairs (a
    variable of neither group is an error); ``weight_decay_l2`` is the decay (read by the
    unrolled architecture step). Both Adam states are tracked for checkpoints.
    """

    def __init__(self, backbone_variables, head_variables, learning_rate, backbone_multiplier,
                 weight_decay, ema=None, beta_1=WEIGHT_BETA_1, beta_2=WEIGHT_BETA_2,
                 epsilon=WEIGHT_EPSILON):
        super().__init__(name="grouped_weight_optimizer")
        from reid_tf.training.optimizers import TorchAdam

        self.backbone_multiplier = float(backbone_multiplier)
        self.weight_decay_l2 = float(weight_decay)
        self._backbone_ids = frozenset(id(variable) for variable in backbone_variables)
        self._head_ids = frozenset(id(variable) for variable in head_variables)
        if self._backbone_ids & self._head_ids:
            raise ValueError("GroupedWeightOptimizer: a variable is in both groups.")
        self._rate = tf.Variable(float(learning_rate), trainable=False, dtype=tf.float32,
                                 name="base_learning_rate")
        options = dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                       weight_decay_l2=self.weight_decay_l2)
        self.backbone_optimizer = TorchAdam(
            learning_rate=float(learning_rate) * self.backbone_multiplier, name="backbone_adam",
            **options)
        self.head_optimizer = TorchAdam(learning_rate=float(learning_rate), name="head_adam",
                                        **options)
        self._ema = _Untracked(ema)

    @property
    def learning_rate(self):
        return self._rate

    @learning_rate.setter
    def learning_rate(self, value):
        value = float(value)
        self._rate.assign(value)
        self.backbone_optimizer.learning_rate = value * self.backbone_multiplier
        self.head_optimizer.learning_rate = value

    def _partition(self, variables_or_pairs, key):
        backbone, head = [], []
        for item in variables_or_pairs:
            variable = key(item)
            if id(variable) in self._backbone_ids:
                backbone.append(item)
            elif id(variable) in self._head_ids:
                head.append(item)
            else:
                raise ValueError(f"GroupedWeightOptimizer: {variable.name} is in neither the "
                                 "backbone nor the head group.")
        return backbone, head

    def build(self, variables):
        """Build both Adam states on their groups' members of ``variables``."""
        backbone, head = self._partition(variables, lambda variable: variable)
        self.backbone_optimizer.build(backbone)
        self.head_optimizer.build(head)

    def apply_gradients(self, pairs):
        """One Adam step per group on its ``(gradient, variable)`` pairs, then the EMA."""
        backbone, head = self._partition(list(pairs), lambda pair: pair[1])
        if backbone:
            self.backbone_optimizer.apply_gradients(backbone)
        if head:
            self.head_optimizer.apply_gradients(head)
        if self._ema.item is not None:
            self._ema.item.update()

    @property
    def variables(self):
        """Both optimisers' state variables (backbone first)."""
        return list(self.backbone_optimizer.variables) + list(self.head_optimizer.variables)
