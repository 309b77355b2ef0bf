"""absl flags of ``solution.py`` (and the ones ``python -m nas.search`` shares with it).

Every flag of the reference FlipReID keeps its name, type and default (flipreid.md §2.1); the
flags after them serve MSINet, CM-NAS and the new features. Values are validated by
:func:`reid_tf.cli.validation.validate_flags` (re-exported here), which names the flag of every
bad value.
"""
import os

from absl import flags

FLAGS = flags.FLAGS

from reid_tf.cli.validation import flag_given, parse_dataset_options, validate_flags  # noqa: F401
from reid_tf.models.cmnas_config import DEFAULT_CONFIG_FILE as CMNAS_DEFAULT_CONFIG
from reid_tf.runtime.choices import (AUGMENTATION_RECIPES, BACKBONES, CHECKPOINT_SELECTIONS,
                                     DISTANCE_METRICS,
                                     EXPORT_FORMATS, POOLING_MODES, SAM_MODES,
                                     RESIZE_INTERPOLATIONS, SAMPLER_POLICIES, STRATEGIES,
                                     TFLITE_QUANTIZATIONS)

REFERENCE_ROOT_FOLDER = os.path.expanduser("~/Documents/Local Storage/Dataset")


def _define_once(definer, name, *args, **kwargs):
    if name not in FLAGS:
        definer(name, *args, **kwargs)


def define_data_flags():
    """Dataset and batch flags shared by ``solution.py`` and ``nas.search``."""
    _define_once(flags.DEFINE_string, "root_folder_path", REFERENCE_ROOT_FOLDER,
                 "Folder that contains the dataset folders.")
    _define_once(flags.DEFINE_string, "dataset_name", "Market1501",
                 "Dataset name (reid_tf.data.dataset_names(): Market1501, DukeMTMC_reID, MSMT17, "
                 "VeRi776, VehicleID, SYSU_MM01, RegDB, custom, Synthetic, Synthetic_Target, "
                 "Synthetic_SYSU, Synthetic_RegDB).")
    _define_once(flags.DEFINE_list, "dataset_options", [],
                 "Extra loader options as key=value pairs, e.g. msmt17_form=v1 or, for the "
                 "synthetic datasets, num_train_identities=40,cache_folder_path=/tmp/cache.")
    _define_once(flags.DEFINE_integer, "image_width", 128, "Input width W.")
    _define_once(flags.DEFINE_integer, "image_height", 384, "Input height H.")
    _define_once(flags.DEFINE_integer, "identity_num_per_batch", 16, "P, identities per batch.")
    _define_once(flags.DEFINE_integer, "image_num_per_identity", 4,
                 "K, images per identity in a batch (per modality for visible-infrared data).")
    _define_once(flags.DEFINE_integer, "steps_per_epoch", 200,
                 "Batches per epoch; 0 lets the sampler define the epoch (one pass, MSINet).")
    _define_once(flags.DEFINE_integer, "epoch_num", 1000000,
                 "Epochs of the main training phase (also used by the schedule).")
    _define_once(flags.DEFINE_string, "output_folder_path",
                 os.path.abspath(os.path.join(os.getcwd(), "output")),
                 "Parent of the run's output folder <dataset_name>_<backbone_model_name>.")
    _define_once(flags.DEFINE_integer, "workers", 5,
                 "Batches the tf.data pipeline reads and augments in parallel (each batch is "
                 "one Python call over its images).")
    _define_once(flags.DEFINE_integer, "seed", 0, "Seed of sampling, augmentation and init.")
    _define_once(flags.DEFINE_bool, "deterministic", False,
                 "Enable TensorFlow's deterministic ops (bitwise reproducible resume).")
    _define_once(flags.DEFINE_enum, "resize_interpolation", "opencv_bilinear",
                 list(RESIZE_INTERPOLATIONS),
                 "How images are resized: opencv_bilinear (FlipReID), pil_bilinear (MSINet: "
                 "torchvision Resize, antialiased), pil_lanczos (CM-NAS: PIL ANTIALIAS).")
    _define_once(flags.DEFINE_bool, "cache_images", False,
                 "Keep decoded, resized training images in memory (small datasets).")
    _define_once(flags.DEFINE_string, "strategy", "default",
                 f"tf.distribute strategy: {', '.join(STRATEGIES)}.")
    _define_once(flags.DEFINE_string, "mixed_precision", "",
                 "Keras mixed-precision policy: '' (float32), mixed_bfloat16 (CPUs with bf16 "
                 "units), mixed_float16 (GPUs).")
    _define_once(flags.DEFINE_bool, "jit_compile", False,
                 "XLA-compile the training step (helps on GPUs; ~10x slower on CPU).")


