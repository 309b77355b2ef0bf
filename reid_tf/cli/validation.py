"""The checks of ``solution.py``'s flag values, run before any dataset is read or model
built (and before TensorFlow is imported): every choice and number, the files the flags name,
and the combinations the chosen model, dataset or protocol cannot honour.

:func:`validate_flags` raises ``absl.flags.ValidationError`` naming the flag, the value and
what is accepted (a ``DatasetError`` for an unknown dataset).
"""
import math
import os

from absl import flags

from reid_tf.runtime.choices import (AUGMENTATION_RECIPES, BACKBONES, CHECKPOINT_SELECTIONS,
                                     CROSS_MODALITY_PROTOCOLS,
                                     DISTANCE_METRICS, EXPORT_FORMATS, FLIPREID_BACKBONES,
                                     LEARNING_RATE_MODES, MIXED_PRECISION_POLICIES, OPTIMIZERS,
                                     POOLING_MODES, SAM_MODES, SAMPLER_POLICIES, STRATEGIES,
                                     TFLITE_QUANTIZATIONS)


def parse_dataset_options(items):
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as Python literals when they
    are, else kept as strings)."""
    import ast
    options = {}
    for item in items:
        key, separator, text = str(item).partition("=")
        if not separator or not key.strip():
            raise flags.ValidationError(f"--dataset_options: expected key=value, got {item!r}.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        options[key.strip()] = value
    return options


def flag_given(values, name):
    """Whether flag ``name`` was set (command line, flagfile or assignment) rather than left
    at its default (True for values that are not absl ``FlagValues``)."""
    try:
        return not values[name].using_default_value
    except (KeyError, TypeError, AttributeError):
        return True


def _check(condition, message):
    if not condition:
        raise flags.ValidationError(message)


def _check_choices(values):
    """Every flag whose value is one of a list of names."""
    for name, choices in (("backbone_model_name", BACKBONES), ("pooling_mode", POOLING_MODES),
                          ("learning_rate_mode", LEARNING_RATE_MODES),
                          ("optimizer_name", OPTIMIZERS),
                          ("augmentation_recipe", AUGMENTATION_RECIPES),
                          ("sampler_policy", SAMPLER_POLICIES), ("sam_mode", SAM_MODES),
                          ("distance_metric", DISTANCE_METRICS),
                          ("mixed_precision", MIXED_PRECISION_POLICIES),
                          ("strategy", STRATEGIES), ("sysu_search_mode", ("all", "indoor")),
                          ("checkpoint_selection", CHECKPOINT_SELECTIONS)):
        value = getattr(values, name)
        _check(value in choices, f"--{name}={value!r}: expected one of "
                                 f"{', '.join(repr(choice) for choice in choices)}.")
    _check(values.vehicleid_test_size in (800, 1600, 2400),
           f"--vehicleid_test_size={values.vehicleid_test_size}: expected 800, 1600 or 2400.")
    _check(1 <= values.regdb_trial_index <= 10,
           f"--regdb_trial_index={values.regdb_trial_index}: expected 1..10.")
    formats = [part for part in values.export_formats.split(",") if part]
    unknown = [part for part in formats if part not in EXPORT_FORMATS]
    _check(not unknown, f"--export_formats: unknown {unknown}; expected {', '.join(EXPORT_FORMATS)}.")
    _check(values.tflite_quantization in TFLITE_QUANTIZATIONS,
           f"--tflite_quantization={values.tflite_quantization!r}: expected one of "
           f"{', '.join(repr(choice) for choice in TFLITE_QUANTIZATIONS)}.")
    _check("tflite" in formats or not flag_given(values, "tflite_quantization"),
           f"--tflite_quantization={values.tflite_quantization!r}: quantizes the LiteRT export, "
           "which --export_formats does not include; add tflite to it or drop the flag.")
    from reid_tf.training.schedules import parse_milestones
    try:
        parse_milestones(values.learning_rate_milestones)
    except ValueError:
        raise flags.ValidationError(
            f"--learning_rate_milestones={values.learning_rate_milestones!r}: expected "
            "comma-separated ascending epochs, e.g. 150,225,300.") from None
    parse_dataset_options(values.dataset_options)


def _check_numbers(values):
    """Every number's range."""
    at_least = {"image_height": 1, "image_width": 1, "identity_num_per_batch": 2,
                "image_num_per_identity": 1, "steps_per_epoch": 0, "epoch_num": 0,
                "freeze_backbone_for_N_epochs": 0, "region_num": 0,
                "evaluate_testing_every_N_epochs": 1, "learning_rate_warmup_epochs": 0,
                "learning_rate_steady_epochs": 1, "test_batch_size": 0,
                "evaluation_trial_num": 1, "sysu_shot": 1, "ema_reset_every_N_epochs": 0,
                "workers": 1, "seed": 0}
    for name, low in at_least.items():
        value = getattr(values, name)
        reason = (" (the triplet loss needs negatives)" if name == "identity_num_per_batch"
                  else "")
        _check(value >= low, f"--{name}={value}: must be >= {low}{reason}.")
    non_negative = ("kernel_regularization_factor", "bias_regularization_factor",
                    "gamma_regularization_factor", "beta_regularization_factor",
                    "learning_rate_start", "learning_rate_end", "learning_rate_lower_bound",
                    "learning_rate_drop_factor", "weight_decay", "sam_ratio", "sp_loss_weight",
                    "cmmd_loss_weight", "testing_size")
    for name in non_negative:
        value = getattr(values, name)
        _check(value >= 0, f"--{name}={value}: must be >= 0.")
    for name in ("learning_rate_base", "learning_rate_gamma", "backbone_learning_rate_multiplier",
                 "rerank_memory_budget"):
        value = getattr(values, name)
        _check(value > 0, f"--{name}={value}: must be > 0.")
    _check(math.isfinite(values.rerank_memory_budget),
           f"--rerank_memory_budget={values.rerank_memory_budget}: must be a finite number of "
           "GiB.")
    unit = {"patch_replacement_probability": (0, 1, True), "random_erasing_probability": (0, 1, True),
            "learning_rate_warmup_factor": (0, 1, True), "momentum": (0, 1, False),
            "adam_beta_1": (0, 1, False), "adam_beta_2": (0, 1, False),
            "ema_decay": (0, 1, False), "label_smoothing": (0, 1, False)}
    for name, (low, high, closed) in unit.items():
        value = getattr(values, name)
        inside = low <= value <= high if closed else low <= value < high
        _check(inside, f"--{name}={value}: must be in [{low}, {high}{']' if closed else ')'}.")
    _check(values.adam_epsilon < 0 or values.adam_epsilon > 0,
           f"--adam_epsilon={values.adam_epsilon}: must be > 0 (negative: the optimiser's "
           "default).")
    _check(values.min_value <= values.max_value,
           f"--min_value={values.min_value} must not exceed --max_value={values.max_value}.")
    _check(not (values.evaluation_only and values.testing_size != 1),
           "--evaluation_only needs --testing_size 1.0 (the full test set).")


