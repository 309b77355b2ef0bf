"""The architecture-search loop: search spaces, the bilevel step and the resumable searcher.

Search spaces
-------------
A search space (:class:`SearchSpace`) owns everything specific to one kind of search: its data
(the training input and the endless valid stream), its supernet, its architecture variables,
the losses of both levels and the result it derives. The loop (:class:`Searcher`) only uses
that interface, so a second space (``bn_split``, CM-NAS's BN split/share search) plugs in by
registering a factory with :func:`register_search_space`. ``msi`` (:class:`MsiSearchSpace`)
is the MSINet search (msinet.md §5, §6); ``bn_split`` (:mod:`nas.bn_split`) is CM-NAS's BN
split/share search. Besides the abstract methods a space may override the hooks
``weights_only_epochs``, ``begin_epoch``, ``make_weight_optimizer``, ``alpha_history``,
``plot_alpha_history`` and ``evaluate`` (defaults: the msi behaviour).

The step (msinet.md §6.3)
-------------------------
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

Distribution (``--strategy``, :mod:`reid_tf.training.distribute`)
-----------------------------------------------------------------
The network, α, the memories and both optimisers are built inside the strategy's scope, and
with several replicas every BN is synchronised across them. Each replica receives ``P / R``
whole identities of every train and valid batch and back-propagates its share ``L / R`` of the
batch mean (the memory losses are per sample, so the replicas' shares add up to the one-device
loss); the optimisers sum the replicas' gradients. Before a memory update the normalised
features and labels are all-gathered in global batch order and every replica applies the same
sequential update to its copy, so the copies stay identical. The reported losses are global.
The second-order (``unrolled``) step needs one replica, and a search space runs on several
replicas only if it says so (``supports_replicas``: ``msi`` does). On a multi-worker run only
the chief writes the run folder; the other workers write into a temporary folder removed at
the end.

Outputs (run folder, ``<output_folder_path>/<dataset_name>_search``)
--------------------------------------------------------------------
``genotype.json`` (the current result, rewritten at each genotype interval and at the end; the
space's ``result_file_name``, e.g. ``config.cfg`` for ``bn_split``),
``alpha_history.npz`` and ``alpha_history.png``, ``search.log`` (genotypes, ``softmax(α)``,
epoch summaries, evaluations),
``history.csv`` (one row per epoch), ``tensorboard/``, ``evaluation/`` (the last evaluation:
``evaluation.json``, CMC curve, rank list), ``weights_epoch<E>.h5`` (the network weights at
each evaluation, without α) and ``checkpoint/`` (the resumable state: weights, α, both
optimisers, both memories, the epoch and both sampler states). Running the same search again
continues from the checkpoint.
"""
import abc
import csv
import math
import os
import time

import numpy as np
import tensorflow as tf

from nas.architect import Architect
from nas.search import SEARCH_SPACE_NAMES, SearchConfig, run_folder  # noqa: F401 (re-exported)
from nas.genotypes import AlphaHistory, derive_genotype, plot_alpha_history, write_genotype
from nas.model_search import SearchNetwork
from nas.tcm import ClusterMemory, EndlessBatches, separate_trainval
from reid_tf.training import distribute

VALID_SEED_OFFSET = 1_000_003
PRINT_FREQUENCY = 100
CROSS_MODALITY_PROTOCOLS = ("sysu_mm01", "regdb")
HISTORY_COLUMNS = ["epoch", "learning_rate", "arch_learning_rate", "loss", "valid_loss",
                   "accuracy", "steps", "arch_steps", "seconds", "result", "rank1", "rank5",
                   "rank10", "mAP"]


# --------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------
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
        """The :class:`nas.genotypes.AlphaHistory` (or compatible) kept in ``file_path``."""
        return AlphaHistory(file_path)

    def plot_alpha_history(self, history, file_path):
        """Draw the α-history heatmap to ``file_path``."""
        return plot_alpha_history(history, file_path)

    def evaluate(self, dataframe, folder, tag):
        """The search network's evaluation summary written into ``folder``, or ``None`` for the
        searcher's single-modality evaluation with :meth:`embed`."""
        return None


