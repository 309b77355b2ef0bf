"""What ``solution.py`` runs: load the data, build the model, train, evaluate, export.

The run folder is ``<output_folder_path>/<dataset_name>_<backbone_model_name>``. Unlike the
reference (which deletes it at start-up), it is kept so that running the same command again
resumes from its checkpoint; ``--overwrite_output_folder`` starts afresh.

Files written there: ``checkpoint/`` (resumable state), ``training_model.h5`` and
``inference_model.h5`` (weights), ``evaluation.json`` (the last evaluation: ``rank1``,
``rank5``, ``rank10``, ``mAP``, ``mINP`` as fractions; RegDB adds ``reverse_direction``,
CM-NAS adds ``pre_bnneck`` with the same metrics for the pre-BNNeck features),
``cmc_curve.png``, ``rank_list.png``,
``history.csv`` (+ one PNG per column), ``tensorboard/``, ``test.npz`` with
``--save_data_to_disk`` and the exports of ``--export_formats``.

``--strategy`` (:mod:`reid_tf.training.distribute`) is created first (a multi-worker strategy
must exist before TensorFlow runs anything); the models, optimisers and EMA are built in its
scope. On a multi-worker run every worker runs the whole job, but only the chief writes the run
folder: the others write into a temporary folder that is removed at the end.
"""
import json
import os
import shutil
import sys
import time

import numpy as np
import pandas as pd

import reid_tf  # noqa: F401  (selects tf-keras)
import tensorflow as tf
import tf_keras as keras

from reid_tf.data import dataset_protocol, load_dataset
from reid_tf.evaluation.evaluator import (EvaluationOptions, FeatureExtractor, summarize_result,
                                          evaluate_features, select_test_subset,
                                          write_evaluation_outputs)
from reid_tf.flags import parse_dataset_options, validate_flags

CROSS_MODALITY_PROTOCOLS = ("sysu_mm01", "regdb")


def print_flags(values):
    """Print the command line and every flag, sorted by name (as the reference does)."""
    print("Getting hyperparameters ...")
    print("Using command {}".format(" ".join(sys.argv)))
    flag_values = values.flag_values_dict()
    for name in sorted(flag_values):
        print(f"{name} {flag_values[name]}")


def configure_runtime(values):
    """Seeds, determinism, mixed precision."""
    keras.utils.set_random_seed(values.seed)
    if values.deterministic:
        tf.config.experimental.enable_op_determinism()
    if values.mixed_precision:
        keras.mixed_precision.set_global_policy(values.mixed_precision)


def protocol_options(values, protocol, include_dataset_options=True):
    """Loader options: the protocol's (SYSU gallery pool, RegDB trial, VehicleID test size)
    and ``--dataset_options`` (which belong to ``--dataset_name``, not to the target)."""
    options = parse_dataset_options(values.dataset_options) if include_dataset_options else {}
    if protocol == "sysu_mm01":
        options.update(search_mode=values.sysu_search_mode, shot=values.sysu_shot)
    elif protocol == "regdb":
        options.update(trial_index=values.regdb_trial_index)
    elif protocol == "vehicleid":
        options.update(test_size=values.vehicleid_test_size)
    return options


def secondary_features(values):
    """Inference outputs reported next to the main evaluation feature: CM-NAS's pre-BNNeck
    ``global_feat`` (output 0; its reference prints it as the second line, cmnas.md §9.1)."""
    from reid_tf.models.factory import model_family
    if model_family(values.backbone_model_name) == "cmnas":
        return {"pre_bnneck": 0}
    return {}


def run_folder_path(values):
    return os.path.abspath(os.path.join(os.path.expanduser(values.output_folder_path),
                                        f"{values.dataset_name}_{values.backbone_model_name}"))