FLIPREID_ONLY = ("region_num", "pooling_mode", "min_value", "max_value",
                 "kernel_regularization_factor", "bias_regularization_factor",
                 "gamma_regularization_factor", "beta_regularization_factor")
# Dataset-specific flags and the protocol they belong to.
PROTOCOL_FLAGS = {"sysu_search_mode": "sysu_mm01", "sysu_shot": "sysu_mm01",
                  "regdb_trial_index": "regdb", "vehicleid_test_size": "vehicleid"}


def _protocols(values):
    """``{dataset name: protocol}`` of ``--dataset_name`` and ``--target_dataset_name``."""
    from reid_tf.data import dataset_names, dataset_protocol
    protocols = {values.dataset_name: dataset_protocol(values.dataset_name)}
    target = values.target_dataset_name
    if target:
        _check(target in dataset_names(), f"--target_dataset_name={target!r}: unknown dataset; "
                                          f"known datasets: {', '.join(dataset_names())}.")
        protocols[target] = dataset_protocol(target)
    return protocols


def _refuse_given(values, names, reason):
    for name in names:
        _check(not flag_given(values, name), f"--{name}={getattr(values, name)!r}: {reason}")


def _check_model_flags(values, cross_modality):
    backbone = values.backbone_model_name
    if backbone not in FLIPREID_BACKBONES:
        families = ", ".join(FLIPREID_BACKBONES)
        _refuse_given(values, FLIPREID_ONLY, f"shapes FlipReID's heads ({families}) and does "
                                             f"nothing for --backbone_model_name={backbone}; "
                                             "drop it.")
    _check(values.sam_mode == "none" or backbone == "msinet",
           f"--sam_mode={values.sam_mode}: the spatial alignment loss needs MSINet's score maps "
           f"(--backbone_model_name=msinet); {backbone} has none.")
    if values.sam_mode == "none":
        _refuse_given(values, ["sam_ratio"], "weighs the SAM loss, which --sam_mode=none turns "
                                             "off; set --sam_mode or drop it.")
    if backbone != "msinet":
        _refuse_given(values, ["genotype_file_path"],
                      f"is MSINet's architecture; --backbone_model_name={backbone} has none.")
    if flag_given(values, "cmnas_config_file_path"):
        _check(backbone != "msinet" or cross_modality,
               f"--cmnas_config_file_path={values.cmnas_config_file_path} with "
               "--backbone_model_name msinet builds the switchable (visible-infrared) MSINet, "
               f"which needs a visible-infrared dataset; --dataset_name {values.dataset_name} "
               "is not one.")
        _check(backbone != "msinet" or not values.use_horizontal_flipping_inside_model,
               "--use_horizontal_flipping_inside_model is not available for the switchable "
               "MSINet (--cmnas_config_file_path): its head BNs need the mode input, which the "
               "flip structure's head call does not pass.")
        _check(backbone in ("msinet", "cmnas_resnet50"),
               f"--cmnas_config_file_path: {backbone} has no switchable BNs (cmnas_resnet50, or "
               "msinet on visible-infrared data).")
    weights = values.backbone_weights_file_path
    _check(not values.allow_pickle or (backbone == "cmnas_resnet50" and weights
                                       and not weights.endswith((".h5", ".npz"))),
           "--allow_pickle: only a PyTorch .pth --backbone_weights_file_path of "
           "cmnas_resnet50 is read with torch in this run; nothing would be unpickled.")
    _check(not (backbone == "msinet" and values.backbone_weights_file_path),
           "--backbone_weights_file_path is not used by msinet; load converted reference "
           "weights with --pretrained_model_file_path.")


