"""From the absl flag values of the command lines to the library's typed settings.

The flag object stops here: ``solution.py`` (:mod:`reid_tf.cli.train`) and the other entry
points turn their flags into the small settings the library takes —
:class:`~reid_tf.models.settings.ModelSettings`,
:class:`~reid_tf.evaluation.settings.EvaluationSettings`,
:class:`~reid_tf.data.augmentation.AugmentationSettings`,
:class:`~reid_tf.losses.objective.ObjectiveConfig` and the loader options of a dataset.
"""
from reid_tf.cli.validation import flag_given, parse_dataset_options
from reid_tf.data.augmentation import AugmentationSettings
from reid_tf.evaluation.settings import EvaluationSettings
from reid_tf.losses.objective import ObjectiveConfig
from reid_tf.models.settings import ModelSettings


def loader_options(values, protocol, include_dataset_options=True):
    """Loader options of a dataset: the protocol's (SYSU gallery pool, RegDB trial, VehicleID
    test size) and ``--dataset_options`` (which belong to ``--dataset_name``, not to the
    target dataset)."""
    options = parse_dataset_options(values.dataset_options) if include_dataset_options else {}
    if protocol == "sysu_mm01":
        options.update(search_mode=values.sysu_search_mode, shot=values.sysu_shot)
    elif protocol == "regdb":
        options.update(trial_index=values.regdb_trial_index)
    elif protocol == "vehicleid":
        options.update(test_size=values.vehicleid_test_size)
    return options


def run_flags(values):
    """The run's flags as a plain ``{name: value}`` of ``solution.py``'s own flags (for the
    evaluation report)."""
    return {flag.name: flag.value for flag in values.get_flags_for_module("reid_tf.flags")}


def model_settings(values):
    """The network of ``solution.py``'s flags. ``--cmnas_config_file_path`` given explicitly
    with ``--backbone_model_name msinet`` selects the switchable MSINet (its default is a
    CM-NAS ResNet-50 config, which the plain MSINet ignores)."""
    switchable = ""
    if values.backbone_model_name == "msinet" and values.cmnas_config_file_path \
            and flag_given(values, "cmnas_config_file_path"):
        switchable = values.cmnas_config_file_path
    return ModelSettings(
        backbone_model_name=values.backbone_model_name,
        image_height=values.image_height, image_width=values.image_width,
        region_num=values.region_num, pooling_mode=values.pooling_mode,
        min_value=values.min_value, max_value=values.max_value,
        kernel_regularization_factor=values.kernel_regularization_factor,
        bias_regularization_factor=values.bias_regularization_factor,
        gamma_regularization_factor=values.gamma_regularization_factor,
        beta_regularization_factor=values.beta_regularization_factor,
        use_horizontal_flipping_inside_model=bool(values.use_horizontal_flipping_inside_model),
        backbone_weights_file_path=values.backbone_weights_file_path,
        genotype_file_path=values.genotype_file_path,
        cmnas_config_file_path=values.cmnas_config_file_path,
        switchable_config_file_path=switchable,
        sam=values.sam_mode != "none", allow_pickle=bool(values.allow_pickle))


def rerank_memory_budget_bytes(gib):
    """``--rerank_memory_budget`` (GiB) in bytes (at least one)."""
    return max(1, int(float(gib) * 2 ** 30))


def evaluation_settings(values):
    """How ``solution.py``'s flags evaluate (test batch ``--test_batch_size`` or P x K;
    ``--rerank_memory_budget`` in GiB becomes the setting's bytes).
    ``--distance_metric`` and ``--feature_normalization`` left at their defaults leave the
    choice to the protocol (the cross-modality ones rank by the normalised dot product)."""
    batch_size = values.test_batch_size or (values.identity_num_per_batch
                                            * values.image_num_per_identity)
    return EvaluationSettings(
        image_height=values.image_height, image_width=values.image_width,
        batch_size=batch_size, flip=bool(values.use_horizontal_flipping_in_evaluation),
        metric=values.distance_metric if flag_given(values, "distance_metric") else None,
        normalize=(bool(values.feature_normalization)
                   if flag_given(values, "feature_normalization") else None),
        use_re_ranking=bool(values.use_re_ranking),
        rerank_memory_budget=rerank_memory_budget_bytes(values.rerank_memory_budget),
        trial_num=values.evaluation_trial_num,
        sysu_shot=values.sysu_shot, seed=values.seed,
        save_data_to_disk=bool(values.save_data_to_disk), resize=values.resize_interpolation)


def augmentation_settings(values, cross_domain=False):
    """The training augmentation of ``--augmentation_recipe`` and its flags (``none`` without
    ``--use_data_augmentation_in_training``)."""
    recipe = values.augmentation_recipe if values.use_data_augmentation_in_training else "none"
    if recipe == "flipreid":
        options = {"patch_replacement_probability": values.patch_replacement_probability,
                   "random_erasing_probability": values.random_erasing_probability}
    elif recipe == "msinet":
        jitter = bool(values.color_jitter or cross_domain)
        options = {"color_jitter": jitter,
                   "random_erasing_probability": 0.0 if jitter else
                   values.random_erasing_probability}
    elif recipe == "cmnas":
        options = {"random_erasing_probability": values.random_erasing_probability}
    else:
        options = {}
    return AugmentationSettings(recipe, values.image_height, values.image_width, options)


def objective_config(values, cross_modality):
    """The objective of the flags (FlipReID's soft margin when ``--triplet_margin`` < 0)."""
    soft = values.triplet_margin < 0
    return ObjectiveConfig(
        triplet_margin=None if soft else float(values.triplet_margin),
        triplet_normalize=bool(values.triplet_feature_normalization),
        triplet_exclude_self=soft,
        triplet_clamp=not soft,
        label_smoothing=float(values.label_smoothing),
        cross_modality=bool(cross_modality),
        sp_weight=float(values.sp_loss_weight if cross_modality else 0.0),
        cmmd_weight=float(values.cmmd_loss_weight if cross_modality else 0.0),
        images_per_identity=int(values.image_num_per_identity),
        sam_mode=values.sam_mode,
        sam_ratio=float(values.sam_ratio),
    )