class DatasetEvaluator:
    """Evaluates an inference model on one dataset's test protocol and writes the outputs."""

    def __init__(self, values, dataset_name, root_folder_path, dataframe, output_folder,
                 feature_index=None, testing_size=1.0, secondary_features=None):
        """``feature_index`` selects the inference output that gives the reported metrics
        (``None``: all outputs concatenated). ``secondary_features`` maps an entry name to
        another output index (CM-NAS: ``{"pre_bnneck": 0}``); each is evaluated on the same
        extraction and stored in the summary under its name (a dict of the same metrics)."""
        self.values = values
        self.dataset_name = dataset_name
        self.root_folder_path = root_folder_path
        self.protocol = dataset_protocol(dataset_name)
        self.output_folder = output_folder
        self.feature_index = feature_index
        self.secondary_features = dict(secondary_features or {})
        if self.secondary_features and feature_index is None:
            raise ValueError("DatasetEvaluator: secondary_features need a feature_index for the "
                             "main entry.")
        query = dataframe[dataframe["split"] == "query"].reset_index(drop=True)
        gallery = dataframe[dataframe["split"] == "gallery"].reset_index(drop=True)
        if self.protocol == "standard" and testing_size not in (0, 1):
            query, gallery = select_test_subset(query, gallery, testing_size)
        self.query, self.gallery = query, gallery
        if len(query) == 0 or len(gallery) == 0:
            raise ValueError(f"{dataset_name}: the dataset has no query or gallery images to "
                             "evaluate on (set --testing_size 0 to train without evaluation).")
        self.options = EvaluationOptions(
            protocol=self.protocol, metric=values.distance_metric,
            normalize=bool(values.feature_normalization or self.protocol in
                           CROSS_MODALITY_PROTOCOLS),
            use_re_ranking=bool(values.use_re_ranking),
            max_rank=20 if self.protocol in CROSS_MODALITY_PROTOCOLS else 50,
            trial_num=values.evaluation_trial_num, sysu_shot=values.sysu_shot, seed=values.seed)

    def _extractor(self, inference_model):
        values = self.values
        batch_size = values.test_batch_size or (values.identity_num_per_batch
                                                * values.image_num_per_identity)
        # With secondary features every output is extracted in one pass (concatenated) and
        # cut into the outputs' columns afterwards.
        return FeatureExtractor(inference_model, values.image_height, values.image_width,
                                batch_size=batch_size,
                                flip=values.use_horizontal_flipping_in_evaluation,
                                feature_index=None if self.secondary_features
                                else self.feature_index)

    @staticmethod
    def _output_columns(inference_model):
        """Column slices of each inference output inside the concatenated features."""
        widths = [int(output.shape[-1]) for output in inference_model.outputs]
        bounds = np.cumsum([0] + widths)
        return [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(widths))]

    def _metrics(self, query_features, gallery_features):
        """``(summary, details)`` of one feature type under the dataset's protocol."""
        if self.protocol == "sysu_mm01":
            from reid_tf.data.sysu_mm01 import sample_gallery
            trials = [sample_gallery(self.gallery, trial, shot=self.values.sysu_shot)
                      for trial in range(self.options.trial_num)]
            return evaluate_features(self.query, self.gallery, query_features,
                                     gallery_features, self.options, trials)
        if self.protocol == "vehicleid":
            return self._vehicleid(query_features, gallery_features)
        summary, details = evaluate_features(self.query, self.gallery, query_features,
                                             gallery_features, self.options)
        if self.protocol == "regdb":
            # The other search direction on the same two test sets.
            reverse, _ = evaluate_features(self.gallery, self.query, gallery_features,
                                           query_features, self.options)
            summary["reverse_direction"] = reverse
        return summary, details

    def __call__(self, inference_model, tag="evaluation", write=True):
        started = time.time()
        extract = self._extractor(inference_model)
        query_features = extract(self.query)
        gallery_features = extract(self.gallery)
        seconds = time.time() - started
        print(f"Speed of feature extraction: "
              f"{(len(self.query) + len(self.gallery)) / max(seconds, 1e-9):.1f} images per second.")
        secondary = {}
        if self.secondary_features:
            columns = self._output_columns(inference_model)
            for name, index in self.secondary_features.items():
                secondary[name], _ = self._metrics(query_features[:, columns[index]],
                                                   gallery_features[:, columns[index]])
            query_features = query_features[:, columns[self.feature_index]]
            gallery_features = gallery_features[:, columns[self.feature_index]]
        summary, details = self._metrics(query_features, gallery_features)
        summary.update(secondary)
        summary["dataset_name"] = self.dataset_name
        summary["protocol"] = self.protocol
        if write:
            write_evaluation_outputs(summary, details, self.output_folder, tag=tag,
                                     query_features=query_features,
                                     gallery_features=gallery_features,
                                     save_data_to_disk=self.values.save_data_to_disk)
        print_metrics(summary, f"{self.dataset_name} {tag}")
        return summary

    def _vehicleid(self, query_features, gallery_features):
        """VehicleID: every trial splits the same test images into query and gallery anew
        (reid_tf.data.vehicleid); features are extracted once and indexed by path."""
        from reid_tf.evaluation import protocols
        features = np.concatenate([query_features, gallery_features])
        frame = pd.concat([self.query, self.gallery], ignore_index=True)
        index = {path: i for i, path in enumerate(frame["image_file_path"])}
        trials = []
        for trial in range(max(1, self.options.trial_num)):
            options = protocol_options(self.values, "vehicleid",
                                       self.dataset_name == self.values.dataset_name)
            options.update(trial_index=trial, seed=self.values.seed)
            split = load_dataset(self.dataset_name, self.root_folder_path, **options)
            trials.append(tuple(
                np.asarray([index[path] for path in split.loc[split["split"] == part,
                                                              "image_file_path"]])
                for part in ("query", "gallery")))
        result = protocols.evaluate_vehicleid(features, frame["identity_ID"].to_numpy(), trials,
                                              metric=self.options.metric,
                                              normalize=self.options.normalize,
                                              max_rank=self.options.max_rank)
        summary, details = evaluate_features(self.query, self.gallery, query_features,
                                             gallery_features, self.options)
        summary.update(summarize_result(result))
        details["cmc"] = np.asarray(result["cmc"])
        return summary, details