def _check_training_flags(values, cross_modality):
    if not cross_modality:
        _refuse_given(values, ["sp_loss_weight", "cmmd_loss_weight"],
                      "weighs a cross-modality loss term; --dataset_name "
                      f"{values.dataset_name} has one modality.")
    optimizer = values.optimizer_name
    _check(not (optimizer == "adam" and values.weight_decay),
           "--weight_decay needs --optimizer_name sgd or torch_adam (coupled L2); FlipReID's "
           "Adam uses the *_regularization_factor flags.")
    if optimizer != "sgd":
        _refuse_given(values, ["momentum"], f"is SGD's; --optimizer_name={optimizer} has none.")
    else:
        _refuse_given(values, ["adam_beta_1", "adam_beta_2", "adam_epsilon"],
                      "is Adam's; --optimizer_name=sgd has none.")
    _check(not (values.ema_reset_every_N_epochs and not values.ema_decay),
           f"--ema_reset_every_N_epochs={values.ema_reset_every_N_epochs} needs --ema_decay > 0 "
           "(there is no EMA to reset to).")
    recipe = values.augmentation_recipe if values.use_data_augmentation_in_training else "none"
    if recipe != "flipreid":
        _refuse_given(values, ["patch_replacement_probability"],
                      f"is the flipreid recipe's; the training augmentation is {recipe}.")
    if recipe != "msinet":
        _refuse_given(values, ["color_jitter"],
                      f"is the msinet recipe's; the training augmentation is {recipe}.")
    if recipe == "none":
        _refuse_given(values, ["random_erasing_probability"],
                      "has no effect without training augmentation.")
    if values.checkpoint_selection == "best":
        reason = ("--evaluation_only (nothing is trained)" if values.evaluation_only else
                  "--testing_size=0 (no evaluation)" if values.testing_size == 0 else
                  "--epoch_num=0 (no main phase)" if values.epoch_num == 0 else "")
        _check(not reason, "--checkpoint_selection=best keeps the weights of the main "
                           "phase's evaluation with the best mAP, but this run evaluates "
                           f"nothing during training: {reason}; evaluate during training "
                           "or use --checkpoint_selection=last.")
    _check(not (values.jit_compile and values.strategy != "default"),
           "--jit_compile is not available with --strategy mirrored or multi_worker (the "
           "distributed step's collective operations are not XLA-compiled); drop one of the two "
           "flags.")


