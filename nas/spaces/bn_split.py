"""CM-NAS's BN-split search space (``python -m nas.search --search_space bn_split``).

The reference release of CM-NAS has no search code, so most of this space is the DARTS-style
reconstruction of ``cmnas.md`` §11.2 [RECON]; what comes from the reference code is marked.

Supernet
    The evaluated network unchanged (``cmnas_resnet50``: :mod:`reid_tf.models.cmnas`, 53
    switchable BNs [CODE]; or ``msinet``: the switchable MSINet of :mod:`reid_tf.models.msinet`,
    80 switchable BNs), built with ``mixed=True``: every switchable BN owns
    ``alpha = (alpha_split, alpha_share)`` (initialised to 0, config order of §3.3 / of
    ``msinet.batch_norm_names()``) and outputs
    ``pi_split * SplitBN(x, mode) + pi_share * ShareBN(x)`` with ``pi = softmax(alpha / 1)``,
    then its ReLU if the position has one (the ReLU after the mixing, so the candidates differ
    only in their normalisation). Both paths run in training mode and both update their
    moving statistics. Weights ``w``: every convolution, all three BN sets, the BNNeck and the
    classifier (ImageNet initialisation of §3.5 with ``--bn_split_backbone_weights_file_path``).

Data (bilevel split)
    ``per_identity_half`` (default): for every training identity and modality, a seeded random
    half of its images (``ceil(n / 2)``) goes to ``D_w`` (weights) and the rest to ``D_alpha``
    (architecture), so every identity is in both parts and the classifier loss stays valid on
    ``D_alpha``. An identity with fewer than 2 images in a modality cannot be halved and goes
    to ``D_w`` whole. ``official_val`` (SYSU-MM01 layout only): the identities of
    ``exp/train_id.txt`` for ``D_w`` and those of ``exp/val_id.txt`` for ``D_alpha``, with a
    classifier-free architecture loss. Both parts use the cross-modality sampler (§7.4: P
    identities × K visible + K infrared images, mode 0) and the CM-NAS augmentation (§7.3);
    ``D_alpha`` is an endless stream (:class:`nas.tcm.EndlessBatches`).

Objective (both levels)
    ``L = CE + tri + 5 SP + 0.05 CMMD`` on mode-0 batches (the CM-NAS training objective of
    §6 [CODE], through :class:`reid_tf.losses.objective.Objective`, as ``solution.py`` trains
    it); ``official_val``'s architecture loss drops CE.

Optimisation
    Weights: the CM-NAS optimiser of §8.1 (TorchAdam, betas (0.5, 0.999), eps 1e-8, coupled
    weight decay, backbone at 0.1 × the head learning rate, linear warm-up from 0.01) with
    the searcher's per-epoch schedule; α: Adam lr 3e-4, betas (0.5, 0.999), weight decay 1e-3
    (DARTS). The first ``--bn_split_warmup_epochs`` epochs take weight steps only (no
    architecture step, no ``D_alpha`` batch); afterwards every iteration takes an architecture
    step on a ``D_alpha`` batch, then a weight step on a ``D_w`` batch (first order;
    ``--unrolled`` gives the second-order gradient of :mod:`nas.architect`, whose virtual step
    uses the head learning rate for every weight). Optional weight EMA (§6.6) over the
    weights and BN statistics (never α), updated after every weight step and copied to the
    live weights every ``--bn_split_ema_reset_epochs`` epochs.

Result
    Per layer ``argmax(pi)`` over (split = 0, share = 1), an exact tie giving split
    (:func:`reid_tf.models.cmnas_config.derive_config`), written as ``config.cfg`` in the
    reference format (one line, 53 or 80 values; ``read_config``/``--cmnas_config_file_path``
    read it), plus ``alpha_history.npz`` (``epochs``, ``alpha (T, L, 2)``, ``weights``,
    ``layers``) and ``alpha_history.png`` (``pi_share`` per layer and logged epoch). The
    supernet is evaluated with the dataset's protocol (SYSU-MM01: gallery trial 0 of the
    loader's search mode and shot, as the reference's mid-training test; RegDB: both
    directions; mode 1 for visible and 2 for infrared images, eval mode). The searched config
    is retrained from ImageNet with ``solution.py`` (the supernet weights are discarded).
"""
import os

import numpy as np
import tensorflow as tf

from nas.alpha import SwitchAlphaHistory, plot_switch_history, softmax_rows
from nas.spaces.base import VALID_SEED_OFFSET, SearchSpace, evaluation_settings
from nas.spaces.bn_split_data import (describe_part, split_official_val,
                                      split_per_identity_half, sysu_split_file)
