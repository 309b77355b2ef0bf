"""What ``solution.py`` runs: load the data, build the model, train, evaluate, export.

The run folder is ``<output_folder_path>/<dataset_name>_<backbone_model_name>``. Unlike the
reference (which deletes it at start-up), it is kept so that running the same command again
resumes from its checkpoint; ``--overwrite_output_folder`` starts afresh.

Files written there: ``checkpoint/`` (resumable state), ``training_model.h5`` and
``inference_model.h5`` (weights: the final epoch's, or with ``--checkpoint_selection best`` the
best evaluation's, with the final epoch's in ``training_model_last.h5`` /
``inference_model_last.h5`` and the best's epoch and metrics in ``best_checkpoint.json``;
:mod:`reid_tf.training.selection`), ``results.json`` (the run's metrics and which weight file
holds what), ``evaluation.json`` (the last evaluation: ``rank1``,
``rank5``, ``rank10``, ``mAP``, ``mINP`` as fractions; RegDB adds ``reverse_direction``,
CM-NAS adds ``pre_bnneck`` with the same metrics for the pre-BNNeck features),
``cmc_curve.png``, ``rank_list.png``,
``history.csv`` (+ one PNG per column), ``tensorboard/``, ``test.npz`` with
``--save_data_to_disk`` and the exports of ``--export_formats``.

``--strategy`` (:mod:`reid_tf.runtime.distribute`) is created first (a multi-worker strategy
must exist before TensorFlow runs anything); the models, optimisers and EMA are built in its
scope. On a multi-worker run every worker runs the whole job, but only the chief writes the run
folder: the others write into a temporary folder that is removed at the end.

This is an entry point: it turns the flag values into the library's settings
(:mod:`reid_tf.cli.settings`) and nothing below it sees the flags.
"""
import os
import sys

import tensorflow as tf

from reid_tf.cli import settings as cli_settings
from reid_tf.cli.validation import check_files, validate_flags
from reid_tf.data import dataset_protocol, load_dataset
from reid_tf.evaluation.dataset_evaluator import DatasetEvaluator
from reid_tf.models.factory import build_models, evaluation_outputs
from reid_tf.retrieval.run_settings import RunSettings, save_run_settings
from reid_tf.runtime import distribute, environment
from reid_tf.runtime.choices import CROSS_MODALITY_PROTOCOLS
from reid_tf.runtime.files import write_json
from reid_tf.training.engine import RunFolder


def print_flags(values):
    """Print the command line and every flag, sorted by name (as the reference does)."""
    print("Getting hyperparameters ...")
    print("Using command {}".format(" ".join(sys.argv)))
    flag_values = values.flag_values_dict()
    for name in sorted(flag_values):
        print(f"{name} {flag_values[name]}")


def run_folder_path(values):
    return os.path.abspath(os.path.join(os.path.expanduser(values.output_folder_path),
                                        f"{values.dataset_name}_{values.backbone_model_name}"))


def load_pretrained_weights(weight_targets, file_path):
    """Load ``.h5`` weights into the first of ``weight_targets`` (models sharing their layers:
    training model, plain training model, inference model) whose layout fits the file.

    When none fits exactly (a classifier for another number of identities, SAM added), the
    tensors are copied by layer name and shape like the references' ``copy_state_dict``
    (:func:`reid_tf.runtime.checkpoints.load_h5_by_name_and_shape`) into the target that takes
    the most of them, and every weight left as it was and every file tensor not loaded is
    listed by name. Returns a summary for ``results.json``.
    """
    from reid_tf.runtime.checkpoints import load_h5_by_name_and_shape
    file_path = os.path.expanduser(file_path)
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"--pretrained_model_file_path: no such file {file_path}.")
    errors = []
    for model in weight_targets:
        try:
            model.load_weights(file_path)
            print(f"Loaded weights from {file_path} into {model.name}.")
            return {"file": file_path, "model": model.name, "match": "exact"}
        except (ValueError, KeyError, OSError) as error:
            errors.append(f"{model.name}: {error}")
    reports = [load_h5_by_name_and_shape(model, file_path, assign=False)
               for model in weight_targets]
    best = max(range(len(reports)), key=lambda index: len(reports[index].assigned))
    model, report = weight_targets[best], reports[best]
    if not report.assigned:
        raise ValueError(f"--pretrained_model_file_path={file_path} does not fit this model "
                         f"({weight_targets[0].name}): no tensor matches by name and shape; "
                         + " | ".join(errors))
    report = load_h5_by_name_and_shape(model, file_path)
    print(f"{file_path} does not fit {model.name} exactly; copied by layer name and shape: "
          f"{len(report.assigned)} of {len(model.weights)} weights loaded.")
    if report.unassigned:
        print(f"{len(report.unassigned)} weights of {model.name} not in the file or of another "
              "shape, left at their initial value:")
        for name in report.unassigned:
            print(f"  {name}")
    if report.unused:
        reasons = dict(report.skipped)
        print(f"{len(report.unused)} tensors of the file not loaded:")
        for key in report.unused:
            print(f"  {key}" + (f": {reasons[key]}" if key in reasons else ": no such weight"))
    return {"file": file_path, "model": model.name, "match": "by_name_and_shape",
            "loaded": len(report.assigned), "not_loaded": list(report.unassigned),
            "file_tensors_not_loaded": list(report.unused)}


