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
import types

import numpy as np
import tensorflow as tf

from nas.genotypes import AlphaHistory, softmax_rows
from nas.searcher import VALID_SEED_OFFSET, SearchSpace, register_search_space
from nas.tcm import EndlessBatches

BACKBONES = ("cmnas_resnet50", "msinet")
DATA_SPLITS = ("per_identity_half", "official_val")
CROSS_MODALITY_PROTOCOLS = ("sysu_mm01", "regdb")
MODE_MIXED = 0
# Weight optimiser of CM-NAS (cmnas.md §8.1).
WEIGHT_BETA_1 = 0.5
WEIGHT_BETA_2 = 0.999
WEIGHT_EPSILON = 1e-8
# The reference's mid-training SYSU-MM01 test uses gallery trial 0 only (cmnas.md §8.4).
EVALUATION_TRIALS = 1


# --------------------------------------------------------------------------------------------
# Data split
# --------------------------------------------------------------------------------------------
def split_per_identity_half(train_dataframe, seed=0, source="training set"):
    """Split training rows per identity and modality into ``(D_w, D_alpha)``.

    For every (identity, modality) group, in ascending identity order and ``infrared`` before
    ``visible``, a permutation drawn from ``numpy.random.default_rng(seed)`` (one generator for
    all groups) sends its first ``ceil(n / 2)`` rows to ``D_w`` and the remaining
    ``floor(n / 2)`` to ``D_alpha``. Identities with fewer than 2 rows in either modality go
    to ``D_w`` whole (they could not be in both parts). Both tables keep the input's row order
    and its index is reset.

    Raises ValueError (naming ``source``) for a table without ``identity_ID``/``modality``
    columns or when no identity can be halved.
    """
    for column in ("identity_ID", "modality"):
        if column not in getattr(train_dataframe, "columns", ()):
            raise ValueError(f"{source}: the bn_split data split needs a table with a "
                             f"{column} column.")
    table = train_dataframe.reset_index(drop=True)
    identities = table["identity_ID"].to_numpy()
    modalities = table["modality"].astype(str).to_numpy()
    counts = table.groupby(["identity_ID", "modality"]).size()
    halvable = set()
    for identity in np.unique(identities):
        sizes = [int(counts.get((identity, modality), 0)) for modality in ("infrared", "visible")]
        if min(sizes) >= 2:
            halvable.add(identity)
    if not halvable:
        raise ValueError(f"{source}: no identity has at least 2 visible and 2 infrared training "
                         "images, so none can be split in halves (--bn_split_data_split="
                         "per_identity_half).")
    generator = np.random.default_rng(seed)
    to_alpha = np.zeros(len(table), dtype=bool)
    for identity in sorted(halvable):
        for modality in ("infrared", "visible"):
            rows = np.flatnonzero((identities == identity) & (modalities == modality))
            order = rows[generator.permutation(len(rows))]
            to_alpha[order[(len(rows) + 1) // 2:]] = True
    return (table[~to_alpha].reset_index(drop=True), table[to_alpha].reset_index(drop=True))


def sysu_split_file(train_dataframe, name="val"):
    """Path of SYSU-MM01's ``exp/<name>_id.txt`` for a table read by the SYSU-MM01 loader
    (image paths ``<root>/SYSU-MM01/cam<K>/<id>/<file>``)."""
    first = str(train_dataframe["image_file_path"].iloc[0])
    dataset_folder = os.path.dirname(os.path.dirname(os.path.dirname(first)))
    return os.path.join(dataset_folder, "exp", f"{name}_id.txt")


def split_official_val(train_dataframe, val_identities, source="training set"):
    """``(D_w, D_alpha)``: the rows of identities not in ``val_identities`` and those in it."""
    table = train_dataframe.reset_index(drop=True)
    in_val = table["identity_ID"].isin([int(value) for value in val_identities]).to_numpy()
    if not in_val.any() or in_val.all():
        raise ValueError(f"{source}: the official validation identities select "
                         f"{int(in_val.sum())} of {len(table)} training images; both parts "
                         "must be non-empty (--bn_split_data_split=official_val).")
    return table[~in_val].reset_index(drop=True), table[in_val].reset_index(drop=True)


def _describe_part(name, table):
    visible = int((table["modality"] == "visible").sum())
    return (f"{name}: {len(table)} images ({visible} visible, {len(table) - visible} infrared) "
            f"of {table['identity_ID'].nunique()} identities")


# --------------------------------------------------------------------------------------------
# Weight optimiser: CM-NAS's two learning-rate groups as one object
# --------------------------------------------------------------------------------------------
class _Untracked:
    """Holds an object that checkpoints must not track through this one."""

    def __init__(self, item):
        self.item = item


class GroupedWeightOptimizer(tf.Module):
    """CM-NAS's weight optimiser (cmnas.md §8.1) behind the single-optimiser interface of the
    searcher: one :class:`reid_tf.training.optimizers.TorchAdam` per group, the backbone's at
    ``backbone_multiplier`` × the learning rate, the head's at the learning rate.

    Args:
      backbone_variables, head_variables: the two groups (disjoint).
      learning_rate: the head (base) learning rate.
      backbone_multiplier: backbone learning rate / base learning rate (0.1).
      weight_decay: coupled L2 weight decay of both groups.
      ema: optional :class:`reid_tf.training.ema.WeightEMA`, updated after every step.

    ``learning_rate`` reads the base rate (a variable, so traced steps see changes) and
    setting it sets both groups; ``apply_gradients(pairs)`` steps each group on its pairs (a
    variable of neither group is an error); ``weight_decay_l2`` is the decay (read by the
    unrolled architecture step). Both Adam states are tracked for checkpoints.
    """

    def __init__(self, backbone_variables, head_variables, learning_rate, backbone_multiplier,
                 weight_decay, ema=None, beta_1=WEIGHT_BETA_1, beta_2=WEIGHT_BETA_2,
                 epsilon=WEIGHT_EPSILON):
        super().__init__(name="grouped_weight_optimizer")
        from reid_tf.training.optimizers import TorchAdam

        self.backbone_multiplier = float(backbone_multiplier)
        self.weight_decay_l2 = float(weight_decay)
        self._backbone_ids = frozenset(id(variable) for variable in backbone_variables)
        self._head_ids = frozenset(id(variable) for variable in head_variables)
        if self._backbone_ids & self._head_ids:
            raise ValueError("GroupedWeightOptimizer: a variable is in both groups.")
        self._rate = tf.Variable(float(learning_rate), trainable=False, dtype=tf.float32,
                                 name="base_learning_rate")
        options = dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                       weight_decay_l2=self.weight_decay_l2)
        self.backbone_optimizer = TorchAdam(
            learning_rate=float(learning_rate) * self.backbone_multiplier, name="backbone_adam",
            **options)
        self.head_optimizer = TorchAdam(learning_rate=float(learning_rate), name="head_adam",
                                        **options)
        self._ema = _Untracked(ema)

    @property
    def learning_rate(self):
        return self._rate

    @learning_rate.setter
    def learning_rate(self, value):
        value = float(value)
        self._rate.assign(value)
        self.backbone_optimizer.learning_rate = value * self.backbone_multiplier
        self.head_optimizer.learning_rate = value

    def _partition(self, variables_or_pairs, key):
        backbone, head = [], []
        for item in variables_or_pairs:
            variable = key(item)
            if id(variable) in self._backbone_ids:
                backbone.append(item)
            elif id(variable) in self._head_ids:
                head.append(item)
            else:
                raise ValueError(f"GroupedWeightOptimizer: {variable.name} is in neither the "
                                 "backbone nor the head group.")
        return backbone, head

    def build(self, variables):
        """Build both Adam states on their groups' members of ``variables``."""
        backbone, head = self._partition(variables, lambda variable: variable)
        self.backbone_optimizer.build(backbone)
        self.head_optimizer.build(head)

    def apply_gradients(self, pairs):
        """One Adam step per group on its ``(gradient, variable)`` pairs, then the EMA."""
        backbone, head = self._partition(list(pairs), lambda pair: pair[1])
        if backbone:
            self.backbone_optimizer.apply_gradients(backbone)
        if head:
            self.head_optimizer.apply_gradients(head)
        if self._ema.item is not None:
            self._ema.item.update()

    @property
    def variables(self):
        """Both optimisers' state variables (backbone first)."""
        return list(self.backbone_optimizer.variables) + list(self.head_optimizer.variables)


# --------------------------------------------------------------------------------------------
# History of the architecture weights
# --------------------------------------------------------------------------------------------
class SwitchAlphaHistory(AlphaHistory):
    """α of the mixed BNs per logged epoch in an ``.npz`` file: ``epochs (T,)``,
    ``alpha (T, L, 2)``, ``weights (T, L, 2)`` (softmax, columns split/share) and
    ``layers (L,)`` (layer names in config order). Logging an epoch again replaces it."""

    def __init__(self, file_path, layer_names):
        self.layer_names = [str(name) for name in layer_names]
        super().__init__(file_path, shape=(len(self.layer_names), 2),
                         meaning="one (split, share) row per switchable BN",
                         labels={"layers": self.layer_names})


def plot_switch_history(history, file_path, title="π_share of every switchable BN"):
    """Heatmap of ``π_share`` (0: split, 1: share; rows: layers in config order, columns:
    logged epochs). Returns ``file_path``, or ``None`` for an empty history."""
    arrays = history.arrays() if isinstance(history, AlphaHistory) else history
    weights, epochs = np.asarray(arrays["weights"]), np.asarray(arrays["epochs"])
    if len(epochs) == 0:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    share = weights[:, :, 1].T  # (layers, epochs)
    layers = [str(name) for name in arrays["layers"]]
    width, height = max(6.0, 0.25 * len(epochs) + 4.0), max(4.0, 0.16 * len(layers) + 1.5)
    figure, axis = plt.subplots(figsize=(width, height), dpi=100)
    # Fixed margins (tight_layout costs more than the drawing): room for the layer names.
    figure.subplots_adjust(left=2.2 / width, right=0.9, bottom=0.7 / height,
                           top=1.0 - 0.4 / height)
    image = axis.imshow(share, aspect="auto", interpolation="nearest", cmap="coolwarm",
                        vmin=0.0, vmax=1.0)
    axis.set_yticks(np.arange(len(layers)))
    axis.set_yticklabels([f"{index} {name}" for index, name in enumerate(layers)], fontsize=5)
    tick_step = max(1, len(epochs) // 20)
    ticks = np.arange(0, len(epochs), tick_step)
    axis.set_xticks(ticks)
    axis.set_xticklabels([str(int(epochs[i])) for i in ticks], fontsize=7)
    axis.set_xlabel("completed epochs")
    axis.set_title(title)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.03, pad=0.02)
    colorbar.set_label("π_share (above 0.5: share, else split)")
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    figure.savefig(file_path)
    plt.close(figure)
    return file_path


# --------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------
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
            workers=config.workers, cache_images=config.cache_images)
        arch_seed = config.seed + VALID_SEED_OFFSET
        sampler = CrossModalitySampler.from_dataframe(self.arch_part, P, K, steps_per_epoch=None,
                                                      seed=arch_seed)
        self.valid_data = EndlessBatches(
            self.arch_part, sampler, height, width, augmentation, self.arch_label_map,
            seed=arch_seed, workers=config.workers, cache_images=config.cache_images)

    # ------------------------------------------------------------------ network
    def _build_model(self, config, input_shape):
        from reid_tf.models import cmnas, msinet
        from reid_tf.models.cmnas_config import ALL_SPLIT

        num_classes = len(self.weight_label_map)
        if config.bn_split_backbone == "cmnas_resnet50":
            self.models = cmnas.build_cmnas_models(ALL_SPLIT, num_classes,
                                                   input_shape=input_shape, mixed=True)
            if config.bn_split_backbone_weights_file_path:
                cmnas.load_imagenet_weights(self.models.training_model,
                                            config.bn_split_backbone_weights_file_path)
            groups = cmnas.cmnas_variable_groups(self.models)
            self.switchable_layers = cmnas.switchable_bn_layers(self.models)
            self.feature_index, self.secondary_features = 1, {"pre_bnneck": 0}
        elif config.bn_split_backbone == "msinet":
            if config.bn_split_backbone_weights_file_path:
                raise ValueError("--bn_split_backbone_weights_file_path is for cmnas_resnet50 "
                                 "(ImageNet ResNet-50); the msinet supernet starts from its "
                                 "random initialisation.")
            fallback = [0] * msinet.num_batch_norms()
            self.models = msinet.build_msinet_models(config.bn_split_genotype, num_classes,
                                                     input_shape=input_shape,
                                                     bn_config=fallback, mixed=True)
            groups = msinet.switchable_variable_groups(self.models)
            self.switchable_layers = msinet.switchable_batch_norm_layers(self.models)
            self.feature_index, self.secondary_features = None, {}
        else:
            raise ValueError(f"--bn_split_backbone={config.bn_split_backbone!r}: expected one "
                             f"of {', '.join(BACKBONES)}.")
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
                f"{_describe_part('D_w', self.weight_part)}; "
                f"{_describe_part('D_alpha', self.arch_part)}; weights-only epochs "
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
        """The supernet under the dataset's cross-modality protocol (reid_tf.training.run's
        :class:`DatasetEvaluator`: mode 1/2 by modality, L2-normalised cosine features;
        SYSU-MM01 gallery trial 0, RegDB both directions); writes into ``folder``."""
        from reid_tf.training.run import DatasetEvaluator

        config = self.config
        if self._evaluator is None:
            options = dict(config.dataset_options)
            values = types.SimpleNamespace(
                distance_metric="cosine", feature_normalization=True, use_re_ranking=False,
                evaluation_trial_num=EVALUATION_TRIALS, sysu_shot=int(options.get("shot", 1)),
                seed=config.seed, test_batch_size=config.test_batch_size,
                identity_num_per_batch=config.identity_num_per_batch,
                image_num_per_identity=config.image_num_per_identity,
                image_height=config.image_height, image_width=config.image_width,
                use_horizontal_flipping_in_evaluation=False, save_data_to_disk=False)
            self._evaluator = DatasetEvaluator(
                values, config.dataset_name, config.root_folder_path, dataframe, folder,
                feature_index=self.feature_index, secondary_features=self.secondary_features)
        return self._evaluator(self.models.inference_model, tag)


register_search_space("bn_split", BnSplitSearchSpace)
