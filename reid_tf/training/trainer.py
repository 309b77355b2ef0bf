"""The training engine of reid-tf: :class:`Trainer`, the :class:`~reid_tf.training.engine.Engine`
whose step is one optimiser update, shared by FlipReID, MSINet and CM-NAS.

What a model family provides:

* ``models`` — a :class:`reid_tf.models.base.ReIDModels` (training/inference models, the
  backbone layer-name prefixes that ``freeze_backbone_for_N_epochs`` freezes, explicit L2
  penalties);
* ``objective(outputs, labels) -> {"total": ..., <part>: ...}`` — the loss, traced once;
* ``data`` — the training input (:class:`reid_tf.training.data.TrainingInput`): one
  ``tf.data`` dataset per epoch and a resumable sampler state.

The trainer adds to the engine's loop and bookkeeping: phases (frozen backbone, then
everything), optimiser groups (``backbone_learning_rate_multiplier``), the per-epoch
learning-rate schedule, dynamic loss scaling under ``mixed_float16``, optional weight EMA,
evaluation every N epochs (with ``best_checkpoint``, a
:class:`~reid_tf.training.selection.BestCheckpoint` that keeps the weights of the main phase's
best evaluation) and the progress bar.

Distribution (``strategy``, :mod:`reid_tf.runtime.distribute`): the models (and the EMA) must
have been built inside ``strategy.scope()``; the trainer builds its optimisers there, feeds
each replica its part of every global batch (whole identities; visible and infrared halves per
replica), evaluates the objective on the all-gathered outputs (the one-device loss),
back-propagates ``loss / R`` on every replica and reports the global losses.
"""
import sys

import numpy as np
import tensorflow as tf
import tf_keras as keras

from reid_tf.models.base import iter_layers, set_trainable_by_prefix
from reid_tf.runtime import distribute
from reid_tf.training.engine import Engine, NonFiniteLossError, Phase, on_replicas

__all__ = ["Trainer", "Phase", "NonFiniteLossError", "training_phases"]


def training_phases(epoch_num, freeze_backbone_for_N_epochs=0):
    """FlipReID's phases: ``training_A`` with the backbone frozen (if N > 0), then ``training_B``.

    Each phase counts its epochs from 0, so the learning-rate schedule restarts (with its
    warm-up) when the backbone is unfrozen, as in the reference (flipreid.md §6.6).
    """
    phases = []
    if freeze_backbone_for_N_epochs > 0:
        phases.append(Phase("training_A", freeze_backbone_for_N_epochs, True))
    if epoch_num > 0:
        phases.append(Phase("training_B", epoch_num, False))
    return phases


def backbone_variable_ids(model, prefixes):
    """ids of the variables that belong to layers named with one of ``prefixes``."""
    prefixes = tuple(prefixes)
    ids = set()
    if not prefixes:
        return ids
    for layer in iter_layers(model):
        if layer.name.startswith(prefixes):
            ids.update(id(variable) for variable in layer.weights)
    return ids


def uses_loss_scaling():
    """True when the global Keras dtype policy computes in float16 (``mixed_float16``).

    Its gradients need loss scaling; ``mixed_bfloat16`` has float32's exponent range and
    needs none.
    """
    return keras.mixed_precision.global_policy().compute_dtype == "float16"


def _unscaled_gradients(optimizer, gradients, skip_together=False):
    """Divide the gradients by ``optimizer``'s loss scale (a ``LossScaleOptimizer``).

    With ``skip_together`` (several optimiser groups, each a ``LossScaleOptimizer`` that skips
    its update on a non-finite gradient) every gradient becomes NaN when any is non-finite, so
    all groups skip the same steps and keep the same loss scale.
    """
    gradients = optimizer.get_unscaled_gradients(gradients)
    if not skip_together:
        return gradients
    present = [gradient for gradient in gradients if gradient is not None]
    if not present:
        return gradients
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(gradient))
                                     for gradient in present]))
    poison = tf.where(finite, 0.0, float("nan"))
    return [None if gradient is None else gradient + tf.cast(poison, gradient.dtype)
            for gradient in gradients]