SEARCH_SPACES = {}


def register_search_space(name, factory):
    """Register ``factory(config, dataframe, input_shape) -> SearchSpace`` as ``name``."""
    SEARCH_SPACES[name] = factory
    return factory


class MsiSearchSpace(SearchSpace):
    """The MSI search space with TCM (msinet.md §5, §6).

    Data: the twins split of the training rows (:func:`nas.tcm.separate_trainval`); both
    subsets use the training augmentation (recipe ``msinet``) and their own PK sampler
    (``msinet`` policy); the valid stream is endless. Network: :class:`SearchNetwork` with
    ``3q`` classifier classes. Losses: train memory (``3q`` slots) for the weights, valid memory
    (``P − q`` slots) for α; each memory is updated after the gradient of its loss.
    """

    name = "msi"
    result_file_name = "genotype.json"
    supports_replicas = True

    def __init__(self, config, dataframe, input_shape):
        from reid_tf.data.augmentation import build_augmentation
        from reid_tf.data.sampler import PKSampler
        from reid_tf.training.data import TrainingInput

        train = dataframe[dataframe["split"] == "train"].reset_index(drop=True)
        if len(train) == 0:
            raise ValueError(f"{config.dataset_name}: the dataset has no training images "
                             "(check --dataset_name and --root_folder_path).")
        self.split = separate_trainval(train, source=f"{config.dataset_name} training set")
        height, width = config.image_height, config.image_width
        augmentation = build_augmentation("msinet", height, width)
        P, K = config.identity_num_per_batch, config.image_num_per_identity
        for subset, table in (("train", self.split.train), ("valid", self.split.valid)):
            identities = table["identity_ID"].nunique()
            if identities < P:
                raise ValueError(
                    f"{config.dataset_name}: the TCM {subset} subset has {identities} identities, "
                    f"fewer than --identity_num_per_batch={P}; lower it or use a dataset with "
                    "more identities.")
        self.train_data = TrainingInput(
            self.split.train, P, K, config.steps_per_epoch, height, width, augmentation,
            seed=config.seed, policy="msinet", label_map=self.split.train_label_map,
            workers=config.workers, cache_images=config.cache_images)
        valid_sampler = PKSampler.from_dataframe(self.split.valid, P, K, steps_per_epoch=None,
                                                 seed=config.seed + VALID_SEED_OFFSET,
                                                 policy="msinet")
        self.valid_data = EndlessBatches(
            self.split.valid, valid_sampler, height, width, augmentation,
            self.split.valid_label_map, seed=config.seed + VALID_SEED_OFFSET,
            workers=config.workers, cache_images=config.cache_images)
        self._build_model(self.split.num_train_classes, self.split.num_valid_classes,
                          input_shape, config.seed)

    def _build_model(self, num_train_classes, num_valid_classes, input_shape, seed):
        self.network = SearchNetwork(num_train_classes, input_shape=input_shape, seed=seed)
        self.weights_model = self.network.training_model
        dimension = self.network.feature_dim
        self.train_memory = ClusterMemory(dimension, num_train_classes, name="train_memory")
        self.valid_memory = ClusterMemory(dimension, num_valid_classes, name="valid_memory")

    @classmethod
    def without_data(cls, num_train_classes, num_valid_classes, input_shape=(256, 128, 3),
                     seed=0):
        """The network, α and memories alone (no data split, ``train_data``/``valid_data``
        ``None``): for driving the steps with your own batches."""
        space = cls.__new__(cls)
        space.split = None
        space.train_data = space.valid_data = None
        space._build_model(num_train_classes, num_valid_classes, input_shape, seed)
        return space

    def summary(self):
        split = self.split
        return (f"TCM split: q = {split.q}; train {len(split.train)} images of "
                f"{split.num_train_classes} classes, valid {len(split.valid)} images of "
                f"{split.num_valid_classes} classes.")

    @property
    def weight_variables(self):
        return self.network.weight_variables

    @property
    def arch_variables(self):
        return self.network.arch_variables

    def _loss(self, memory, images, labels):
        outputs = self.network(images, training=True)
        loss, normalized = memory.loss(outputs["features"], labels)
        predictions = tf.argmax(outputs["logits"], axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)),
                                          tf.float32))
        return loss, {"normalized": normalized, "labels": labels, "accuracy": accuracy}

    def train_loss(self, images, labels):
        return self._loss(self.train_memory, images, labels)

    def valid_loss(self, images, labels):
        return self._loss(self.valid_memory, images, labels)

    def commit_train(self, aux):
        # Several replicas: each updates its copy with the whole batch, in global order.
        self.train_memory.update(*distribute.all_gather_batch((aux["normalized"],
                                                               aux["labels"])))

    def commit_valid(self, aux):
        self.valid_memory.update(*distribute.all_gather_batch((aux["normalized"],
                                                               aux["labels"])))

    def checkpoint_objects(self):
        return {"model": self.network.training_model, "alpha": self.network.alpha,
                "train_memory": self.train_memory, "valid_memory": self.valid_memory}

    def derive(self):
        return derive_genotype(self.network.alpha)

    def write_result(self, result, file_path):
        return write_genotype(result, file_path)

    def describe(self, result):
        return f"genotype = {result}"

    def architecture_arrays(self):
        return {"alpha": self.network.alpha.numpy(),
                "weights": self.network.relaxation_weights()}

    def embed(self, images):
        return self.network.embed(images)