def save_weights(models, weight_targets, run_folder, selection="last"):
    """The final epoch's weights: the training model in the family's plain training-model
    layout (the same with and without the flip structure, which adds no weights) and the
    inference model, as ``training_model.h5`` / ``inference_model.h5`` (``last``) or
    ``training_model_last.h5`` / ``inference_model_last.h5`` (``best``), each written
    atomically."""
    from reid_tf.training.selection import last_file_names, save_weights_atomically
    training_name, inference_name = last_file_names(selection)
    save_weights_atomically(weight_targets[-2], os.path.join(run_folder, training_name))
    save_weights_atomically(models.inference_model, os.path.join(run_folder, inference_name))


def export_models(models, run_folder, formats, weights_saved=True, tflite_quantization="float32"):
    """Write the ``--export_formats`` of the inference model into ``run_folder``
    (:mod:`reid_tf.export`); ``h5`` only when the weights were not saved already (after
    training :func:`save_weights` wrote ``inference_model.h5``; ``--evaluation_only`` did
    not)."""
    from reid_tf import export
    for name in [part for part in formats.split(",") if part]:
        if name == "h5" and weights_saved:
            continue
        path = export.export_inference_model(models.inference_model, run_folder, name,
                                             tflite_quantization=tflite_quantization)
        print(f"Exported the inference model as {name}: {path}")


def run(values):
    """Run ``solution.py`` with the parsed absl flag values."""
    validate_flags(values)
    check_files(values)
    strategy = distribute.create_strategy(values.strategy)
    distribute.check_identities_per_replica(values.identity_num_per_batch, strategy)
    print_flags(values)
    print(distribute.describe(strategy), flush=True)
    folder = RunFolder(run_folder_path(values), strategy,
                       overwrite=values.overwrite_output_folder)
    print(f"Run folder: {folder.chief}")
    environment.configure(values.seed, values.deterministic, values.mixed_precision)
    try:
        return _run(values, strategy, folder)
    finally:
        folder.close()


def _evaluator(values, dataset_name, root_folder_path, dataframe, output_folder, protocol,
               testing_size=1.0, main_dataset=True):
    feature_index, secondary = evaluation_outputs(values.backbone_model_name)
    return DatasetEvaluator(
        cli_settings.evaluation_settings(values), dataset_name, root_folder_path, dataframe,
        output_folder, feature_index, testing_size, secondary_features=secondary,
        loader_options=cli_settings.loader_options(values, protocol, main_dataset),
        run_flags=cli_settings.run_flags(values))


def _mixed_batch_inputs(images):
    return [images, tf.constant(0, tf.int32)]


def _best_checkpoint(values, weight_targets, models, folder):
    """The :class:`~reid_tf.training.selection.BestCheckpoint` of ``--checkpoint_selection
    best`` (None for ``last``), holding the best so far of a resumed run."""
    if values.checkpoint_selection != "best":
        print("Checkpoint selection: last (training_model.h5 and inference_model.h5 hold the "
              "final epoch's weights).")
        return None
    from reid_tf.training.selection import BestCheckpoint
    best = BestCheckpoint(folder.path, weight_targets[-2], models.inference_model,
                          metric="mAP", restore_folder=folder.restore_path)
    print(best.describe(), flush=True)
    return best