from nas.spaces.bn_split_optimizer import GroupedWeightOptimizer
from nas.tcm import EndlessBatches
from reid_tf.models.switchable_bn import MODE_MIXED
from reid_tf.runtime.choices import CROSS_MODALITY_PROTOCOLS

BACKBONES = ("cmnas_resnet50", "msinet")
DATA_SPLITS = ("per_identity_half", "official_val")
# The reference's mid-training SYSU-MM01 test uses gallery trial 0 only (cmnas.md §8.4).
EVALUATION_TRIALS = 1


def bn_split_objective(images_per_identity):
    """The objective of both levels: CM-NAS's ``CE + tri + 5 SP + 0.05 CMMD`` (cmnas.md §6)
    as :class:`reid_tf.losses.objective.Objective` computes it for ``solution.py`` (four-term
    triplet with margin 0.4 on the unnormalised pre-BNNeck features of every embedding, CE on
    every logits output, SP and CMMD on the first post-BNNeck feature with chunks of
    ``images_per_identity`` rows)."""
    from reid_tf.losses import cmnas as cmnas_losses
    from reid_tf.losses.objective import Objective, ObjectiveConfig

    return Objective(ObjectiveConfig(
        triplet_margin=cmnas_losses.TRIPLET_MARGIN, triplet_normalize=False,
        label_smoothing=0.0, cross_modality=True, sp_weight=cmnas_losses.SP_WEIGHT,
        cmmd_weight=cmnas_losses.CMMD_WEIGHT, images_per_identity=int(images_per_identity)))


def _mixed_batch_inputs(images):
    return [images, tf.constant(MODE_MIXED, tf.int32)]


