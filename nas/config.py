"""The configuration of a search: :class:`SearchConfig` (every setting, validated), the
per-space defaults and the run folder.

``python -m nas.search`` (:mod:`nas.search`) builds a config from its flags; the library
(:mod:`nas.searcher`, :mod:`nas.spaces`) takes the config.
"""
import dataclasses
import os

from reid_tf.runtime.choices import RESIZE_INTERPOLATIONS, STRATEGIES

# Search spaces (their classes: nas.spaces.SEARCH_SPACES).
SEARCH_SPACE_NAMES = ("msi", "bn_split")
BN_SPLIT_BACKBONES = ("cmnas_resnet50", "msinet")
BN_SPLIT_DATA_SPLITS = ("per_identity_half", "official_val")

# Per-space defaults of SearchConfig fields, used for every flag the user leaves unset (and by
# SearchConfig.for_space). msi's are the dataclass defaults (the reference search command).
# bn_split: cmnas.md §11.2 [RECON] — w as in §8.1 (Adam, groups, decay, warm-up; schedule
# shortened to ~50 epochs), α with DARTS' Adam at a constant rate, clean alternation.
SPACE_DEFAULTS = {
    "msi": {},
    "bn_split": {
        "dataset_name": "SYSU_MM01",
        "epoch_num": 50,
        "learning_rate": 0.01,
        "weight_decay": 5e-4,
        "milestones": (40,),
        "warmup_epochs": 10,
        "warmup_factor": 0.01,
        "arch_learning_rate": 3e-4,
        "arch_weight_decay": 1e-3,
        "arch_beta_1": 0.5,
        "arch_beta_2": 0.999,
        "arch_milestones": (),
        "genotype_interval": 1,
        "evaluation_interval": 10,
        "clean_bilevel": True,
    },
}
@dataclasses.dataclass
class SearchConfig:
    """Every setting of a search (``python -m nas.search`` builds one from its flags).

    Defaults reproduce the reference search command (msinet.md §6.3, §9.1a): MSMT17, 256×128,
    16 × 4 batches, 350 epochs; weights: SGD lr 0.025, momentum 0.9, weight decay 5e-4, warm-up
    10 epochs from 0.01, milestones 150/225/300, γ 0.1; α: Adam lr 0.002, betas (0.5, 0.999),
    eps 1e-8, weight decay 1e-3, milestones 150/225/350; genotype interval 5, evaluation
    interval 40, test batch 128, seed 0.
    """

    dataset_name: str = "MSMT17"
    root_folder_path: str = ""
    dataset_options: dict = dataclasses.field(default_factory=dict)
    image_height: int = 256
    image_width: int = 128
    identity_num_per_batch: int = 16
    image_num_per_identity: int = 4
    steps_per_epoch: int = 0
    epoch_num: int = 350
    output_folder_path: str = "output"
    run_folder_path: str = ""
    workers: int = 4
    seed: int = 0
    deterministic: bool = False
    cache_images: bool = False
    resize_interpolation: str = "opencv_bilinear"
    jit_compile: bool = False
    strategy: str = "default"
    search_space: str = "msi"
    learning_rate: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple = (150, 225, 300)
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    gamma: float = 0.1
    arch_learning_rate: float = 0.002
    arch_weight_decay: float = 1e-3
    arch_beta_1: float = 0.5
    arch_beta_2: float = 0.999
    arch_epsilon: float = 1e-8
    arch_milestones: tuple = (150, 225, 350)
    arch_gamma: float = 0.1
    genotype_interval: int = 5
    evaluation_interval: int = 40
    test_batch_size: int = 128
    clean_bilevel: bool = False
    unrolled: bool = False
    save_genotype_to: str = ""
    verbose: int = 1
    mixed_precision: str = ""
    # bn_split only (nas.spaces.bn_split)
    bn_split_backbone: str = "cmnas_resnet50"
    bn_split_data_split: str = "per_identity_half"
    bn_split_warmup_epochs: int = 10
    bn_split_backbone_lr_multiplier: float = 0.1
    bn_split_backbone_weights_file_path: str = ""
    allow_pickle: bool = False
    bn_split_genotype: str = "msmt"
    bn_split_ema_decay: float = 0.0
    bn_split_ema_reset_epochs: int = 0

    @classmethod
    def for_space(cls, search_space, **values):
        """A config of ``search_space`` with that space's :data:`SPACE_DEFAULTS` under
        ``values`` (e.g. ``SearchConfig.for_space("bn_split", dataset_name="RegDB")``)."""
        if search_space not in SPACE_DEFAULTS:
            raise ValueError(f"--search_space={search_space!r}: expected one of "
                             f"{', '.join(SEARCH_SPACE_NAMES)}.")
        return cls(**{**SPACE_DEFAULTS[search_space], **values, "search_space": search_space})

    def validate(self):
        """Raise ``ValueError`` naming the flag of the first bad value."""
        def check(condition, message):
            if not condition:
                raise ValueError(message)

        from reid_tf.data import dataset_protocol
        dataset_protocol(self.dataset_name)  # a DatasetError names --dataset_name
        check(self.search_space in SEARCH_SPACE_NAMES,
              f"--search_space={self.search_space!r}: expected one of "
              f"{', '.join(SEARCH_SPACE_NAMES)}.")
        check(self.image_height >= 16 and self.image_width >= 16,
              f"--image_height={self.image_height} / --image_width={self.image_width}: the "
              "search network needs at least 16x16 inputs.")
        check(self.identity_num_per_batch >= 1,
              f"--identity_num_per_batch={self.identity_num_per_batch}: must be >= 1.")
        check(self.image_num_per_identity >= 1,
              f"--image_num_per_identity={self.image_num_per_identity}: must be >= 1.")
        check(self.steps_per_epoch >= 0, f"--steps_per_epoch={self.steps_per_epoch}: must be "
                                         ">= 0 (0: one pass of the train sampler).")
        check(self.epoch_num >= 0, f"--epoch_num={self.epoch_num}: must be >= 0.")
        check(self.workers >= 1, f"--workers={self.workers}: must be >= 1.")
        check(self.seed >= 0, f"--seed={self.seed}: must be >= 0.")
        check(self.learning_rate > 0, f"--search_learning_rate={self.learning_rate}: must be > 0.")
        check(self.arch_learning_rate > 0,
              f"--arch_learning_rate={self.arch_learning_rate}: must be > 0.")
        check(0 <= self.momentum < 1, f"--search_momentum={self.momentum}: must be in [0, 1).")
        check(self.weight_decay >= 0, f"--search_weight_decay={self.weight_decay}: must be >= 0.")
        check(self.arch_weight_decay >= 0,
              f"--arch_weight_decay={self.arch_weight_decay}: must be >= 0.")
        check(0 <= self.arch_beta_1 < 1 and 0 <= self.arch_beta_2 < 1,
              f"--arch_beta_1={self.arch_beta_1} / --arch_beta_2={self.arch_beta_2}: must be in "
              "[0, 1).")
        check(self.arch_epsilon > 0, f"--arch_epsilon={self.arch_epsilon}: must be > 0.")
        check(self.warmup_epochs >= 0, f"--search_warmup_epochs={self.warmup_epochs}: must be "
                                       ">= 0.")
        check(self.genotype_interval >= 1,
              f"--genotype_interval={self.genotype_interval}: must be >= 1.")
        check(self.evaluation_interval >= 0,
              f"--evaluation_interval={self.evaluation_interval}: must be >= 0 (0: never).")
        check(self.test_batch_size >= 1,
              f"--search_test_batch_size={self.test_batch_size}: must be >= 1.")
        for name, values in (("search_milestones", self.milestones),
                             ("arch_milestones", self.arch_milestones)):
            check(all(later >= earlier for earlier, later in zip(values, values[1:])),
                  f"--{name}={','.join(map(str, values))}: must be ascending.")
        check(self.mixed_precision in ("", "mixed_bfloat16"),
              f"--mixed_precision={self.mixed_precision!r}: the search runs in float32 ('') or "
              "under mixed_bfloat16 (bf16 compute; α, the memories, BatchNorm and the losses "
              "stay float32). mixed_float16 would need loss scaling for both optimizers: use "
              "mixed_bfloat16 (CPUs with AVX512-BF16/AMX, NVIDIA Ampere or newer).")
        check(self.resize_interpolation in RESIZE_INTERPOLATIONS,
              f"--resize_interpolation={self.resize_interpolation!r}: expected one of "
              f"{', '.join(RESIZE_INTERPOLATIONS)}.")
        check(self.strategy in STRATEGIES,
              f"--strategy={self.strategy!r}: expected one of {', '.join(STRATEGIES)}.")
        if self.search_space == "bn_split":
            self._validate_bn_split(check)

    def _validate_bn_split(self, check):
        check(self.bn_split_backbone in BN_SPLIT_BACKBONES,
              f"--bn_split_backbone={self.bn_split_backbone!r}: expected one of "
              f"{', '.join(BN_SPLIT_BACKBONES)}.")
        check(self.bn_split_data_split in BN_SPLIT_DATA_SPLITS,
              f"--bn_split_data_split={self.bn_split_data_split!r}: expected one of "
              f"{', '.join(BN_SPLIT_DATA_SPLITS)}.")
        check(self.image_height >= 32 and self.image_width >= 32,
              f"--image_height={self.image_height} / --image_width={self.image_width}: the "
              "bn_split supernets need at least 32x32 inputs.")
        check(self.bn_split_warmup_epochs >= 0,
              f"--bn_split_warmup_epochs={self.bn_split_warmup_epochs}: must be >= 0.")
        check(self.bn_split_backbone_lr_multiplier > 0,
              f"--bn_split_backbone_learning_rate_multiplier="
              f"{self.bn_split_backbone_lr_multiplier}: must be > 0.")
        check(0 <= self.bn_split_ema_decay < 1,
              f"--bn_split_ema_decay={self.bn_split_ema_decay}: must be in [0, 1) (0: off).")
        check(self.bn_split_ema_reset_epochs >= 0,
              f"--bn_split_ema_reset_epochs={self.bn_split_ema_reset_epochs}: must be >= 0 "
              "(0: never).")
        check(not (self.bn_split_ema_reset_epochs and not self.bn_split_ema_decay),
              f"--bn_split_ema_reset_epochs={self.bn_split_ema_reset_epochs} needs "
              "--bn_split_ema_decay > 0.")
        weights = self.bn_split_backbone_weights_file_path
        check(not weights or self.bn_split_backbone == "cmnas_resnet50",
              f"--bn_split_backbone_weights_file_path={weights}: ImageNet weights are for "
              "--bn_split_backbone=cmnas_resnet50.")
        check(not weights or os.path.isfile(os.path.expanduser(weights)),
              f"--bn_split_backbone_weights_file_path={weights}: no such file.")


def run_folder(config):
    """``<output_folder_path>/<dataset_name>_search`` (``_search_<space>`` for other spaces)."""
    if config.run_folder_path:
        return os.path.abspath(os.path.expanduser(config.run_folder_path))
    suffix = "search" if config.search_space == "msi" else f"search_{config.search_space}"
    return os.path.abspath(os.path.join(os.path.expanduser(config.output_folder_path),
                                        f"{config.dataset_name}_{suffix}"))