def _selection_record(values, best, last_evaluation):
    """``results.json``'s ``checkpoint_selection``: the mode, the metric, the best epoch and
    its metrics, and which file holds which weights."""
    from reid_tf.training.selection import last_file_names, scalar_metrics
    training_last, inference_last = last_file_names(values.checkpoint_selection)
    last_text = "weights after the final epoch"
    record = {"mode": values.checkpoint_selection}
    if best is None:
        record["files"] = {training_last: last_text, inference_last: last_text}
        return record
    state = best.state
    best_text = (f"weights of the best evaluation by {best.metric}: {state['phase']} epoch "
                 f"{state['epoch']} (run epoch {state['global_epoch']}), {best.metric} "
                 f"{state['value']:.6f}")
    record.update(metric=best.metric, phase=state["phase"], epoch=state["epoch"],
                  global_epoch=state["global_epoch"], value=state["value"],
                  metrics=state["metrics"],
                  last_metrics=scalar_metrics(last_evaluation) if last_evaluation else None,
                  files={"training_model.h5": best_text, "inference_model.h5": best_text,
                         training_last: last_text, inference_last: last_text})
    return record


def _trainer(values, models, data, evaluator, folder, strategy, best_checkpoint=None):
    """The :class:`~reid_tf.training.trainer.Trainer` of the flags."""
    from reid_tf.losses.objective import Objective
    from reid_tf.training import trainer as trainer_module
    from reid_tf.training.optimizers import build_optimizer
    from reid_tf.training.schedules import LearningRateSchedule, parse_milestones

    schedule = LearningRateSchedule(
        mode=values.learning_rate_mode, start=values.learning_rate_start,
        end=values.learning_rate_end, base=values.learning_rate_base,
        warmup_epochs=values.learning_rate_warmup_epochs,
        steady_epochs=values.learning_rate_steady_epochs,
        drop_factor=values.learning_rate_drop_factor,
        lower_bound=values.learning_rate_lower_bound, epoch_num=values.epoch_num,
        milestones=parse_milestones(values.learning_rate_milestones),
        warmup_factor=values.learning_rate_warmup_factor, gamma=values.learning_rate_gamma)
    epsilon = None if values.adam_epsilon < 0 else values.adam_epsilon

    def optimizer_factory(group_name):
        return build_optimizer(values.optimizer_name, schedule(0), momentum=values.momentum,
                               weight_decay=values.weight_decay, beta_1=values.adam_beta_1,
                               beta_2=values.adam_beta_2, epsilon=epsilon)

    ema = None
    if values.ema_decay > 0:
        from reid_tf.training.ema import WeightEMA
        with strategy.scope():
            ema = WeightEMA(models.training_model, decay=values.ema_decay)

    # CM-NAS and the switchable MSINet take [images, mode]; training batches are mixed (0).
    training_inputs = _mixed_batch_inputs if len(models.training_model.inputs) > 1 else None
    objective = Objective(cli_settings.objective_config(values, data.cross_modality))
    return trainer_module.Trainer(
        models=models, objective=objective, data=data, schedule=schedule,
        optimizer_factory=optimizer_factory, output_folder=folder.path,
        epoch_num=values.epoch_num,
        freeze_backbone_for_N_epochs=values.freeze_backbone_for_N_epochs,
        evaluate_every_N_epochs=(values.evaluate_testing_every_N_epochs
                                 if evaluator is not None else 0),
        evaluate=evaluator,
        backbone_learning_rate_multiplier=values.backbone_learning_rate_multiplier,
        ema=ema, ema_reset_every_N_epochs=values.ema_reset_every_N_epochs,
        training_inputs=training_inputs, jit_compile=values.jit_compile, strategy=strategy,
        # A fresh start (--overwrite_output_folder) resumes from nothing on every worker.
        restore_folder=folder.restore_path, best_checkpoint=best_checkpoint)


def _run(values, strategy, folder):
    """:func:`run` after the strategy and the folders are set up. What the loaders and the
    sampler leave out is logged and recorded in ``results.json`` (``left_out``)."""
    from reid_tf.data.left_out import collect_left_out
    with collect_left_out() as left_out:
        return _run_collecting(values, strategy, folder, left_out)


