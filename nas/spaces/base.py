"""The interface of a search space: what the search loop (:mod:`nas.searcher`) needs.

A search space (:class:`SearchSpace`) owns everything specific to one kind of search: its data
(the training input and the endless valid stream), its supernet, its architecture variables,
the losses of both levels and the result it derives. The loop only uses this interface, so a
space plugs in by being listed in :data:`nas.spaces.SEARCH_SPACES` (or registered with
:func:`nas.spaces.register_search_space`). Besides the abstract methods a space may override
the hooks ``weights_only_epochs``, ``begin_epoch``, ``make_weight_optimizer``,
``alpha_history``, ``plot_alpha_history`` and ``evaluate`` (defaults: the msi behaviour).
"""
import abc

from nas.alpha import AlphaHistory, plot_alpha_history

# The seed of the valid stream: the train seed plus this offset (the two samplers differ).
VALID_SEED_OFFSET = 1_000_003


def evaluation_settings(config, **overrides):
    """The :class:`~reid_tf.evaluation.settings.EvaluationSettings` of a search's evaluation:
    the config's image size, test batch size and seed, with a space's ``overrides`` (metric,
    normalisation, trials, ...)."""
    from reid_tf.evaluation.settings import EvaluationSettings
    return EvaluationSettings(image_height=config.image_height, image_width=config.image_width,
                              batch_size=config.test_batch_size, seed=config.seed,
                              resize=config.resize_interpolation, **overrides)


class SearchSpace(abc.ABC):
    """What the search loop needs from a search space (see the module docstring).

    Attributes set by implementations: ``name``, ``result_file_name`` (e.g. ``genotype.json``),
    ``train_data`` (``epoch_dataset(e)``, ``steps_per_epoch``, ``get_state()``,
    ``set_state(text)``, like :class:`reid_tf.training.data.TrainingInput`), ``valid_data``
    (``next()``, ``get_state()``, ``set_state(text)``, like :class:`nas.tcm.EndlessBatches`),
    ``weights_model`` (the Keras model whose weights are the network weights).
    """

    name = None
    result_file_name = "result.json"
    # Optional hooks (defaults keep the msi behaviour):
    # epochs at the start that take weight steps only (no architecture step, no valid batch).
    weights_only_epochs = 0
    # Whether the losses and commits work on several replicas in sync (per-sample losses,
    # memory updates on all-gathered features); spaces that do not say so run on one.
    supports_replicas = False

    @property
    @abc.abstractmethod
    def weight_variables(self):
        """Variables of the weight optimiser."""

    @property
    @abc.abstractmethod
    def arch_variables(self):
        """Architecture variables (own optimiser)."""

    @property
    def state_variables(self):
        """Non-trainable variables changed by training-mode forward passes (BN statistics)."""
        return list(self.weights_model.non_trainable_variables)

    @abc.abstractmethod
    def train_loss(self, images, labels):
        """``(loss, aux)`` of a train batch at the current weights and architecture."""

    @abc.abstractmethod
    def valid_loss(self, images, labels):
        """``(loss, aux)`` of a valid batch (the architecture's objective)."""

    def commit_train(self, aux):
        """Side effects of back-propagating the train loss (e.g. a memory update)."""

    def commit_valid(self, aux):
        """Side effects of back-propagating the valid loss."""

    @abc.abstractmethod
    def checkpoint_objects(self):
        """``{name: trackable}`` of the space's state (weights, architecture, memories)."""

    @abc.abstractmethod
    def derive(self):
        """The discrete architecture of the current architecture variables."""

    @abc.abstractmethod
    def write_result(self, result, file_path):
        """Write the derived result to ``file_path``."""

    def describe(self, result):
        """One line describing ``result`` for the log."""
        return str(result)

    @abc.abstractmethod
    def architecture_arrays(self):
        """``{name: numpy array}`` of the architecture variables (for the log and history)."""

    @abc.abstractmethod
    def embed(self, images):
        """Evaluation features of a batch of normalised images (inference mode)."""

    # Optional hooks ---------------------------------------------------------------------------
    def begin_epoch(self, epoch):
        """Called before the steps of epoch ``epoch`` (0-based), also on resuming."""

    def make_weight_optimizer(self, config, learning_rate):
        """The weight optimiser (default: the reference's SGD with momentum and coupled decay).
        It needs ``learning_rate`` (settable), ``build``, ``apply_gradients`` and ``variables``."""
        from reid_tf.training.optimizers import TorchSGD
        return TorchSGD(learning_rate=learning_rate, momentum=config.momentum,
                        weight_decay_l2=config.weight_decay)

    def alpha_history(self, file_path):
        """The :class:`nas.alpha.AlphaHistory` (or compatible) kept in ``file_path``."""
        return AlphaHistory(file_path)

    def plot_alpha_history(self, history, file_path):
        """Draw the α-history heatmap to ``file_path``."""
        return plot_alpha_history(history, file_path)

    def evaluate(self, dataframe, folder, tag):
        """The search network's evaluation summary written into ``folder``, or ``None`` for the
        searcher's single-modality evaluation with :meth:`embed`."""
        return None