register_search_space("msi", MsiSearchSpace)


# --------------------------------------------------------------------------------------------
# The bilevel step
# --------------------------------------------------------------------------------------------
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
        if jit_compile and self.distributed:
            raise ValueError("--jit_compile is not available with --strategy mirrored or "
                             "multi_worker; drop one of the two flags.")
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
        if not self.distributed:
            return step
        strategy = self.strategy

        def distributed_step(*args):
            values = strategy.run(step, args=args)
            return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                    for name, value in values.items()}

        return distributed_step

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


# --------------------------------------------------------------------------------------------
# The searcher
# --------------------------------------------------------------------------------------------
class NonFiniteSearchLossError(RuntimeError):
    """A search step produced a NaN or infinite loss."""


class Searcher:
    """The resumable search loop (module docstring). ``Searcher(config).search()`` runs it.

    Args:
      config: a :class:`SearchConfig`. Building the searcher seeds Python, numpy and
        TensorFlow with ``config.seed`` and, with ``config.deterministic``, enables
        TensorFlow's deterministic ops (process-wide, as ``solution.py`` does).
      dataframe: the dataset table; default: ``load_dataset(config.dataset_name,
        config.root_folder_path, **config.dataset_options)``.
      after_epoch: optional ``callback(searcher, epoch)`` run after each epoch's checkpoint.
      strategy: the ``tf.distribute`` strategy; default: made from ``config.strategy``
        (a multi-worker strategy should be made at the start of the program and passed in).
    """

    def __init__(self, config, dataframe=None, after_epoch=None, strategy=None):
        config.validate()
        self.config = config
        self.strategy = (strategy if strategy is not None
                         else distribute.create_strategy(getattr(config, "strategy", "default")))
        from reid_tf.training.run import configure_runtime
        configure_runtime(config)  # seeds (Python, numpy, TF), op determinism
        self.after_epoch = after_epoch
        # Only the chief writes the run folder; other workers write into a temporary one.
        self.chief_folder = run_folder(config)
        self.folder = distribute.worker_output_folder(self.chief_folder, self.strategy)
        os.makedirs(self.folder, exist_ok=True)
        self.log_path = os.path.join(self.folder, "search.log")

        from reid_tf.data import dataset_protocol, load_dataset

        self.protocol = dataset_protocol(config.dataset_name)
        if self.protocol in CROSS_MODALITY_PROTOCOLS and config.search_space == "msi":
            raise ValueError(f"--dataset_name={config.dataset_name}: the msi search space "
                             "searches single-modality datasets (visible-infrared data needs "
                             "another --search_space).")
        if dataframe is None:
            dataframe = load_dataset(config.dataset_name, config.root_folder_path,
                                     **dict(config.dataset_options))
        self.dataframe = dataframe
        if config.evaluation_interval > 0 and config.epoch_num > 0:
            splits = set(dataframe["split"])
            if not {"query", "gallery"} <= splits:
                raise ValueError(f"{config.dataset_name}: the dataset has no query or gallery "
                                 "images to evaluate the search network on; set "
                                 "--evaluation_interval=0 to search without evaluation.")
        input_shape = (config.image_height, config.image_width, 3)
        if config.search_space not in SEARCH_SPACES:
            raise ValueError(f"--search_space={config.search_space!r}: no search space of that "
                             f"name is registered ({', '.join(sorted(SEARCH_SPACES))}).")
        distribute.check_identities_per_replica(config.identity_num_per_batch, self.strategy)
        with self.strategy.scope():
            self._build(config, dataframe, input_shape)
        # Host-side bookkeeping (outside the scope: no per-replica copies of strings).
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self._train_state = tf.Variable("", dtype=tf.string, trainable=False,
                                        name="train_data_state")
        self._valid_state = tf.Variable("", dtype=tf.string, trainable=False,
                                        name="valid_data_state")
        self.checkpoint = tf.train.Checkpoint(
            weight_optimizer=self.weight_optimizer, arch_optimizer=self.arch_optimizer,
            epoch=self._epoch, train_data_state=self._train_state,
            valid_data_state=self._valid_state, **self.space.checkpoint_objects())
        self.checkpoint_manager = self._checkpoint_manager()
        self.history_path = os.path.join(self.folder, "history.csv")
        self.alpha_history = self.space.alpha_history(os.path.join(self.folder,
                                                                   "alpha_history.npz"))
        self.summary_writer = tf.summary.create_file_writer(os.path.join(self.folder,
                                                                         "tensorboard"))
        self._evaluation_steps = None
        self.last_evaluation = None

    def _build(self, config, dataframe, input_shape):
        """The space, the schedules, both optimisers and the step (inside the strategy's
        scope)."""
        from reid_tf.training.optimizers import TorchAdam
        from reid_tf.training.schedules import LearningRateSchedule

        with distribute.keras_inputs_keep_batch_size():
            self.space = SEARCH_SPACES[config.search_space](config, dataframe, input_shape)
        if self.strategy.num_replicas_in_sync > 1:
            distribute.synchronize_batch_normalization(self.space.weights_model)

        self.weight_schedule = LearningRateSchedule(
            mode="warmup_multistep", base=config.learning_rate,
            warmup_epochs=config.warmup_epochs, warmup_factor=config.warmup_factor,
            milestones=tuple(config.milestones), gamma=config.gamma, lower_bound=0.0)
        self.arch_schedule = LearningRateSchedule(
            mode="warmup_multistep", base=config.arch_learning_rate, warmup_epochs=0,
            warmup_factor=1.0, milestones=tuple(config.arch_milestones),
            gamma=config.arch_gamma, lower_bound=0.0)
        self.weight_optimizer = self.space.make_weight_optimizer(config,
                                                                 self.weight_schedule(0))
        self.arch_optimizer = TorchAdam(learning_rate=self.arch_schedule(0),
                                        beta_1=config.arch_beta_1, beta_2=config.arch_beta_2,
                                        epsilon=config.arch_epsilon,
                                        weight_decay_l2=config.arch_weight_decay)
        self.weight_optimizer.build(self.space.weight_variables)
        self.arch_optimizer.build(self.space.arch_variables)
        self.step = BilevelStep(self.space, self.weight_optimizer, self.arch_optimizer,
                                accumulate_valid_gradients=not config.clean_bilevel,
                                unrolled=config.unrolled, jit_compile=config.jit_compile,
                                strategy=self.strategy)

    # ------------------------------------------------------------------ logging
    def log(self, text):
        """Print ``text`` and append it to ``search.log``."""
        if self.config.verbose:
            print(text, flush=True)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")

    def _truncate_history(self, last_epoch):
        if not os.path.isfile(self.history_path):
            return
        with open(self.history_path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= last_epoch]
        self._write_history(rows)

    def _write_history(self, rows):
        with open(self.history_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(rows)

    def _append_history(self, row):
        if not os.path.isfile(self.history_path):
            self._write_history([])
        with open(self.history_path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, restval="").writerow(row)

    def _log_architecture(self, epoch, final=False):
        """Print/write the current result and log α (``epoch`` completed epochs)."""
        result = self.space.derive()
        arrays = self.space.architecture_arrays()
        label = "final" if final else f"epoch {epoch + 1}"
        self.log(f"[{label}] {self.space.describe(result)}")
        with np.printoptions(precision=4, suppress=True):
            self.log(f"softmax(alpha) =\n{arrays['weights']}")
        self.space.write_result(result, os.path.join(self.folder, self.space.result_file_name))
        if "alpha" in arrays:
            self.alpha_history.log(epoch, arrays["alpha"])
            self.space.plot_alpha_history(self.alpha_history,
                                          os.path.join(self.folder, "alpha_history.png"))
        return result

    # ------------------------------------------------------------------ state
    def _checkpoint_manager(self):
        return tf.train.CheckpointManager(self.checkpoint, os.path.join(self.folder, "checkpoint"),
                                          max_to_keep=2)

    def restore(self):
        """Restore the latest checkpoint on disk if any; returns the number of completed epochs.

        The checkpoint state file is read again, so a search run twice in one process (or
        after its state file was pointed at an earlier checkpoint) continues from what is on
        disk.
        """
        self.checkpoint_manager = self._checkpoint_manager()
        # Every worker resumes from the chief's checkpoint (the others write elsewhere).
        latest = tf.train.latest_checkpoint(os.path.join(self.chief_folder, "checkpoint"))
        epoch = 0
        if latest is not None:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            train_state = self._train_state.numpy().decode()
            if train_state:
                self.space.train_data.set_state(train_state)
            valid_state = self._valid_state.numpy().decode()
            if valid_state:
                self.space.valid_data.set_state(valid_state)
            epoch = int(self._epoch.numpy())
        task_type, _ = distribute.worker_task(self.strategy)
        if task_type is not None and float(
                distribute.mean_over_workers(self.strategy, float(epoch))) != float(epoch):
            checkpoints = os.path.join(self.chief_folder, "checkpoint")
            raise RuntimeError(
                f"The workers of this multi-worker search resume from different checkpoints "
                f"(this one after epoch {epoch}, from {checkpoints}). Put --output_folder_path "
                "on storage every machine sees, or remove the run folder to start afresh.")
        return epoch

    def _save_checkpoint(self, completed_epochs):
        self._epoch.assign(completed_epochs)
        self._train_state.assign(self.space.train_data.get_state())
        self._valid_state.assign(self.space.valid_data.get_state())
        self.checkpoint_manager.save(checkpoint_number=completed_epochs)

    # ------------------------------------------------------------------ evaluation
    def should_evaluate(self, epoch):
        interval = self.config.evaluation_interval
        if interval <= 0:
            return False
        return (epoch + 1) % interval == 0 or epoch + 1 == self.config.epoch_num

    def evaluate(self, tag):
        """CMC/mAP of the search network's features on the test split (msinet.md §10)."""
        from reid_tf.data.pipeline import make_test_dataset
        from reid_tf.evaluation.evaluator import (EvaluationOptions, evaluate_features,
                                                  write_evaluation_outputs)

        started = time.time()
        summary = self.space.evaluate(self.dataframe, os.path.join(self.folder, "evaluation"),
                                      tag)
        if summary is not None:
            return self._log_evaluation(summary, tag, started)
        frame = self.dataframe
        query = frame[frame["split"] == "query"].reset_index(drop=True)
        gallery = frame[frame["split"] == "gallery"].reset_index(drop=True)
        if self._evaluation_steps is None:
            self._evaluation_steps = tf.function(self.space.embed, reduce_retracing=True)
        config = self.config

        def extract(table):
            dataset = make_test_dataset(table, config.image_height, config.image_width,
                                        config.test_batch_size,
                                        num_parallel_calls=config.workers)
            return np.concatenate([self._evaluation_steps(images).numpy()
                                   for images in dataset], axis=0)

        query_features, gallery_features = extract(query), extract(gallery)
        options = EvaluationOptions(protocol=self.protocol, metric="sqeuclidean",
                                    normalize=True, max_rank=50, seed=config.seed)
        summary, details = evaluate_features(query, gallery, query_features, gallery_features,
                                             options)
        summary["dataset_name"] = config.dataset_name
        summary["tag"] = tag
        write_evaluation_outputs(summary, details, os.path.join(self.folder, "evaluation"),
                                 tag=tag)
        return self._log_evaluation(summary, tag, started)

    def _log_evaluation(self, summary, tag, started):
        keys = ("rank1", "rank5", "rank10", "mAP")
        self.log(f"[evaluation {tag}] " + ", ".join(f"{key} {100 * summary[key]:.2f}%"
                                                    for key in keys if key in summary)
                 + f" ({time.time() - started:.1f} s)")
        self.last_evaluation = summary
        return summary

    # ------------------------------------------------------------------ main loop
    def search(self):
        """Run (or continue) the search; returns the final result (the genotype for msi)."""
        config = self.config
        start_epoch = self.restore()
        self._truncate_history(start_epoch)
        self.alpha_history.truncate(start_epoch)
        if start_epoch:
            self.log(f"Resuming the search from its checkpoint after epoch {start_epoch}.")
        else:
            self.log(f"Search space {self.space.name} on {config.dataset_name}; run folder "
                     f"{self.folder}.")
            if hasattr(self.space, "summary"):
                self.log(self.space.summary())
            self.alpha_history.log(0, self.space.architecture_arrays()["alpha"])
        for epoch in range(start_epoch, config.epoch_num):
            if (epoch + 1) % config.genotype_interval == 0 or epoch + 1 == config.epoch_num:
                self._log_architecture(epoch)
            row = self._run_epoch(epoch)
            if self.should_evaluate(epoch):
                summary = self.evaluate(f"epoch{epoch + 1}")
                row.update({key: summary[key] for key in ("rank1", "rank5", "rank10", "mAP")
                            if key in summary})
                self.space.weights_model.save_weights(
                    os.path.join(self.folder, f"weights_epoch{epoch + 1}.h5"))
            self._save_checkpoint(epoch + 1)
            self._append_history(row)
            with self.summary_writer.as_default():
                for name, value in row.items():
                    if isinstance(value, (int, float)) and name != "epoch" \
                            and math.isfinite(value):
                        tf.summary.scalar(name, value, step=epoch + 1)
            self.summary_writer.flush()
            if self.after_epoch is not None:
                self.after_epoch(self, epoch)
        result = self._log_architecture(config.epoch_num, final=True)
        if config.save_genotype_to and distribute.is_chief(self.strategy):
            path = self.space.write_result(result, os.path.expanduser(config.save_genotype_to))
            self.log(f"Published the result to {path}.")
        if not distribute.is_chief(self.strategy):
            self.summary_writer.close()
            distribute.remove_worker_output_folder(self.folder, self.strategy)
        return result

    def _run_epoch(self, epoch):
        config = self.config
        rate = self.weight_schedule(epoch)
        arch_rate = self.arch_schedule(epoch)
        self.weight_optimizer.learning_rate = rate
        self.arch_optimizer.learning_rate = arch_rate
        skip_first = not config.clean_bilevel
        self.space.begin_epoch(epoch)
        architecture_active = epoch >= self.space.weights_only_epochs
        data = self.space.train_data
        if self.step.distributed:
            dataset = distribute.distribute_batches(
                self.strategy, lambda: data.epoch_dataset(epoch),
                getattr(data, "cross_modality", False))
        else:
            dataset = data.epoch_dataset(epoch)
        self.log(f"Epoch {epoch + 1}/{config.epoch_num}: learning rate {rate:.6g}, architecture "
                 f"learning rate {arch_rate:.6g}, {data.steps_per_epoch} steps.")
        sums = {"loss": 0.0, "accuracy": 0.0, "valid_loss": 0.0}
        steps = arch_steps = 0
        started = time.time()
        total = data.steps_per_epoch
        for step, (images, labels) in enumerate(dataset):
            valid_images = valid_labels = None
            if architecture_active:
                valid_images, valid_labels = self.space.valid_data.next()
                if self.step.distributed:
                    valid_images, valid_labels = distribute.split_batch(
                        self.strategy, valid_images, valid_labels,
                        getattr(data, "cross_modality", False))
            update = architecture_active and not (step == 0 and skip_first)
            values = self.step(images, labels, valid_images, valid_labels,
                               architecture_update=update)
            values = {name: float(value) for name, value in values.items()}
            arch_steps += int(update)
            for name in ("loss", "valid_loss"):
                if name in values and not math.isfinite(values[name]):
                    raise NonFiniteSearchLossError(
                        f"Non-finite {name} ({values[name]}) at epoch {epoch + 1}, step "
                        f"{step + 1}; stopping. The last good checkpoint in "
                        f"{self.checkpoint_manager.directory} is kept.")
            for name, value in values.items():
                sums[name] += value
            steps += 1
            if config.verbose and step % PRINT_FREQUENCY == 0:
                print(f"  epoch {epoch + 1} step {step + 1}/{total}: loss {values['loss']:.4f}"
                      + (f", valid loss {values['valid_loss']:.4f}"
                         if "valid_loss" in values else ""), flush=True)
        seconds = time.time() - started
        row = {"epoch": epoch + 1, "learning_rate": rate, "arch_learning_rate": arch_rate,
               "loss": sums["loss"] / max(steps, 1),
               "valid_loss": sums["valid_loss"] / arch_steps if arch_steps else float("nan"),
               "accuracy": sums["accuracy"] / max(steps, 1), "steps": steps,
               "arch_steps": arch_steps, "seconds": round(seconds, 3),
               "result": _result_text(self.space.derive())}
        self.log(f"Epoch {epoch + 1}: loss {row['loss']:.4f}, valid loss {row['valid_loss']:.4f}, "
                 f"accuracy {row['accuracy']:.4f} ({steps} steps, {seconds:.1f} s).")
        return row


def _result_text(result):
    if isinstance(result, (list, tuple)):
        return " ".join(str(entry) for entry in result)
    return str(result)


def search(config, dataframe=None):
    """Run a search from a :class:`SearchConfig`; returns ``(result, searcher)``."""
    searcher = Searcher(config, dataframe=dataframe)
    return searcher.search(), searcher


# Registers "bn_split" (nas.bn_split imports this module's interface, hence at the end).
from nas import bn_split as _bn_split  # noqa: E402,F401
