"""The search loop: :class:`Searcher`, the :class:`~reid_tf.training.engine.Engine` whose step
is bilevel (:class:`nas.bilevel.BilevelStep`) over a search space (:mod:`nas.spaces`).

The engine gives it the loop, the run folder (only the chief writes it), the checkpoint and
resume, the history, TensorBoard and the non-finite guard; the searcher adds the search space,
the two schedules and optimisers (weights and α), the valid batch of every step, the log of α
and of the derived result, and the evaluation of the search network.

Distribution (``--strategy``, :mod:`reid_tf.runtime.distribute`): the network, α, the
memories and both optimisers are built inside the strategy's scope, and with several replicas
every BN is synchronised across them. Before a memory update the normalised features and labels
are all-gathered in global batch order and every replica applies the same sequential update to
its copy, so the copies stay identical (:mod:`nas.bilevel` for the step).

Outputs (run folder, ``<output_folder_path>/<dataset_name>_search``)
--------------------------------------------------------------------
``genotype.json`` (the current result, rewritten at each genotype interval and at the end; the
space's ``result_file_name``, e.g. ``config.cfg`` for ``bn_split``),
``alpha_history.npz`` and ``alpha_history.png``, ``search.log`` (genotypes, ``softmax(α)``,
epoch summaries, evaluations),
``history.csv`` (one row per epoch), ``tensorboard/``, ``evaluation/`` (the last evaluation:
``evaluation.json``, CMC curve, rank list), ``weights_epoch<E>.h5`` (the network weights at
each evaluation, without α) and ``checkpoint/`` (the resumable state: weights, α, both
optimisers, both memories, the epoch and both sampler states; each with a SHA-256 manifest,
:mod:`reid_tf.training.checkpointing`). Running the same search again continues from the latest
complete checkpoint. The run folder is locked (``.run.lock``) from the searcher's construction
until :meth:`Searcher.search` returns: a second search on it stops at once.
"""
import os
import time

import numpy as np

from nas.bilevel import BilevelStep
from nas.config import run_folder
from nas.spaces import search_space_class
from nas.spaces.base import evaluation_settings
from reid_tf.runtime import distribute, environment
from reid_tf.runtime.choices import CROSS_MODALITY_PROTOCOLS
from reid_tf.runtime.files import atomic_path
from reid_tf.training.engine import Engine, NonFiniteLossError, Phase, RunFolder

PRINT_FREQUENCY = 100
HISTORY_COLUMNS = ["epoch", "learning_rate", "arch_learning_rate", "loss", "valid_loss",
                   "accuracy", "steps", "arch_steps", "seconds", "result", "rank1", "rank5",
                   "rank10", "mAP"]

# A search's non-finite loss is the engine's error.
NonFiniteSearchLossError = NonFiniteLossError