def _run_collecting(values, strategy, folder, left_out):
    run_folder = folder.path
    protocol = dataset_protocol(values.dataset_name)
    dataframe = load_dataset(values.dataset_name, values.root_folder_path,
                             **cli_settings.loader_options(values, protocol))
    train = dataframe[dataframe["split"] == "train"].reset_index(drop=True)
    cross_modality = protocol in CROSS_MODALITY_PROTOCOLS
    from reid_tf.data.pipeline import make_label_map
    label_map = make_label_map(train)
    print(f"{values.dataset_name}: {len(train)} training images of {len(label_map)} identities, "
          f"{int((dataframe['split'] == 'query').sum())} query and "
          f"{int((dataframe['split'] == 'gallery').sum())} gallery images.")

    model_settings = cli_settings.model_settings(values)
    models, _, weight_targets = build_models(model_settings, len(label_map),
                                             cross_modality=cross_modality, strategy=strategy)
    save_run_settings(run_folder, RunSettings(
        model=model_settings, evaluation=cli_settings.evaluation_settings(values),
        num_classes=len(label_map), cross_modality=cross_modality,
        dataset_name=values.dataset_name))
    results = {}
    if values.pretrained_model_file_path:
        results["pretrained"] = load_pretrained_weights(weight_targets,
                                                        values.pretrained_model_file_path)

    evaluator = None
    if values.testing_size != 0:
        evaluator = _evaluator(values, values.dataset_name, values.root_folder_path, dataframe,
                               run_folder, protocol, values.testing_size)

    if values.evaluation_only:
        results["evaluation"] = evaluator(models.inference_model, "evaluation")
        results["left_out"] = list(left_out)
        export_models(models, run_folder, values.export_formats, weights_saved=False,
                      tflite_quantization=values.tflite_quantization)
        print("All done!")
        return results

    if values.evaluate_before_training and evaluator is not None:
        results["untrained"] = evaluator(models.inference_model, "untrained", write=False)

    from reid_tf.training.data import TrainingInput
    augmentation = cli_settings.augmentation_settings(
        values, cross_domain=bool(values.target_dataset_name)).build()
    data = TrainingInput(
        train, values.identity_num_per_batch, values.image_num_per_identity,
        values.steps_per_epoch, values.image_height, values.image_width, augmentation,
        seed=values.seed, policy=values.sampler_policy, cross_modality=cross_modality,
        label_map=label_map, workers=values.workers, cache_images=values.cache_images,
        resize=values.resize_interpolation)
    best = _best_checkpoint(values, weight_targets, models, folder)
    trainer = _trainer(values, models, data, evaluator, folder, strategy, best)
    trainer.fit()
    trainer.close()
    save_weights(models, weight_targets, run_folder, values.checkpoint_selection)
    if os.path.exists(trainer.history_path):
        from reid_tf.visualization import plot_history
        plot_history(trainer.history_path, os.path.join(run_folder, "history"))
    last_evaluation = None
    if evaluator is not None:
        last_evaluation = (trainer.last_evaluation
                           or evaluator(models.inference_model, "trained"))
        results["trained"] = last_evaluation
    if best is not None:
        # From here on (target evaluation, exports) the models hold the best weights, and
        # "trained" is what training_model.h5 scores; "last" is the final epoch's evaluation.
        best.restore_best_weights()
        results["trained"] = dict(best.state["metrics"])
        results["last"] = last_evaluation
        print(f"Kept the best {best.metric} ({best.state['value']:.6f}, "
              f"{best.state['phase']} epoch {best.state['epoch']}) as training_model.h5; the "
              f"final epoch's weights are in training_model_last.h5.")
    results["checkpoint_selection"] = _selection_record(values, best, last_evaluation)
    if values.target_dataset_name:
        target_root = values.target_root_folder_path or values.root_folder_path
        target_protocol = dataset_protocol(values.target_dataset_name)
        target_frame = load_dataset(values.target_dataset_name, target_root,
                                    **cli_settings.loader_options(values, target_protocol,
                                                                  False))
        target_evaluator = _evaluator(values, values.target_dataset_name, target_root,
                                      target_frame, os.path.join(run_folder, "target"),
                                      target_protocol, main_dataset=False)
        results["target"] = target_evaluator(models.inference_model, "target")
    export_models(models, run_folder, values.export_formats,
                  tflite_quantization=values.tflite_quantization)
    results["left_out"] = list(left_out)
    if "untrained" in results and "trained" in results:
        print_comparison(results["untrained"], results["trained"], results.get("last"))
    write_json(os.path.join(run_folder, "results.json"), results, indent=2, default=float)
    print("All done!")
    return results


def print_comparison(untrained, trained, last=None):
    """The metrics table (``last``: the final epoch's, when ``trained`` is the best)."""
    print("\n               rank-1   rank-5  rank-10      mAP")
    rows = [("untrained", untrained), ("trained", trained)]
    if last is not None:
        rows = [("untrained", untrained), ("best", trained), ("last", last)]
    for name, summary in rows:
        print(f"{name:>12}  " + "  ".join(f"{100 * summary.get(key, float('nan')):6.2f}%"
                                          for key in ("rank1", "rank5", "rank10", "mAP")))
    print(flush=True)