def _check_evaluation_flags(values, protocols):
    protocol = protocols[values.dataset_name]
    _check(values.testing_size in (0, 1) or protocol == "standard",
           f"--testing_size={values.testing_size}: a test subset exists for the standard "
           f"protocol only; {values.dataset_name} ({protocol}) evaluates its fixed protocol "
           "(use 1 for it, 0 for none).")
    for name, protocol_name in PROTOCOL_FLAGS.items():
        _check(not flag_given(values, name) or protocol_name in protocols.values(),
               f"--{name}={getattr(values, name)!r}: belongs to the {protocol_name} protocol; "
               f"no dataset of this run uses it.")
    with_trials = {"sysu_mm01", "vehicleid"}
    _check(not flag_given(values, "evaluation_trial_num") or with_trials & set(protocols.values()),
           f"--evaluation_trial_num={values.evaluation_trial_num}: only SYSU-MM01 and VehicleID "
           "draw random trials; no dataset of this run does.")
    for name, dataset_protocol in protocols.items():
        _check(not (values.use_re_ranking and dataset_protocol == "vehicleid"),
               f"--use_re_ranking: {name} (VehicleID) draws a new query/gallery split per trial "
               "and is evaluated without re-ranking; drop the flag.")
    if not values.use_re_ranking:
        _refuse_given(values, ["rerank_memory_budget"],
                      "chooses between the dense and the bounded-memory re-ranking; "
                      "--use_re_ranking is off. Add it or drop the flag.")
    _refuse_given(values, ["target_root_folder_path"] if not values.target_dataset_name else [],
                  "is the root of --target_dataset_name, which is not set.")


def _check_combinations(values):
    """Flags the chosen model, dataset or protocol cannot honour are refused with the
    reason."""
    protocols = _protocols(values)
    cross_modality = protocols[values.dataset_name] in CROSS_MODALITY_PROTOCOLS
    _check_model_flags(values, cross_modality)
    _check_training_flags(values, cross_modality)
    _check_evaluation_flags(values, protocols)


def check_files(values):
    """The files the flags name exist (before any work): raise ``FileNotFoundError`` naming
    the flag."""
    names = ["pretrained_model_file_path", "backbone_weights_file_path"]
    if values.backbone_model_name == "cmnas_resnet50" or (
            values.backbone_model_name == "msinet" and flag_given(values,
                                                                  "cmnas_config_file_path")):
        names.append("cmnas_config_file_path")
    genotype = values.genotype_file_path
    if values.backbone_model_name == "msinet" and (genotype.endswith(".json") or os.sep in genotype):
        names.append("genotype_file_path")
    for name in names:
        path = getattr(values, name)
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise FileNotFoundError(f"--{name}: no such file {path}.")


def validate_flags(values):
    """Check every flag value before any dataset is read or model built; raise
    ``flags.ValidationError`` (or ``DatasetError`` for an unknown dataset) naming the flag,
    the value and what is accepted, or why the run cannot honour it. The files they name are
    checked by :func:`check_files`."""
    _check_choices(values)
    _check_numbers(values)
    _check_combinations(values)