class Trainer(Engine):
    """The training loop; see the module docstring.

    ``strategy``: the ``tf.distribute`` strategy the models were built under (default: the
    current one). ``restore_folder``: the run folder whose checkpoint :meth:`restore` reads
    (default ``output_folder``; a multi-worker run's non-chief workers write into a temporary
    folder and resume from the chief's). ``after_epoch(trainer, phase, epoch)`` runs after
    every epoch's steps, before its evaluation and checkpoint. ``best_checkpoint``
    (:class:`~reid_tf.training.selection.BestCheckpoint`) considers every evaluation of the
    last phase, before the epoch's checkpoint (so a resumed epoch is considered again).
    """

    def __init__(self, *, models, objective, data, schedule, optimizer_factory, output_folder,
                 epoch_num, freeze_backbone_for_N_epochs=0, evaluate_every_N_epochs=10,
                 evaluate=None, backbone_learning_rate_multiplier=1.0, ema=None,
                 ema_reset_every_N_epochs=0, training_inputs=None, verbose=1,
                 checkpoint_max_to_keep=2, jit_compile=False, after_epoch=None, strategy=None,
                 restore_folder=None, best_checkpoint=None):
        super().__init__(output_folder, training_phases(epoch_num, freeze_backbone_for_N_epochs),
                         strategy=strategy, restore_folder=restore_folder,
                         jit_compile=jit_compile, position_column="global_epoch",
                         verbose=verbose, checkpoint_max_to_keep=checkpoint_max_to_keep)
        self.cross_modality = bool(getattr(data, "cross_modality", False))
        self.models = models
        self.training_model = models.training_model
        self.objective = objective
        self.data = data
        self.schedule = schedule
        self.epoch_num = epoch_num
        self.evaluate_every_N_epochs = evaluate_every_N_epochs
        self.evaluate_fn = evaluate
        self.ema = ema
        self.ema_reset_every_N_epochs = ema_reset_every_N_epochs
        self.training_inputs = training_inputs or (lambda images: images)
        self.after_epoch = after_epoch
        self.best_checkpoint = best_checkpoint
        self.last_evaluation = None
        self.loss_scaling = uses_loss_scaling()
        self.groups = self._make_groups(optimizer_factory, backbone_learning_rate_multiplier)
        self.regularization = list(models.regularization or ())
        objects = {"model": self.training_model}
        for name, _, optimizer, _ in self.groups:
            objects[f"optimizer_{name}"] = optimizer
        if ema is not None:
            objects["ema"] = ema
        self.track(objects, {"data_state": data})
        self._trainable_snapshot = None

    def _make_groups(self, optimizer_factory, backbone_learning_rate_multiplier):
        """Optimiser groups: the backbone may train at a multiple of the head learning rate
        (CM-NAS: 0.1). Each group has its own optimiser so Adam's moments stay per group."""
        all_variables = self.training_model.trainable_variables
        multiplier = float(backbone_learning_rate_multiplier)
        backbone_ids = (backbone_variable_ids(self.training_model, self.models.backbone_prefixes)
                        if multiplier != 1.0 else set())
        groups = [("backbone", multiplier, [v for v in all_variables if id(v) in backbone_ids]),
                  ("head", 1.0, [v for v in all_variables if id(v) not in backbone_ids])]
        built = []
        for name, group_multiplier, variables in groups:
            if not variables:
                continue
            with self.strategy.scope():
                optimizer = optimizer_factory(name)
                if self.loss_scaling and not isinstance(
                        optimizer, keras.mixed_precision.LossScaleOptimizer):
                    # float16 gradients underflow: dynamic loss scaling (start 2**15, halve
                    # on a non-finite step, which is skipped; double after 2000 good steps).
                    optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
                # Build on every variable of the group: the frozen phase then trains a subset and
                # the optimiser state carries over when the backbone is unfrozen (as in TF 2.2).
                optimizer.build(variables)
            built.append((name, group_multiplier, optimizer, {id(v) for v in variables}))
        return built

    # ------------------------------------------------------------------ the step
    def _regularization_loss(self):
        total = 0.0
        for variable, factor, _ in self.regularization:
            total += factor * tf.reduce_sum(tf.square(tf.cast(variable, tf.float32)))
        return total

    def _make_train_step(self):
        variables = self.training_model.trainable_variables
        groups = []
        for name, _, optimizer, ids in self.groups:
            indices = [i for i, v in enumerate(variables) if id(v) in ids]
            groups.append((optimizer, indices))
        # With loss scaling, the last group's optimiser (the head: never frozen) scales the
        # loss and unscales every gradient.
        scaling_optimizer = groups[-1][0] if groups else None

        def step(images, labels):
            with tf.GradientTape() as tape:
                outputs = self.training_model(self.training_inputs(images), training=True)
                losses = self._objective_losses(outputs, labels)
                total = losses["total"]
                if self.regularization:
                    regularization = self._regularization_loss()
                    losses["regularization"] = regularization
                    total = total + regularization
                losses["total"] = total
                # Each replica back-propagates its share: the optimisers sum the replicas'
                # gradients (one replica: the loss itself).
                scaled = total / self.replicas if self.replicas > 1 else total
                if self.loss_scaling:
                    scaled = scaling_optimizer.get_scaled_loss(scaled)
            gradients = tape.gradient(scaled, variables)
            if self.loss_scaling:
                gradients = _unscaled_gradients(scaling_optimizer, gradients,
                                                skip_together=len(groups) > 1)
            for optimizer, indices in groups:
                pairs = [(gradients[i], variables[i]) for i in indices if gradients[i] is not None]
                if pairs:
                    optimizer.apply_gradients(pairs)
            if self.ema is not None:
                # Inside the replica: every replica's copies see the same (synchronised)
                # values, so the shadows stay identical without communication.
                self.ema.update()
            return losses

        # Gathered terms are equal on every replica; per-replica terms are averaged.
        return tf.function(on_replicas(self.strategy, step, "mean"),
                           jit_compile=self.jit_compile, reduce_retracing=True)

    def _objective_losses(self, outputs, labels):
        """The objective on the global batch: with several replicas in sync, the outputs and
        labels are all-gathered first (the outputs the objective lists in
        ``per_replica_outputs`` stay per replica, with their own labels)."""
        if self.replicas == 1 or not self.distributed:
            return dict(self.objective(outputs, labels))
        local_keys = tuple(getattr(self.objective, "per_replica_outputs", ()))
        shared = {name: value for name, value in outputs.items() if name not in local_keys}
        gathered = distribute.all_gather_batch(shared, self.cross_modality)
        global_labels = distribute.all_gather_batch(labels, self.cross_modality)
        local = {name: value for name, value in outputs.items() if name in local_keys}
        if local:
            return dict(self.objective({**gathered, **local}, global_labels,
                                       local_labels=labels))
        return dict(self.objective(gathered, global_labels))

    # ------------------------------------------------------------------ phases and epochs
    def begin_fit(self, phase_index, epoch):
        if (phase_index, epoch) != (0, 0):
            self.log(f"Resuming from checkpoint: phase {phase_index}, epoch {epoch}.")

    def begin_phase(self, phase):
        if phase.freeze_backbone:
            # Remember every layer's flag so unfreezing restores layers that are frozen by
            # design (rather than making everything trainable).
            self._trainable_snapshot = [(layer, layer.trainable)
                                        for layer in iter_layers(self.training_model)]
            set_trainable_by_prefix(self.training_model, self.models.backbone_prefixes, False)
        trainable = self.training_model.trainable_variables
        self.log(f"Phase {phase.name}: {phase.epochs} epochs, {len(trainable)} trainable "
                 f"variables ({sum(int(np.prod(v.shape)) for v in trainable):,} parameters).")

    def end_phase(self, phase):
        if self._trainable_snapshot is not None:
            for layer, trainable in self._trainable_snapshot:
                layer._trainable = trainable  # noqa: SLF001 (no propagation to children)
            self._trainable_snapshot = None

    def _set_learning_rates(self, rate):
        for _, multiplier, optimizer, _ in self.groups:
            optimizer.learning_rate = rate * multiplier

    def begin_epoch(self, phase, epoch, global_epoch):
        self._rate = self.schedule(epoch)
        self._set_learning_rates(self._rate)
        self._phase, self._epoch, self._images_seen = phase, epoch, 0
        verbose = (1 if sys.stdout.isatty() else 2) if self.verbose else 0
        self._progbar = keras.utils.Progbar(self.data.steps_per_epoch, verbose=verbose,
                                            stateful_metrics=None)
        if self.verbose:
            print(f"{phase.name} epoch {epoch + 1}/{phase.epochs} (learning rate "
                  f"{self._rate:.6g})", flush=True)

    def epoch_batches(self, global_epoch):
        if self.distributed:
            return distribute.distribute_batches(
                self.strategy, lambda: self.data.epoch_dataset(global_epoch),
                self.cross_modality)
        return self.data.epoch_dataset(global_epoch)

    def train_step(self, train_step, step_index, batch):
        images, labels = batch
        losses = train_step(images, labels)
        values = {name: float(value) for name, value in losses.items()}
        if not np.isfinite(values["total"]):
            step_number = int(self.groups[-1][2].iterations.numpy())
            self.check_finite({"loss": values["total"]}, ["loss"],
                              f"training step {step_number} ({self._phase.name} epoch "
                              f"{self._epoch + 1}, step {step_index + 1})")
        self._images_seen += (int(self.data.batch_size) if self.distributed
                              else int(images.shape[0]))
        self._progbar.update(step_index + 1, list(values.items()))
        return values

    def epoch_row(self, phase, epoch, global_epoch, sums, count, seconds):
        row = {"phase": phase.name, "epoch": epoch + 1, "global_epoch": global_epoch + 1,
               "learning_rate": self._rate, "steps": count,
               "images_per_second": self._images_seen / seconds if seconds > 0 else 0.0}
        row.update({f"loss_{name}" if name != "total" else "loss": value / max(count, 1)
                    for name, value in sums.items()})
        return row

    def should_evaluate(self, epoch_in_phase):
        n = self.evaluate_every_N_epochs
        if self.evaluate_fn is None or n <= 0:
            return False
        return (epoch_in_phase + 1) % n == 0 or epoch_in_phase + 1 == self.epoch_num

    def evaluate(self, tag):
        if self.evaluate_fn is None:
            return None
        result = self.evaluate_fn(self.models.inference_model, tag)
        self.last_evaluation = result
        return result

    def end_epoch(self, phase, epoch, row):
        if self.after_epoch is not None:
            self.after_epoch(self, phase, epoch)
        if self.should_evaluate(epoch):
            metrics = self.evaluate(f"{phase.name}_epoch{epoch + 1}")
            if metrics:
                row.update({key: value for key, value in metrics.items()
                            if isinstance(value, (int, float))})
            if self.best_checkpoint is not None and phase is self.phases[-1]:
                self.best_checkpoint.consider(metrics, phase=phase.name, epoch=epoch + 1,
                                              global_epoch=row["global_epoch"])
        final_epoch = phase is self.phases[-1] and epoch + 1 == phase.epochs
        reset = (self.ema is not None and self.ema_reset_every_N_epochs > 0
                 and (epoch + 1) % self.ema_reset_every_N_epochs == 0 and not final_epoch)
        # CM-NAS pulls the live weights back to the EMA shadow after evaluating; the
        # checkpoint then holds what training continues from (and the shadow itself). After
        # the final epoch nothing trains on: the run keeps (and saves) the live weights it just
        # evaluated, which is what the reference's final checkpoint holds and its test
        # launchers evaluate (cmnas.md §6.6).
        if reset:
            self.ema.copy_shadow_to_model()
