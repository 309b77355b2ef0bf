"""``python -m nas.search``: differentiable architecture search (MSINet's MSI space with TCM,
CM-NAS's BN split/share space).

    python -m nas.search --flagfile=configs/nas/msmt17.flags --root_folder_path=/data
    python -m nas.search --flagfile=configs/nas/synthetic_quick.flags      # a few minutes, CPU
    python -m nas.search --flagfile=configs/nas/bn_split_sysu.flags --root_folder_path=/data
    python -m nas.search --helpfull

The dataset and batch flags are those of ``solution.py`` (``reid_tf.flags.define_data_flags``:
``dataset_name``, ``root_folder_path``, ``image_height``, ``image_width``,
``identity_num_per_batch``, ``image_num_per_identity``, ``steps_per_epoch``, ``epoch_num``,
``output_folder_path``, ``workers``, ``seed``, ``deterministic``, ``cache_images``,
``strategy``, ``mixed_precision``, ``jit_compile``), with the reference search's defaults
(MSMT17, 256×128, 16 × 4, one sampler pass per epoch, 350 epochs). ``--strategy`` runs the
msi search on several GPUs (``mirrored``) or machines (``multi_worker`` with ``TF_CONFIG``);
see :mod:`nas.searcher` and the README. The search's own flags follow the reference
``search.py`` (msinet.md §9.1a):

=============================  ==================  ============================================
flag                           default             reference
=============================  ==================  ============================================
``search_space``               ``msi``             (``bn_split``: CM-NAS, see below)
``search_learning_rate``       0.025               ``--lr``
``search_momentum``            0.9                 ``--momentum``
``search_weight_decay``        5e-4                ``--weight-decay``
``search_milestones``          150,225,300         ``--milestones``
``search_warmup_epochs``       10                  ``--warmup-step`` (from factor 0.01)
``arch_learning_rate``         0.002               ``--arch-lr``
``arch_weight_decay``          1e-3                ``--arch-weight-decay``
``arch_milestones``            150,225,350         (hard-coded MultiStepLR)
``genotype_interval``          5                   ``--geno-interval``
``evaluation_interval``        40                  ``--eval-interval``
``search_test_batch_size``     128                 ``--test-batch-size``
``clean_bilevel``              False               (new: no accumulated validation gradient,
                                                   no skipped first iteration)
``unrolled``                   False               (new: second-order DARTS gradient)
``save_genotype_to``           ""                  (new: publish, e.g. configs/genotypes/X.json)
=============================  ==================  ============================================

The run folder is ``<output_folder_path>/<dataset_name>_search``; running the same command
again resumes from its checkpoint (see :mod:`nas.searcher` for the files written there).

``--search_space=bn_split`` (CM-NAS's BN split/share search, :mod:`nas.spaces.bn_split`; cmnas.md
§11.2 [RECON]) has its own defaults for every flag the user does not set
(:data:`SPACE_DEFAULTS`): SYSU_MM01, 50 epochs, weights with CM-NAS's Adam (head lr 0.01,
backbone × 0.1, weight decay 5e-4, warm-up 10 epochs from 0.01, ×0.1 at epoch 40), α with
DARTS' Adam (lr 3e-4, betas 0.5/0.999, weight decay 1e-3, constant), clean first-order
alternation, the result (``config.cfg``) logged every epoch, evaluation every 10 epochs. Its
own flags: ``bn_split_backbone`` (``cmnas_resnet50`` | ``msinet``), ``bn_split_data_split``
(``per_identity_half`` | ``official_val``), ``bn_split_warmup_epochs`` (10, weights only),
``bn_split_backbone_learning_rate_multiplier`` (0.1), ``bn_split_backbone_weights_file_path``
(ImageNet ResNet-50), ``bn_split_genotype`` (msinet backbone), ``bn_split_ema_decay`` and
``bn_split_ema_reset_epochs`` (off), and ``save_config_to`` (publish, e.g.
``configs/cmnas/NAME.cfg``; same as ``save_genotype_to``). Its run folder is
``<output_folder_path>/<dataset_name>_search_bn_split``.
"""
import dataclasses
import os
import sys

import reid_tf  # noqa: F401  (selects tf-keras before TensorFlow is imported)
from absl import app, flags

from nas.config import (BN_SPLIT_BACKBONES, BN_SPLIT_DATA_SPLITS, SEARCH_SPACE_NAMES,
                        SPACE_DEFAULTS, SearchConfig)
from reid_tf.cli import app as cli_app
from reid_tf.cli.validation import flag_given
from reid_tf.flags import define_data_flags, parse_dataset_options

FLAGS = flags.FLAGS

# SearchConfig field -> the flag that sets it (for the fields of SPACE_DEFAULTS).
FIELD_FLAGS = {
    "dataset_name": "dataset_name", "epoch_num": "epoch_num",
    "learning_rate": "search_learning_rate", "weight_decay": "search_weight_decay",
    "milestones": "search_milestones", "warmup_epochs": "search_warmup_epochs",
    "warmup_factor": "search_warmup_factor", "arch_learning_rate": "arch_learning_rate",
    "arch_weight_decay": "arch_weight_decay", "arch_beta_1": "arch_beta_1",
    "arch_beta_2": "arch_beta_2", "arch_milestones": "arch_milestones",
    "genotype_interval": "genotype_interval", "evaluation_interval": "evaluation_interval",
    "clean_bilevel": "clean_bilevel",
}


