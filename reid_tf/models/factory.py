"""Build a model family from :class:`~reid_tf.models.settings.ModelSettings`.

* ``resnet50``, ``ibn_resnet50``, ``resnesta50`` (and the other tf2cv depths): FlipReID
  (:func:`reid_tf.models.flipreid.build_flipreid`);
* ``msinet``: MSINet with ``genotype_file_path`` (:mod:`reid_tf.models.msinet`), optionally
  with SAM and, with a ``switchable_config_file_path`` on visible-infrared data, with a
  switchable BN in place of every BN (:mod:`reid_tf.models.msinet_switchable`; the models then
  take ``[images, mode]`` like CM-NAS);
* ``cmnas_resnet50``: CM-NAS's two-stream ResNet-50 with ``cmnas_config_file_path``.

Whatever the family, ``use_horizontal_flipping_inside_model`` wraps the family's embedding
and head models with the FlipReID structure (:mod:`reid_tf.models.flipping`).

Under a ``tf.distribute`` strategy the models are built inside its scope and, with several
replicas in sync, every BN layer is synchronised across the replicas
(:func:`reid_tf.models.sync_bn.synchronize_batch_normalization`).
"""
import dataclasses

from reid_tf.models.base import ReIDModels
from reid_tf.models.settings import ModelSettings
from reid_tf.runtime.choices import BACKBONES, FLIPREID_BACKBONES

VISIBLE_INFRARED_DATASETS = "SYSU_MM01, RegDB, Synthetic_SYSU, Synthetic_RegDB"


def model_family(backbone_model_name):
    """``flipreid``, ``msinet`` or ``cmnas`` for a ``--backbone_model_name`` value."""
    if backbone_model_name == "msinet":
        return "msinet"
    if backbone_model_name == "cmnas_resnet50":
        return "cmnas"
    return "flipreid"


def evaluation_outputs(backbone_model_name):
    """``(feature_index, secondary_features)`` of a family's inference outputs: the output
    that gives the reported metrics (``None``: all outputs concatenated) and the outputs
    reported beside it. CM-NAS reports its post-BNNeck ``feat`` (output 1) first and the
    pre-BNNeck ``global_feat`` (output 0) as its second line (cmnas.md §9.1)."""
    if model_family(backbone_model_name) == "cmnas":
        return 1, {"pre_bnneck": 0}
    return None, {}


def build_models(settings, num_classes, cross_modality=False, strategy=None):
    """The :class:`ReIDModels` that ``settings`` describe, for ``num_classes`` identities.

    ``strategy``: a ``tf.distribute`` strategy to build the models under (default: the
    current one); with several replicas in sync the BN layers are synchronised across them.

    Returns ``(models, feature_index, weight_targets)``: ``feature_index`` selects the
    inference output used as the evaluation feature (:func:`evaluation_outputs`);
    ``weight_targets`` are the models (sharing their layers) that an ``.h5`` weights file may
    have been saved from, tried in order when loading one: the training model, the family's
    plain training model (before the flip wrapper; converted reference checkpoints have this
    layout) and the inference model.
    """
    if strategy is None:
        return _build_models(settings, num_classes, cross_modality)
    with strategy.scope():
        built = _build_models(settings, num_classes, cross_modality)
    if strategy.num_replicas_in_sync > 1:
        from reid_tf.models.sync_bn import synchronize_batch_normalization
        models = built[0]
        for model in (models.training_model, models.inference_model):
            synchronize_batch_normalization(model)
    return built


def _switchable_config(settings, cross_modality):
    """The switchable-BN config of an MSINet run, or None for the plain network. A config on
    single-modality data is an error (mode 0 would treat the halves of a PK batch as two
    modalities)."""
    path = settings.switchable_config_file_path
    if not path:
        return None
    if not cross_modality:
        raise ValueError(f"--cmnas_config_file_path={path} with --backbone_model_name msinet "
                         "builds the switchable (visible-infrared) MSINet, which needs a "
                         f"visible-infrared dataset ({VISIBLE_INFRARED_DATASETS}).")
    if settings.use_horizontal_flipping_inside_model:
        raise ValueError("--use_horizontal_flipping_inside_model is not available for the "
                         "switchable MSINet (--cmnas_config_file_path): its head BNs need the "
                         "mode input, which the flip structure's head call does not pass.")
    return path


def _build_flipreid(settings, num_classes):
    from reid_tf.models.flipreid import build_flipreid
    return build_flipreid(
        settings.backbone_model_name, settings.input_shape, num_classes,
        region_num=settings.region_num, pooling_mode=settings.pooling_mode,
        min_value=settings.min_value, max_value=settings.max_value,
        kernel_regularization_factor=settings.kernel_regularization_factor,
        bias_regularization_factor=settings.bias_regularization_factor,
        gamma_regularization_factor=settings.gamma_regularization_factor,
        beta_regularization_factor=settings.beta_regularization_factor,
        use_horizontal_flipping_inside_model=settings.use_horizontal_flipping_inside_model,
        backbone_weights_file_path=settings.backbone_weights_file_path)


def _build_msinet(settings, num_classes, cross_modality):
    if settings.backbone_weights_file_path:
        raise ValueError("--backbone_weights_file_path is not used by msinet; load converted "
                         "reference weights with --pretrained_model_file_path.")
    config = _switchable_config(settings, cross_modality)
    if config is not None:
        from reid_tf.models.msinet_switchable import build_switchable_msinet_models
        return build_switchable_msinet_models(settings.genotype_file_path, num_classes, config,
                                              input_shape=settings.input_shape,
                                              sam=settings.sam)
    from reid_tf.models.msinet import build_msinet_models
    return build_msinet_models(settings.genotype_file_path, num_classes,
                               input_shape=settings.input_shape, sam=settings.sam)


def _build_cmnas(settings, num_classes):
    from reid_tf.models import cmnas
    models = cmnas.build_cmnas_models(settings.cmnas_config_file_path, num_classes,
                                      input_shape=settings.input_shape)
    if settings.backbone_weights_file_path:
        from reid_tf.models.cmnas_imagenet import load_imagenet_weights
        load_imagenet_weights(models.training_model, settings.backbone_weights_file_path,
                              allow_pickle=settings.allow_pickle)
    return models


def _build_models(settings, num_classes, cross_modality):
    family = model_family(settings.backbone_model_name)
    feature_index, _ = evaluation_outputs(settings.backbone_model_name)
    if family == "flipreid":
        models = _build_flipreid(settings, num_classes)
        return models, feature_index, [models.training_model, models.inference_model]
    if family == "msinet":
        models = _build_msinet(settings, num_classes, cross_modality)
    else:
        models = _build_cmnas(settings, num_classes)
    weight_targets = [models.training_model, models.inference_model]
    if settings.use_horizontal_flipping_inside_model:
        from reid_tf.models.flipping import build_training_model
        training_model = build_training_model(models.embedding_model, models.head_model, True)
        models = dataclasses.replace(models, training_model=training_model)
        weight_targets.insert(0, training_model)
    return models, feature_index, weight_targets


__all__ = ["ReIDModels", "ModelSettings", "build_models", "model_family",
           "evaluation_outputs", "BACKBONES", "FLIPREID_BACKBONES"]