def define_flags():
    """Define every flag of ``solution.py`` (idempotent)."""
    define_data_flags()
    # ---- the reference FlipReID flags (flipreid.md §2.1), same names, types and defaults
    _define_once(flags.DEFINE_string, "backbone_model_name", "resnet50",
                        f"Backbone: {', '.join(BACKBONES)}.")
    _define_once(flags.DEFINE_integer, "freeze_backbone_for_N_epochs", 20,
                         "If > 0, train this many epochs with the backbone frozen first.")
    _define_once(flags.DEFINE_integer, "region_num", 2, "Horizontal stripes of the regional branch (0: none).")
    _define_once(flags.DEFINE_float, "kernel_regularization_factor", 0.0005, "L2 factor on kernels.")
    _define_once(flags.DEFINE_float, "bias_regularization_factor", 0.0005, "L2 factor on biases.")
    _define_once(flags.DEFINE_float, "gamma_regularization_factor", 0.0005, "L2 factor on BN gamma.")
    _define_once(flags.DEFINE_float, "beta_regularization_factor", 0.0005, "L2 factor on BN beta.")
    _define_once(flags.DEFINE_string, "pooling_mode", "GeM", f"Global pooling: {', '.join(POOLING_MODES)}.")
    _define_once(flags.DEFINE_float, "min_value", 0.0, "Lower clip bound of every embedding.")
    _define_once(flags.DEFINE_float, "max_value", 1.0, "Upper clip bound of every embedding.")
    _define_once(flags.DEFINE_float, "testing_size", 1.0,
                       "0: no evaluation; 1: full test set; (0,1): fraction of test identities; "
                       ">1: number of test identities.")
    _define_once(flags.DEFINE_integer, "evaluate_testing_every_N_epochs", 10,
                         "Evaluate when (epoch+1) % N == 0 or at the last epoch.")
    _define_once(flags.DEFINE_string, "learning_rate_mode", "default",
                        "constant, linear, cosine, warmup, default or warmup_multistep.")
    _define_once(flags.DEFINE_float, "learning_rate_start", 2e-4, "Start rate (constant/linear/cosine/warmup).")
    _define_once(flags.DEFINE_float, "learning_rate_end", 2e-4, "End rate (constant/linear/cosine/warmup).")
    _define_once(flags.DEFINE_float, "learning_rate_base", 2e-4,
                       "Plateau rate of the default and warmup_multistep modes.")
    _define_once(flags.DEFINE_integer, "learning_rate_warmup_epochs", 10, "Warm-up length in epochs.")
    _define_once(flags.DEFINE_integer, "learning_rate_steady_epochs", 30,
                         "Length of each constant step after warm-up (default mode).")
    _define_once(flags.DEFINE_float, "learning_rate_drop_factor", 10,
                       "Divisor at every step of the default mode; 0 derives it.")
    _define_once(flags.DEFINE_float, "learning_rate_lower_bound", 2e-6, "Floor of the learning rate.")
    _define_once(flags.DEFINE_float, "patch_replacement_probability", 0.8,
                       "Probability of random grayscale patch replacement.")
    _define_once(flags.DEFINE_float, "random_erasing_probability", 0.8, "Probability of random erasing.")
    _define_once(flags.DEFINE_bool, "use_data_augmentation_in_training", True,
                      "Augment training batches.")
    _define_once(flags.DEFINE_bool, "use_horizontal_flipping_inside_model", False,
                      "FlipReID structure: mirror inside the training model, average the "
                      "embeddings and add the flipping loss.")
    _define_once(flags.DEFINE_bool, "use_horizontal_flipping_in_evaluation", False,
                      "Average the features of each test image and of its mirror.")
    _define_once(flags.DEFINE_bool, "use_re_ranking", False, "k-reciprocal re-ranking at evaluation.")
    _define_once(flags.DEFINE_float, "rerank_memory_budget", 8.0,
                 "GiB the dense k-reciprocal re-ranking's (Q+G)^2 matrices may take "
                 "(--use_re_ranking); a larger problem runs the bounded-memory re-ranking "
                 "(the same result; evaluation.json's re_ranking says which ran).")
    _define_once(flags.DEFINE_bool, "evaluation_only", False, "Skip training; evaluate the model once.")
    _define_once(flags.DEFINE_bool, "save_data_to_disk", False,
                      "Write test.npz with features, identities and cameras at each evaluation.")
    _define_once(flags.DEFINE_string, "pretrained_model_file_path", "",
                        ".h5 weights loaded into the training model (or the inference model).")
    # ---- new in reid-tf
    _define_once(flags.DEFINE_bool, "allow_pickle", False,
                 "Read .pth files that need pickle (it executes Python code stored in the "
                 "file): for trusted files only. Without it such a file is refused with its "
                 "path and the reason.")
    _define_once(flags.DEFINE_string, "backbone_weights_file_path", "",
                        "Local ImageNet weights for the backbone (tf2cv .tf2.h5 for the "
                        "FlipReID backbones; torchvision/tf2cv ResNet-50 for cmnas_resnet50). "
                        "Nothing is downloaded; empty: random initialisation.")
    _define_once(flags.DEFINE_string, "genotype_file_path", "configs/genotypes/msmt.json",
                        "MSINet genotype (JSON list of 12 operation names).")
    _define_once(flags.DEFINE_string, "cmnas_config_file_path", CMNAS_DEFAULT_CONFIG,
                        "Switchable-BN config: one line of values, 0 split / 1 share; 53 for "
                        "cmnas_resnet50. Given with msinet on visible-infrared data, 80 values "
                        "(MSINet's BNs, configs/cmnas/README.md) make every MSINet BN "
                        "switchable.")
    _define_once(flags.DEFINE_string, "target_dataset_name", "",
                        "Second dataset evaluated after training (cross-domain).")
    _define_once(flags.DEFINE_string, "target_root_folder_path", "",
                        "Root folder of the target dataset (default: --root_folder_path).")
    _define_once(flags.DEFINE_string, "sam_mode", "none", f"MSINet SAM loss: {', '.join(SAM_MODES)}.")
    _define_once(flags.DEFINE_float, "sam_ratio", 2.0, "Weight of the spatial alignment loss.")
    _define_once(flags.DEFINE_string, "optimizer_name", "adam",
                        "adam (Keras, FlipReID), sgd (PyTorch momentum form) or torch_adam.")
    _define_once(flags.DEFINE_float, "momentum", 0.9, "SGD momentum.")
    _define_once(flags.DEFINE_float, "weight_decay", 0.0,
                       "Coupled L2 weight decay added to the gradients (sgd, torch_adam).")
    _define_once(flags.DEFINE_float, "adam_beta_1", 0.9, "Adam beta 1.")
    _define_once(flags.DEFINE_float, "adam_beta_2", 0.999, "Adam beta 2.")
    _define_once(flags.DEFINE_float, "adam_epsilon", -1.0,
                       "Adam epsilon; negative: 1e-7 for adam, 1e-8 for torch_adam.")
    _define_once(flags.DEFINE_string, "learning_rate_milestones", "",
                        "Comma-separated epochs where warmup_multistep multiplies by the gamma.")
    _define_once(flags.DEFINE_float, "learning_rate_warmup_factor", 0.01,
                       "Starting factor of the warmup_multistep warm-up.")
    _define_once(flags.DEFINE_float, "learning_rate_gamma", 0.1, "Factor at each milestone.")
    _define_once(flags.DEFINE_float, "backbone_learning_rate_multiplier", 1.0,
                       "Backbone learning rate relative to the heads (CM-NAS: 0.1).")
    _define_once(flags.DEFINE_float, "triplet_margin", -1.0,
                       "Batch-hard triplet margin; negative: soft margin (FlipReID).")
    _define_once(flags.DEFINE_bool, "triplet_feature_normalization", False,
                      "L2-normalise features inside the triplet loss (MSINet).")
    _define_once(flags.DEFINE_float, "label_smoothing", 0.0, "Label smoothing of the cross-entropy.")
    _define_once(flags.DEFINE_float, "sp_loss_weight", 5.0, "CM-NAS SP loss weight (visible-infrared).")
    _define_once(flags.DEFINE_float, "cmmd_loss_weight", 0.05, "CM-NAS CMMD loss weight (visible-infrared).")
    _define_once(flags.DEFINE_string, "augmentation_recipe", "flipreid",
                        f"Training augmentation: {', '.join(AUGMENTATION_RECIPES)}.")
    _define_once(flags.DEFINE_bool, "color_jitter", False,
                      "Colour jitter in the msinet recipe (cross-domain runs).")
    _define_once(flags.DEFINE_string, "sampler_policy", "flipreid",
                        f"PK sampler: {', '.join(SAMPLER_POLICIES)}.")
    _define_once(flags.DEFINE_float, "ema_decay", 0.0, "Weight EMA decay (CM-NAS 0.997/0.968); 0: off.")
    _define_once(flags.DEFINE_integer, "ema_reset_every_N_epochs", 0,
                         "Copy the EMA shadow into the live weights every N epochs.")
    _define_once(flags.DEFINE_bool, "evaluate_before_training", False,
                      "Also evaluate the untrained model (printed next to the trained one).")
    _define_once(flags.DEFINE_string, "checkpoint_selection", "last",
                 f"Which weights training_model.h5 / inference_model.h5 hold: "
                 f"{' or '.join(CHECKPOINT_SELECTIONS)}. best: those of the main phase's "
                 "evaluation with the highest mAP (FlipReID's ModelCheckpoint; needs an "
                 "evaluation during training), the final epoch's kept as "
                 "training_model_last.h5 / inference_model_last.h5; last: the final epoch's.")
    _define_once(flags.DEFINE_bool, "overwrite_output_folder", False,
                      "Delete the run's output folder first instead of resuming from it.")
    _define_once(flags.DEFINE_string, "distance_metric", "cosine",
                        f"Evaluation distance: {', '.join(DISTANCE_METRICS)}.")
    _define_once(flags.DEFINE_bool, "feature_normalization", False,
                      "L2-normalise test features before the distance.")
    _define_once(flags.DEFINE_integer, "test_batch_size", 0, "Test batch size; 0: P*K.")
    _define_once(flags.DEFINE_string, "sysu_search_mode", "all", "SYSU-MM01 gallery: all or indoor.")
    _define_once(flags.DEFINE_integer, "sysu_shot", 1, "SYSU-MM01 gallery images per identity and camera.")
    _define_once(flags.DEFINE_integer, "evaluation_trial_num", 10,
                         "Random gallery trials averaged (SYSU-MM01, VehicleID).")
    _define_once(flags.DEFINE_integer, "regdb_trial_index", 1, "RegDB trial (1..10).")
    _define_once(flags.DEFINE_integer, "vehicleid_test_size", 2400, "VehicleID test size (800/1600/2400).")
    _define_once(flags.DEFINE_string, "export_formats", "h5",
                        f"Comma-separated inference-model exports: {', '.join(EXPORT_FORMATS)}.")
    _define_once(flags.DEFINE_string, "tflite_quantization", "float32",
                        f"LiteRT export (--export_formats tflite): {', '.join(TFLITE_QUANTIZATIONS)} "
                        "(int8: dynamic range, int8 weights).")