# --------------------------------------------------------------------------------------------
# Flags and the command line
# --------------------------------------------------------------------------------------------
# The reference search command's values of the shared data flags (msinet.md §6.3, §9.1a).
SHARED_FLAG_DEFAULTS = {
    "dataset_name": "MSMT17",
    "image_height": 256,
    "image_width": 128,
    "identity_num_per_batch": 16,
    "image_num_per_identity": 4,
    "steps_per_epoch": 0,
    "epoch_num": 350,
    "workers": 4,
}


def _milestones(text, flag_name):
    from reid_tf.training.schedules import parse_milestones
    try:
        return parse_milestones(text)
    except ValueError:
        raise flags.ValidationError(f"--{flag_name}={text!r}: expected comma-separated "
                                    "integers, e.g. 150,225,300.") from None


def define_search_flags():
    """Define the flags of ``python -m nas.search`` on the global ``FLAGS``.

    Calls :func:`reid_tf.flags.define_data_flags` (shared with ``solution.py``) and sets the
    reference search defaults of those shared flags, then defines the search's own flags
    (names that ``solution.py`` does not use, so one process may define both).
    """
    define_data_flags()
    for name, value in SHARED_FLAG_DEFAULTS.items():
        FLAGS.set_default(name, value)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    FLAGS.set_default("output_folder_path", os.path.join(here, "output"))
    flags.DEFINE_enum("search_space", "msi", list(SEARCH_SPACE_NAMES),
                      "Search space: msi (MSINet's multi-scale interactions with TCM) or "
                      "bn_split (CM-NAS: split or share every BN, visible-infrared data; "
                      "flags left unset take its own defaults, see nas.search).")
    flags.DEFINE_float("search_learning_rate", 0.025, "Weights: SGD learning rate.")
    flags.DEFINE_float("search_momentum", 0.9, "Weights: SGD momentum.")
    flags.DEFINE_float("search_weight_decay", 5e-4,
                       "Weights: coupled L2 weight decay on every trainable weight.")
    flags.DEFINE_string("search_milestones", "150,225,300",
                        "Weights: epochs where the learning rate is multiplied by 0.1.")
    flags.DEFINE_integer("search_warmup_epochs", 10,
                         "Weights: linear warm-up epochs (from --search_warmup_factor).")
    flags.DEFINE_float("search_warmup_factor", 0.01, "Weights: warm-up starting factor.")
    flags.DEFINE_float("arch_learning_rate", 0.002, "α: Adam learning rate.")
    flags.DEFINE_float("arch_weight_decay", 1e-3, "α: coupled L2 weight decay (Adam).")
    flags.DEFINE_float("arch_beta_1", 0.5, "α: Adam beta 1.")
    flags.DEFINE_float("arch_beta_2", 0.999, "α: Adam beta 2.")
    flags.DEFINE_string("arch_milestones", "150,225,350",
                        "α: epochs where the learning rate is multiplied by 0.1.")
    flags.DEFINE_integer("genotype_interval", 5,
                         "Write genotype.json and log α when (epoch+1) % N == 0 (and at the "
                         "last epoch).")
    flags.DEFINE_integer("evaluation_interval", 40,
                         "Evaluate the search network when (epoch+1) % N == 0 and at the last "
                         "epoch; 0: never.")
    flags.DEFINE_integer("search_test_batch_size", 128, "Test batch size of the evaluation.")
    flags.DEFINE_bool("clean_bilevel", False,
                      "Clean bilevel updates: architecture step on every iteration, weight "
                      "update without the validation gradient (default: the reference's).")
    flags.DEFINE_bool("unrolled", False,
                      "Second-order (unrolled DARTS) architecture gradient.")
    flags.DEFINE_string("save_genotype_to", "",
                        "Also write the final genotype here (e.g. configs/genotypes/NAME.json).")
    flags.DEFINE_bool("print_config_only", False,
                      "Print the resolved search configuration and exit.")
    # bn_split (CM-NAS)
    flags.DEFINE_enum("bn_split_backbone", "cmnas_resnet50", list(BN_SPLIT_BACKBONES),
                      "bn_split: supernet, CM-NAS's ResNet-50 (53 switchable BNs) or the "
                      "switchable MSINet (80).")
    flags.DEFINE_enum("bn_split_data_split", "per_identity_half", list(BN_SPLIT_DATA_SPLITS),
                      "bn_split: weights/architecture data; per_identity_half (half of every "
                      "identity's images per modality each) or official_val (SYSU-MM01 "
                      "train_id / val_id, classifier-free architecture loss).")
    flags.DEFINE_integer("bn_split_warmup_epochs", 10,
                         "bn_split: first epochs with weight steps only (no architecture step).")
    flags.DEFINE_float("bn_split_backbone_learning_rate_multiplier", 0.1,
                       "bn_split: backbone learning rate / head learning rate.")
    flags.DEFINE_string("bn_split_backbone_weights_file_path", "",
                        "bn_split: ImageNet ResNet-50 (torchvision .pth or tf2cv .h5) copied "
                        "into all three BN sets (cmnas_resnet50 only).")
    flags.DEFINE_bool("allow_pickle", False,
                      "bn_split: read a --bn_split_backbone_weights_file_path that needs pickle "
                      "(it executes Python code stored in the file): trusted files only.")
    flags.DEFINE_string("bn_split_genotype", "msmt",
                        "bn_split with --bn_split_backbone=msinet: the MSINet genotype (name or "
                        "JSON file).")
    flags.DEFINE_float("bn_split_ema_decay", 0.0,
                       "bn_split: EMA decay of the weights and BN statistics (0: no EMA).")
    flags.DEFINE_integer("bn_split_ema_reset_epochs", 0,
                         "bn_split: copy the EMA to the live weights every N epochs (0: never).")
    flags.DEFINE_string("save_config_to", "",
                        "bn_split: also write the final config here (e.g. "
                        "configs/cmnas/NAME.cfg); same as --save_genotype_to.")