class Searcher(Engine):
    """The resumable search loop (module docstring). ``Searcher(config).search()`` runs it.

    Args:
      config: a :class:`nas.config.SearchConfig`. Building the searcher seeds Python, numpy
        and TensorFlow with ``config.seed`` and, with ``config.deterministic``, enables
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
        strategy = (strategy if strategy is not None
                    else distribute.create_strategy(getattr(config, "strategy", "default")))
        environment.configure(config.seed, config.deterministic, config.mixed_precision)
        self.after_epoch = after_epoch
        self.run_folder = RunFolder(run_folder(config), strategy)
        self.chief_folder, self.folder = self.run_folder.chief, self.run_folder.path
        super().__init__(self.folder, [Phase("search", config.epoch_num)], strategy=strategy,
                         restore_folder=self.chief_folder, jit_compile=config.jit_compile,
                         history_columns=HISTORY_COLUMNS, position_column="epoch",
                         log_file="search.log", verbose=config.verbose)
        self.dataframe = self._dataset(config, dataframe)
        input_shape = (config.image_height, config.image_width, 3)
        space_class = search_space_class(config.search_space)
        distribute.check_identities_per_replica(config.identity_num_per_batch, self.strategy)
        with self.strategy.scope():
            self._build(config, space_class, input_shape)
        self.track({"weight_optimizer": self.weight_optimizer,
                    "arch_optimizer": self.arch_optimizer, **self.space.checkpoint_objects()},
                   {"train_data_state": self.space.train_data,
                    "valid_data_state": self.space.valid_data})
        self.alpha_history = self.space.alpha_history(os.path.join(self.folder,
                                                                   "alpha_history.npz"))
        self._evaluator = None
        self.last_evaluation = None

    def _dataset(self, config, dataframe):
        from reid_tf.data import dataset_protocol, load_dataset

        self.protocol = dataset_protocol(config.dataset_name)
        if self.protocol in CROSS_MODALITY_PROTOCOLS and config.search_space == "msi":
            raise ValueError(f"--dataset_name={config.dataset_name}: the msi search space "
                             "searches single-modality datasets (visible-infrared data needs "
                             "another --search_space).")
        if dataframe is None:
            dataframe = load_dataset(config.dataset_name, config.root_folder_path,
                                     **dict(config.dataset_options))
        if config.evaluation_interval > 0 and config.epoch_num > 0:
            if not {"query", "gallery"} <= set(dataframe["split"]):
                raise ValueError(f"{config.dataset_name}: the dataset has no query or gallery "
                                 "images to evaluate the search network on; set "
                                 "--evaluation_interval=0 to search without evaluation.")
        return dataframe

    def _build(self, config, space_class, input_shape):
        """The space, the schedules, both optimisers and the step (inside the strategy's
        scope)."""
        from reid_tf.models.sync_bn import synchronize_batch_normalization
        from reid_tf.training.optimizers import TorchAdam
        from reid_tf.training.schedules import LearningRateSchedule

        with distribute.keras_inputs_keep_batch_size():
            self.space = space_class(config, self.dataframe, input_shape)
        if self.strategy.num_replicas_in_sync > 1:
            synchronize_batch_normalization(self.space.weights_model)

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

    # ------------------------------------------------------------------ architecture log
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

    # ------------------------------------------------------------------ evaluation
    def should_evaluate(self, epoch):
        interval = self.config.evaluation_interval
        if interval <= 0:
            return False
        return (epoch + 1) % interval == 0 or epoch + 1 == self.config.epoch_num

    def evaluate(self, tag):
        """CMC/mAP of the search network's features on the test split (msinet.md §10): the
        space's own evaluation, or the search network's ``embed`` features (L2-normalised,
        squared euclidean) under the dataset's protocol."""
        from reid_tf.evaluation.dataset_evaluator import DatasetEvaluator

        started = time.time()
        folder = os.path.join(self.folder, "evaluation")
        summary = self.space.evaluate(self.dataframe, folder, tag)
        if summary is None:
            if self._evaluator is None:
                settings = evaluation_settings(self.config, metric="sqeuclidean",
                                               normalize=True, workers=self.config.workers)
                self._evaluator = DatasetEvaluator(settings, self.config.dataset_name,
                                                   self.config.root_folder_path,
                                                   self.dataframe, folder)
            summary = self._evaluator(self.space.embed, tag)
        keys = ("rank1", "rank5", "rank10", "mAP")
        self.log(f"[evaluation {tag}] " + ", ".join(f"{key} {100 * summary[key]:.2f}%"
                                                    for key in keys if key in summary)
                 + f" ({time.time() - started:.1f} s)")
        self.last_evaluation = summary
        return summary

    # ------------------------------------------------------------------ the loop's hooks
    def search(self):
        """Run (or continue) the search; returns the final result (the genotype for msi). The
        run folder's lock, taken when the searcher was built, is held until it returns."""
        self.run_folder.acquire()
        try:
            return self.fit()
        finally:
            self.run_folder.release()

    def begin_fit(self, phase_index, epoch):
        self.alpha_history.truncate(epoch)
        if epoch:
            self.log(f"Resuming the search from its checkpoint after epoch {epoch}.")
            return
        self.log(f"Search space {self.space.name} on {self.config.dataset_name}; run folder "
                 f"{self.folder}.")
        if hasattr(self.space, "summary"):
            self.log(self.space.summary())
        self.alpha_history.log(0, self.space.architecture_arrays()["alpha"])

    def _make_train_step(self):
        return self.step

    def begin_epoch(self, phase, epoch, global_epoch):
        config = self.config
        if (epoch + 1) % config.genotype_interval == 0 or epoch + 1 == config.epoch_num:
            self._log_architecture(epoch)
        self._rates = (self.weight_schedule(epoch), self.arch_schedule(epoch))
        self.weight_optimizer.learning_rate, self.arch_optimizer.learning_rate = self._rates
        self.space.begin_epoch(epoch)
        self._architecture_active = epoch >= self.space.weights_only_epochs
        self._epoch, self._arch_steps = epoch, 0
        self.log(f"Epoch {epoch + 1}/{config.epoch_num}: learning rate {self._rates[0]:.6g}, "
                 f"architecture learning rate {self._rates[1]:.6g}, "
                 f"{self.space.train_data.steps_per_epoch} steps.")

    def epoch_batches(self, global_epoch):
        data = self.space.train_data
        if self.step.distributed:
            return distribute.distribute_batches(
                self.strategy, lambda: data.epoch_dataset(global_epoch),
                getattr(data, "cross_modality", False))
        return data.epoch_dataset(global_epoch)

    def train_step(self, train_step, step_index, batch):
        images, labels = batch
        valid_images = valid_labels = None
        if self._architecture_active:
            valid_images, valid_labels = self.space.valid_data.next()
            if self.step.distributed:
                valid_images, valid_labels = distribute.split_batch(
                    self.strategy, valid_images, valid_labels,
                    getattr(self.space.train_data, "cross_modality", False))
        update = self._architecture_active and not (step_index == 0
                                                    and not self.config.clean_bilevel)
        values = train_step(images, labels, valid_images, valid_labels,
                            architecture_update=update)
        values = {name: float(value) for name, value in values.items()}
        self._arch_steps += int(update)
        self.check_finite(values, ("loss", "valid_loss"),
                          f"epoch {self._epoch + 1}, step {step_index + 1}")
        if self.config.verbose and step_index % PRINT_FREQUENCY == 0:
            print(f"  epoch {self._epoch + 1} step {step_index + 1}/"
                  f"{self.space.train_data.steps_per_epoch}: loss {values['loss']:.4f}"
                  + (f", valid loss {values['valid_loss']:.4f}"
                     if "valid_loss" in values else ""), flush=True)
        return values

    def epoch_row(self, phase, epoch, global_epoch, sums, count, seconds):
        arch_steps = self._arch_steps
        row = {"epoch": epoch + 1, "learning_rate": self._rates[0],
               "arch_learning_rate": self._rates[1],
               "loss": sums.get("loss", 0.0) / max(count, 1),
               "valid_loss": (sums.get("valid_loss", 0.0) / arch_steps if arch_steps
                              else float("nan")),
               "accuracy": sums.get("accuracy", 0.0) / max(count, 1), "steps": count,
               "arch_steps": arch_steps, "seconds": round(seconds, 3),
               "result": _result_text(self.space.derive())}
        self.log(f"Epoch {epoch + 1}: loss {row['loss']:.4f}, valid loss {row['valid_loss']:.4f}, "
                 f"accuracy {row['accuracy']:.4f} ({count} steps, {seconds:.1f} s).")
        return row

    def end_epoch(self, phase, epoch, row):
        if self.should_evaluate(epoch):
            summary = self.evaluate(f"epoch{epoch + 1}")
            row.update({key: summary[key] for key in ("rank1", "rank5", "rank10", "mAP")
                        if key in summary})
            with atomic_path(os.path.join(self.folder, f"weights_epoch{epoch + 1}.h5")) as path:
                self.space.weights_model.save_weights(path)

    def after_checkpoint(self, phase, epoch, row):
        if self.after_epoch is not None:
            self.after_epoch(self, epoch)

    def end_fit(self, rows):
        config = self.config
        result = self._log_architecture(config.epoch_num, final=True)
        if config.save_genotype_to and self.run_folder.is_chief:
            path = self.space.write_result(result, os.path.expanduser(config.save_genotype_to))
            self.log(f"Published the result to {path}.")
        if not self.run_folder.is_chief:
            self.close()
            self.run_folder.close()
        return result


def _result_text(result):
    if isinstance(result, (list, tuple)):
        return " ".join(str(entry) for entry in result)
    return str(result)


def search(config, dataframe=None):
    """Run a search from a :class:`nas.config.SearchConfig`; returns ``(result, searcher)``."""
    searcher = Searcher(config, dataframe=dataframe)
    return searcher.search(), searcher
