"""Build a model family from ``solution.py``'s flags (``--backbone_model_name``).

* ``resnet50``, ``ibn_resnet50``, ``resnesta50`` (and the other tf2cv depths): FlipReID
  (:func:`reid_tf.models.flipreid.build_flipreid`);
* ``msinet``: MSINet with ``--genotype_file_path`` (:mod:`reid_tf.models.msinet`), optionally
  with SAM (``--sam_mode``) and, when ``--cmnas_config_file_path`` is given on visible-infrared
  data, with a switchable BN in place of every BN (an 80-value MSINet config, see
  ``configs/cmnas/README.md``; the models then take ``[images, mode]`` like CM-NAS);
* ``cmnas_resnet50``: CM-NAS's two-stream ResNet-50 with ``--cmnas_config_file_path``.

Whatever the family, ``--use_horizontal_flipping_inside_model`` wraps the family's embedding
and head models with the FlipReID structure (:mod:`reid_tf.models.flipping`).

Under a ``tf.distribute`` strategy (``--strategy``) the models are built inside its scope and,
with several replicas in sync, every BN layer is synchronised across the replicas
(:func:`reid_tf.training.distribute.synchronize_batch_normalization`).
"""
import dataclasses

from reid_tf.models.base import ReIDModels

FLIPREID_BACKBONES = ("resnet50", "ibn_resnet50", "resnesta50")


def flag_given(values, name, default=None):
    """Whether flag ``name`` was set (command line, flagfile or assignment) rather than left at
    its default. ``values`` is absl ``FlagValues``; for a plain namespace, whether the value is
    non-empty and differs from ``default``."""
    try:
        return not values[name].using_default_value
    except (TypeError, KeyError, AttributeError):
        value = getattr(values, name, None)
        return bool(value) and value != default


def msinet_bn_config(values, cross_modality):
    """The switchable-BN config of an MSINet run, or None for the plain network.

    ``--cmnas_config_file_path`` set explicitly on visible-infrared data selects the switchable
    form; set on single-modality data it is an error (mode 0 would treat the halves of a PK
    batch as two modalities).
    """
    from reid_tf.flags import CMNAS_DEFAULT_CONFIG
    if not values.cmnas_config_file_path or not flag_given(values, "cmnas_config_file_path",
                                                            CMNAS_DEFAULT_CONFIG):
        return None
    if not cross_modality:
        raise ValueError(f"--cmnas_config_file_path={values.cmnas_config_file_path} with "
                         f"--backbone_model_name msinet builds the switchable (visible-infrared) "
                         f"MSINet, which needs a visible-infrared dataset (SYSU_MM01, RegDB, "
                         f"Synthetic_SYSU, Synthetic_RegDB); --dataset_name "
                         f"{getattr(values, 'dataset_name', '?')} is not one.")
    if values.use_horizontal_flipping_inside_model:
        raise ValueError("--use_horizontal_flipping_inside_model is not available for the "
                         "switchable MSINet (--cmnas_config_file_path): its head BNs need the "
                         "mode input, which the flip structure's head call does not pass.")
    return values.cmnas_config_file_path


def model_family(backbone_model_name):
    """``flipreid``, ``msinet`` or ``cmnas`` for a ``--backbone_model_name`` value."""
    if backbone_model_name == "msinet":
        return "msinet"
    if backbone_model_name == "cmnas_resnet50":
        return "cmnas"
    return "flipreid"


def build_models(values, num_classes, cross_modality=False, strategy=None):
    """The :class:`ReIDModels` that the flags ``values`` describe, for ``num_classes`` ids.

    ``strategy``: a ``tf.distribute`` strategy to build the models under (default: the
    current one); with several replicas in sync the BN layers are synchronised across them.

    Returns ``(models, feature_index, weight_targets)``: ``feature_index`` selects the
    inference output used as the evaluation feature (``None``: all outputs concatenated;
    CM-NAS: 1, the post-BNNeck feature its reference reports first); ``weight_targets`` are the
    models (sharing their layers) that an ``.h5`` weights file may have been saved from, tried in
    order when loading one: the training model, the family's plain training model (before the
    flip wrapper; converted reference checkpoints have this layout) and the inference model.
    """
    if strategy is None:
        return _build_models(values, num_classes, cross_modality)
    with strategy.scope():
        built = _build_models(values, num_classes, cross_modality)
    if strategy.num_replicas_in_sync > 1:
        from reid_tf.training.distribute import synchronize_batch_normalization
        models = built[0]
        for model in (models.training_model, models.inference_model):
            synchronize_batch_normalization(model)
    return built


def _build_models(values, num_classes, cross_modality):
    input_shape = (values.image_height, values.image_width, 3)
    family = model_family(values.backbone_model_name)
    flip = bool(values.use_horizontal_flipping_inside_model)
    feature_index = None
    if family == "flipreid":
        from reid_tf.models.flipreid import build_flipreid
        models = build_flipreid(
            values.backbone_model_name, input_shape, num_classes, region_num=values.region_num,
            pooling_mode=values.pooling_mode, min_value=values.min_value,
            max_value=values.max_value,
            kernel_regularization_factor=values.kernel_regularization_factor,
            bias_regularization_factor=values.bias_regularization_factor,
            gamma_regularization_factor=values.gamma_regularization_factor,
            beta_regularization_factor=values.beta_regularization_factor,
            use_horizontal_flipping_inside_model=flip,
            backbone_weights_file_path=values.backbone_weights_file_path)
        return models, feature_index, [models.training_model, models.inference_model]
    if family == "msinet":
        from reid_tf.models import msinet
        sam = values.sam_mode != "none"
        models = msinet.build_msinet_models(values.genotype_file_path, num_classes,
                                            input_shape=input_shape, sam=sam,
                                            bn_config=msinet_bn_config(values, cross_modality))
        if values.backbone_weights_file_path:
            raise ValueError("--backbone_weights_file_path is not used by msinet; load converted "
                             "reference weights with --pretrained_model_file_path.")
    else:
        from reid_tf.models import cmnas
        models = cmnas.build_cmnas_models(values.cmnas_config_file_path, num_classes,
                                          input_shape=input_shape)
        if values.backbone_weights_file_path:
            cmnas.load_imagenet_weights(models.training_model, values.backbone_weights_file_path)
        feature_index = 1
    weight_targets = [models.training_model, models.inference_model]
    if flip:
        from reid_tf.models.flipping import build_training_model
        training_model = build_training_model(models.embedding_model, models.head_model, True)
        models = dataclasses.replace(models, training_model=training_model)
        weight_targets.insert(0, training_model)
    return models, feature_index, weight_targets


__all__ = ["ReIDModels", "build_models", "model_family", "flag_given", "msinet_bn_config",
           "FLIPREID_BACKBONES"]