class BnSplitSearchSpace(SearchSpace):
    """CM-NAS's BN split/share search (see the module docstring).

    Built by the searcher as ``BnSplitSearchSpace(config, dataframe, input_shape)``; the
    ``bn_split_*`` fields of :class:`nas.search.SearchConfig` select the backbone, the data
    split, the weights-only warm-up, the backbone learning-rate multiplier, ImageNet weights
    and the optional EMA.
    """

    name = "bn_split"
    result_file_name = "config.cfg"

    def __init__(self, config, dataframe, input_shape):
        from reid_tf.data import dataset_protocol

        self.config = config
        self.protocol = dataset_protocol(config.dataset_name)
        if self.protocol not in CROSS_MODALITY_PROTOCOLS:
            raise ValueError(f"--dataset_name={config.dataset_name}: the bn_split search space "
                             "needs a visible-infrared dataset (SYSU_MM01, RegDB, "
                             "Synthetic_SYSU, Synthetic_RegDB).")
        train = dataframe[dataframe["split"] == "train"].reset_index(drop=True)
        if len(train) == 0:
            raise ValueError(f"{config.dataset_name}: the dataset has no training images "
                             "(check --dataset_name and --root_folder_path).")
        self._make_data(config, train)
        self._build_model(config, input_shape)

    # ------------------------------------------------------------------ data
    def _make_data(self, config, train):
        from reid_tf.data.augmentation import build_augmentation
        from reid_tf.data.pipeline import make_label_map
        from reid_tf.data.sampler import CrossModalitySampler
        from reid_tf.training.data import TrainingInput

        source = f"{config.dataset_name} training set"
        if config.bn_split_data_split == "per_identity_half":
            self.weight_part, self.arch_part = split_per_identity_half(train, config.seed,
                                                                       source)
            self.weight_label_map = make_label_map(train)
            self.arch_label_map = self.weight_label_map
            self.arch_uses_classifier = True
        elif config.bn_split_data_split == "official_val":
            if self.protocol != "sysu_mm01":
                raise ValueError(f"--bn_split_data_split=official_val: {config.dataset_name} "
                                 "has no official validation identities (SYSU-MM01 layout "
                                 "only); use per_identity_half.")
            from reid_tf.data.sysu_mm01 import read_id_file
            path = sysu_split_file(train, "val")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--bn_split_data_split=official_val: {path} not found "
                                        "(the SYSU-MM01 validation identities).")
            self.weight_part, self.arch_part = split_official_val(train, read_id_file(path),
                                                                  source)
            self.weight_label_map = make_label_map(self.weight_part)
            self.arch_label_map = make_label_map(self.arch_part)
            self.arch_uses_classifier = False
        else:
            raise ValueError(f"--bn_split_data_split={config.bn_split_data_split!r}: expected "
                             f"one of {', '.join(DATA_SPLITS)}.")
        P, K = config.identity_num_per_batch, config.image_num_per_identity
        for name, table in (("D_w (weights)", self.weight_part),
                            ("D_alpha (architecture)", self.arch_part)):
            identities = table["identity_ID"].nunique()
            if identities < P:
                raise ValueError(f"{config.dataset_name}: the bn_split {name} part has "
                                 f"{identities} identities, fewer than "
                                 f"--identity_num_per_batch={P}; lower it.")
        height, width = config.image_height, config.image_width
        augmentation = build_augmentation("cmnas", height, width)
        self.train_data = TrainingInput(
            self.weight_part, P, K, config.steps_per_epoch, height, width, augmentation,
            seed=config.seed, cross_modality=True, label_map=self.weight_label_map,
            workers=config.workers, cache_images=config.cache_images,
            resize=config.resize_interpolation)
        arch_seed = config.seed + VALID_SEED_OFFSET
        sampler = CrossModalitySampler.from_dataframe(self.arch_part, P, K, steps_per_epoch=None,
                                                      seed=arch_seed)
        self.valid_data = EndlessBatches(
            self.arch_part, sampler, height, width, augmentation, self.arch_label_map,
            seed=arch_seed, workers=config.workers, cache_images=config.cache_images,
            resize=config.resize_interpolation)

    # ------------------------------------------------------------------ network
    def _build_supernet(self, config, input_shape, num_classes):
        """``(models, network module)``: the supernet of ``--bn_split_backbone`` (every BN
        mixed; the config only gives the fallback switches) and the module of its
        switchable-BN contract (``switchable_bn_layers``, ``variable_groups``, ...)."""
        from reid_tf.models.factory import evaluation_outputs

        self.feature_index, self.secondary_features = evaluation_outputs(
            config.bn_split_backbone)
        if config.bn_split_backbone == "cmnas_resnet50":
            from reid_tf.models import cmnas
            from reid_tf.models.cmnas_config import ALL_SPLIT
            models = cmnas.build_cmnas_models(ALL_SPLIT, num_classes, input_shape=input_shape,
                                              mixed=True)
            if config.bn_split_backbone_weights_file_path:
                from reid_tf.models.cmnas_imagenet import load_imagenet_weights
                load_imagenet_weights(models.training_model,
                                      config.bn_split_backbone_weights_file_path,
                                      allow_pickle=config.allow_pickle,
                                      flag="--bn_split_backbone_weights_file_path")
            return models, cmnas
        if config.bn_split_backbone == "msinet":
            if config.bn_split_backbone_weights_file_path:
                raise ValueError("--bn_split_backbone_weights_file_path is for cmnas_resnet50 "
                                 "(ImageNet ResNet-50); the msinet supernet starts from its "
                                 "random initialisation.")
            from reid_tf.models import msinet_switchable
            from reid_tf.models.msinet import num_batch_norms
            models = msinet_switchable.build_switchable_msinet_models(
                config.bn_split_genotype, num_classes, [0] * num_batch_norms(),
                input_shape=input_shape, mixed=True)
            return models, msinet_switchable
        raise ValueError(f"--bn_split_backbone={config.bn_split_backbone!r}: expected one "
                         f"of {', '.join(BACKBONES)}.")

    def _build_model(self, config, input_shape):
        self.models, network = self._build_supernet(config, input_shape,
                                                    len(self.weight_label_map))
        groups = network.variable_groups(self.models)
        self.switchable_layers = network.switchable_bn_layers(self.models)
        self.weights_model = self.models.training_model
        self.groups = groups
        if len(groups.architecture) != len(self.switchable_layers) or groups.frozen:
            raise ValueError("bn_split: the supernet must have one α per switchable BN and no "
                             "frozen BN set.")
        self._weight_variables = list(groups.backbone) + list(groups.head)
        self._arch_variables = list(groups.architecture)
        self.objective = bn_split_objective(config.image_num_per_identity)
        self.ema = None
        if config.bn_split_ema_decay > 0:
            from reid_tf.training.ema import WeightEMA
            self.ema = WeightEMA(self._weight_variables + self.state_variables,
                                 decay=config.bn_split_ema_decay, name="bn_split_ema")
        self.weights_only_epochs = int(config.bn_split_warmup_epochs)
        self._evaluator = None

    @property
    def layer_names(self):
        """Names of the switchable BNs in config order."""
        return [layer.name for layer in self.switchable_layers]

    def summary(self):
        return (f"Supernet {self.config.bn_split_backbone}: {len(self.switchable_layers)} mixed "
                f"BN layers; data split {self.config.bn_split_data_split}: "
                f"{describe_part('D_w', self.weight_part)}; "
                f"{describe_part('D_alpha', self.arch_part)}; weights-only epochs "
                f"{self.weights_only_epochs}.")

    # ------------------------------------------------------------------ interface
    @property
    def weight_variables(self):
        return self._weight_variables

    @property
    def arch_variables(self):
        return self._arch_variables

    def objective_terms(self, outputs, labels, with_classifier=True):
        """The loss terms of a mode-0 batch's training outputs (``total`` included);
        ``with_classifier=False`` leaves out the cross-entropy."""
        if not with_classifier:
            outputs = {name: value for name, value in outputs.items() if name != "logits"}
        return self.objective(outputs, labels)

    def _loss(self, images, labels, with_classifier):
        outputs = self.models.training_model(_mixed_batch_inputs(images), training=True)
        losses = self.objective_terms(outputs, labels, with_classifier)
        logits = outputs["logits"][0]
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)),
                                          tf.float32))
        return losses["total"], {"accuracy": accuracy}

    def train_loss(self, images, labels):
        return self._loss(images, labels, True)

    def valid_loss(self, images, labels):
        return self._loss(images, labels, self.arch_uses_classifier)

    def begin_epoch(self, epoch):
        """The EMA → live reset every ``bn_split_ema_reset_epochs`` epochs (before the epoch's
        steps, so a run resumed at an epoch boundary resets as the uninterrupted one)."""
        every = self.config.bn_split_ema_reset_epochs
        if self.ema is not None and every > 0 and epoch > 0 and epoch % every == 0:
            self.ema.copy_shadow_to_model()

    def make_weight_optimizer(self, config, learning_rate):
        return GroupedWeightOptimizer(
            self.groups.backbone, self.groups.head, learning_rate,
            config.bn_split_backbone_lr_multiplier, config.weight_decay, ema=self.ema)

    def checkpoint_objects(self):
        objects = {"model": self.weights_model}
        if self.ema is not None:
            objects["ema"] = self.ema
        return objects

    def alpha_array(self):
        """α of every switchable BN in config order, ``(L, 2)`` (columns split, share)."""
        return np.stack([variable.numpy() for variable in self._arch_variables])

    def derive(self):
        from reid_tf.models.cmnas_config import derive_config
        return derive_config(self.alpha_array())

    def write_result(self, result, file_path):
        from reid_tf.models.cmnas_config import write_config
        write_config(result, file_path, length=len(self.switchable_layers))
        return file_path

    def describe(self, result):
        shared = int(sum(result))
        return (f"config = {' '.join(str(value) for value in result)} "
                f"({len(result) - shared} split, {shared} share)")

    def architecture_arrays(self):
        alpha = self.alpha_array()
        return {"alpha": alpha, "weights": softmax_rows(alpha)}

    def alpha_history(self, file_path):
        return SwitchAlphaHistory(file_path, self.layer_names)

    def plot_alpha_history(self, history, file_path):
        return plot_switch_history(history, file_path)

    def embed(self, images, mode=1):
        """Evaluation features (eval mode) of normalised images of one modality (mode 1
        visible, 2 infrared)."""
        outputs = self.models.inference_model([images, mode], training=False)
        if isinstance(outputs, (list, tuple)):
            if self.feature_index is not None:
                return outputs[self.feature_index]
            return tf.concat(list(outputs), axis=-1)
        return outputs

    def evaluate(self, dataframe, folder, tag):
        """The supernet under the dataset's cross-modality protocol
        (:class:`~reid_tf.evaluation.dataset_evaluator.DatasetEvaluator`: mode 1/2 by
        modality, L2-normalised cosine features; SYSU-MM01 gallery trial 0, RegDB both
        directions); writes into ``folder``."""
        from reid_tf.evaluation.dataset_evaluator import DatasetEvaluator

        config = self.config
        if self._evaluator is None:
            shot = int(dict(config.dataset_options).get("shot", 1))
            settings = evaluation_settings(config, metric="cosine", normalize=True,
                                           trial_num=EVALUATION_TRIALS, sysu_shot=shot)
            self._evaluator = DatasetEvaluator(
                settings, config.dataset_name, config.root_folder_path, dataframe, folder,
                feature_index=self.feature_index, secondary_features=self.secondary_features)
        return self._evaluator(self.models.inference_model, tag)