def print_metrics(summary, title):
    keys = [key for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP") if key in summary]
    text = ", ".join(f"{key} {100 * summary[key]:.2f}%" for key in keys)
    print(f"[{title}] {text}", flush=True)
    reverse = summary.get("reverse_direction")
    if reverse:
        text = ", ".join(f"{key} {100 * reverse[key]:.2f}%" for key in keys if key in reverse)
        print(f"[{title}, reverse direction] {text}", flush=True)
    for name, entry in summary.items():
        if isinstance(entry, dict) and name != "reverse_direction" and "rank1" in entry:
            print_metrics(entry, f"{title}, {name.replace('_', '-')} features")


def load_pretrained_weights(weight_targets, file_path):
    """Load ``.h5`` weights into the first of ``weight_targets`` (models sharing their layers:
    training model, plain training model, inference model) whose layout fits the file."""
    file_path = os.path.expanduser(file_path)
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"--pretrained_model_file_path: no such file {file_path}.")
    errors = []
    for model in weight_targets:
        try:
            model.load_weights(file_path)
            print(f"Loaded weights from {file_path} into {model.name}.")
            return model.name
        except (ValueError, KeyError, OSError) as error:
            errors.append(f"{model.name}: {error}")
    raise ValueError(f"--pretrained_model_file_path={file_path} does not fit this model "
                     f"({weight_targets[0].name}): " + " | ".join(errors))


def save_weights(models, weight_targets, run_folder):
    """``training_model.h5`` in the family's plain training-model layout (the same with and
    without the flip structure, which adds no weights) and ``inference_model.h5``."""
    weight_targets[-2].save_weights(os.path.join(run_folder, "training_model.h5"))
    models.inference_model.save_weights(os.path.join(run_folder, "inference_model.h5"))


def export_models(models, run_folder, formats, weights_saved=True):
    """Write the ``--export_formats`` of the inference model into ``run_folder``
    (:mod:`reid_tf.export`); ``h5`` only when the weights were not saved already (after
    training :func:`save_weights` wrote ``inference_model.h5``; ``--evaluation_only`` did
    not)."""
    from reid_tf import export
    for name in [part for part in formats.split(",") if part]:
        if name == "h5" and weights_saved:
            continue
        path = export.export_inference_model(models.inference_model, run_folder, name)
        print(f"Exported the inference model as {name}: {path}")


def run(values):
    """Run ``solution.py`` with the parsed absl flag values."""
    validate_flags(values)
    from reid_tf.training import distribute
    strategy = distribute.create_strategy(values.strategy)
    distribute.check_identities_per_replica(values.identity_num_per_batch, strategy)
    print_flags(values)
    print(distribute.describe(strategy), flush=True)
    chief_folder = run_folder_path(values)
    # Only the chief writes the run folder; other workers write into a temporary one.
    run_folder = distribute.worker_output_folder(chief_folder, strategy)
    if values.overwrite_output_folder and os.path.isdir(run_folder) \
            and run_folder == chief_folder:
        shutil.rmtree(run_folder)
    os.makedirs(run_folder, exist_ok=True)
    print(f"Run folder: {chief_folder}")
    configure_runtime(values)
    try:
        return _run(values, strategy, chief_folder, run_folder)
    finally:
        distribute.remove_worker_output_folder(run_folder, strategy)