def config_from_flags(values):
    """A :class:`SearchConfig` from parsed flag values (validated).

    Flags left at their defaults take the search space's :data:`SPACE_DEFAULTS`.
    """
    saved_to = {value for value in (values.save_genotype_to, values.save_config_to) if value}
    if len(saved_to) > 1:
        raise flags.ValidationError(f"--save_genotype_to={values.save_genotype_to} and "
                                    f"--save_config_to={values.save_config_to}: give one.")
    fields = dict(
        dataset_name=values.dataset_name, root_folder_path=values.root_folder_path,
        dataset_options=parse_dataset_options(values.dataset_options),
        image_height=values.image_height, image_width=values.image_width,
        identity_num_per_batch=values.identity_num_per_batch,
        image_num_per_identity=values.image_num_per_identity,
        steps_per_epoch=values.steps_per_epoch, epoch_num=values.epoch_num,
        output_folder_path=values.output_folder_path, workers=values.workers,
        seed=values.seed, deterministic=values.deterministic,
        cache_images=values.cache_images, jit_compile=values.jit_compile,
        resize_interpolation=values.resize_interpolation,
        strategy=values.strategy,
        mixed_precision=values.mixed_precision, search_space=values.search_space,
        learning_rate=values.search_learning_rate, momentum=values.search_momentum,
        weight_decay=values.search_weight_decay,
        milestones=_milestones(values.search_milestones, "search_milestones"),
        warmup_epochs=values.search_warmup_epochs, warmup_factor=values.search_warmup_factor,
        arch_learning_rate=values.arch_learning_rate,
        arch_weight_decay=values.arch_weight_decay, arch_beta_1=values.arch_beta_1,
        arch_beta_2=values.arch_beta_2,
        arch_milestones=_milestones(values.arch_milestones, "arch_milestones"),
        genotype_interval=values.genotype_interval,
        evaluation_interval=values.evaluation_interval,
        test_batch_size=values.search_test_batch_size, clean_bilevel=values.clean_bilevel,
        unrolled=values.unrolled, save_genotype_to=saved_to.pop() if saved_to else "",
        bn_split_backbone=values.bn_split_backbone,
        bn_split_data_split=values.bn_split_data_split,
        bn_split_warmup_epochs=values.bn_split_warmup_epochs,
        bn_split_backbone_lr_multiplier=values.bn_split_backbone_learning_rate_multiplier,
        bn_split_backbone_weights_file_path=values.bn_split_backbone_weights_file_path,
        bn_split_genotype=values.bn_split_genotype, allow_pickle=bool(values.allow_pickle),
        bn_split_ema_decay=values.bn_split_ema_decay,
        bn_split_ema_reset_epochs=values.bn_split_ema_reset_epochs)
    for field, value in SPACE_DEFAULTS.get(values.search_space, {}).items():
        if not flag_given(values, FIELD_FLAGS[field]):
            fields[field] = value
    config = SearchConfig(**fields)
    try:
        config.validate()
    except ValueError as error:
        raise flags.ValidationError(str(error)) from None
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    config = config_from_flags(FLAGS)
    if FLAGS.print_config_only:
        for name, value in dataclasses.asdict(config).items():
            print(f"{name} {value}")
        return
    from reid_tf.runtime import distribute
    # First: a multi-worker strategy must exist before TensorFlow runs anything.
    strategy = distribute.create_strategy(config.strategy)
    from nas.searcher import Searcher
    from reid_tf.cli.train import print_flags
    print_flags(FLAGS)
    print(distribute.describe(strategy), flush=True)
    searcher = Searcher(config, strategy=strategy)
    result = searcher.search()
    print(f"Search finished; result in {searcher.chief_folder}: {result}", flush=True)


def run_cli(argv=None):
    """Entry point: define the flags and run :func:`main` under absl."""
    define_search_flags()
    cli_app.run(main, argv=argv if argv is not None else sys.argv)


if __name__ == "__main__":
    run_cli()