def _run(values, strategy, chief_folder, run_folder):
    """:func:`run` after the strategy and the folders are set up."""
    protocol = dataset_protocol(values.dataset_name)
    dataframe = load_dataset(values.dataset_name, values.root_folder_path,
                             **protocol_options(values, protocol))
    train = dataframe[dataframe["split"] == "train"].reset_index(drop=True)
    cross_modality = protocol in CROSS_MODALITY_PROTOCOLS
    from reid_tf.data.pipeline import make_label_map
    label_map = make_label_map(train)
    print(f"{values.dataset_name}: {len(train)} training images of {len(label_map)} identities, "
          f"{int((dataframe['split'] == 'query').sum())} query and "
          f"{int((dataframe['split'] == 'gallery').sum())} gallery images.")

    from reid_tf.models.factory import build_models
    models, feature_index, weight_targets = build_models(values, len(label_map),
                                                         cross_modality=cross_modality,
                                                         strategy=strategy)
    if values.pretrained_model_file_path:
        load_pretrained_weights(weight_targets, values.pretrained_model_file_path)

    use_testing = values.testing_size != 0
    evaluator = None
    if use_testing:
        evaluator = DatasetEvaluator(values, values.dataset_name, values.root_folder_path,
                                     dataframe, run_folder, feature_index, values.testing_size,
                                     secondary_features=secondary_features(values))

    results = {}
    if values.evaluation_only:
        results["evaluation"] = evaluator(models.inference_model, "evaluation")
        export_models(models, run_folder, values.export_formats, weights_saved=False)
        print("All done!")
        return results

    if values.evaluate_before_training and evaluator is not None:
        results["untrained"] = evaluator(models.inference_model, "untrained", write=False)

    from reid_tf.losses.objective import Objective, objective_config_from_flags
    from reid_tf.training.data import TrainingInput, augmentation_from_flags
    from reid_tf.training.optimizers import build_optimizer
    from reid_tf.training.schedules import LearningRateSchedule, parse_milestones
    from reid_tf.training.trainer import Trainer

    data = TrainingInput(
        train, values.identity_num_per_batch, values.image_num_per_identity,
        values.steps_per_epoch, values.image_height, values.image_width,
        augmentation_from_flags(values, cross_domain=bool(values.target_dataset_name)),
        seed=values.seed, policy=values.sampler_policy, cross_modality=cross_modality,
        label_map=label_map, workers=values.workers, cache_images=values.cache_images)
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

    training_inputs = None
    if len(models.training_model.inputs) > 1:  # CM-NAS: [images, mode]; mode 0 = mixed batch
        def training_inputs(images):
            return [images, tf.constant(0, tf.int32)]

    objective = Objective(objective_config_from_flags(values, cross_modality))
    trainer = Trainer(
        models=models, objective=objective, data=data, schedule=schedule,
        optimizer_factory=optimizer_factory, output_folder=run_folder,
        epoch_num=values.epoch_num,
        freeze_backbone_for_N_epochs=values.freeze_backbone_for_N_epochs,
        evaluate_every_N_epochs=values.evaluate_testing_every_N_epochs if use_testing else 0,
        evaluate=evaluator, backbone_learning_rate_multiplier=values.backbone_learning_rate_multiplier,
        ema=ema, ema_reset_every_N_epochs=values.ema_reset_every_N_epochs,
        training_inputs=training_inputs, jit_compile=values.jit_compile, strategy=strategy,
        # A fresh start (--overwrite_output_folder) resumes from nothing on every worker.
        restore_folder=run_folder if values.overwrite_output_folder else chief_folder)
    trainer.fit()
    save_weights(models, weight_targets, run_folder)
    if os.path.exists(trainer.history_path):
        from reid_tf.visualization import plot_history
        plot_history(trainer.history_path, os.path.join(run_folder, "history"))
    if evaluator is not None:
        results["trained"] = trainer.last_evaluation or evaluator(models.inference_model, "trained")
    if values.target_dataset_name:
        target_root = values.target_root_folder_path or values.root_folder_path
        target_protocol = dataset_protocol(values.target_dataset_name)
        target_frame = load_dataset(values.target_dataset_name, target_root,
                                    **protocol_options(values, target_protocol, False))
        target_evaluator = DatasetEvaluator(values, values.target_dataset_name, target_root,
                                            target_frame, os.path.join(run_folder, "target"),
                                            feature_index,
                                            secondary_features=secondary_features(values))
        results["target"] = target_evaluator(models.inference_model, "target")
    export_models(models, run_folder, values.export_formats)
    if "untrained" in results and "trained" in results:
        print_comparison(results["untrained"], results["trained"])
    with open(os.path.join(run_folder, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2, default=float)
    print("All done!")
    return results


def print_comparison(untrained, trained):
    print("\n               rank-1   rank-5  rank-10      mAP")
    for name, summary in (("untrained", untrained), ("trained", trained)):
        print(f"{name:>12}  " + "  ".join(f"{100 * summary.get(key, float('nan')):6.2f}%"
                                          for key in ("rank1", "rank5", "rank10", "mAP")))
    print(flush=True)
