"""The values a setting may take, owned here once for every layer and command line.

This module imports nothing, so the command lines check every flag against these names before
TensorFlow (or any dataset or model) is loaded; the modules that implement each choice import
their names from here.
"""

# Networks (reid_tf.models.factory): the FlipReID tf2cv backbones, MSINet, CM-NAS's ResNet-50.
FLIPREID_BACKBONES = ("resnet50", "ibn_resnet50", "resnesta50")
BACKBONES = FLIPREID_BACKBONES + ("msinet", "cmnas_resnet50")
# FlipReID's global pooling (reid_tf.models.flipreid).
POOLING_MODES = ("Average", "Max", "GeM")
# MSINet's spatial alignment loss (reid_tf.losses.sam).
SAM_MODES = ("none", "pos", "neg", "pos_neg")

# Resizing of every image (reid_tf.data.images): OpenCV bilinear (FlipReID), Pillow bilinear
# with antialiasing (torchvision Resize, MSINet), Pillow Lanczos (PIL ANTIALIAS, CM-NAS).
RESIZE_INTERPOLATIONS = ("opencv_bilinear", "pil_bilinear", "pil_lanczos")

# Training input (reid_tf.data.augmentation, reid_tf.data.sampler).
AUGMENTATION_RECIPES = ("flipreid", "msinet", "cmnas", "none")
SAMPLER_POLICIES = ("flipreid", "msinet")

# Evaluation protocols a dataset declares (reid_tf.data.registry, reid_tf.evaluation.protocols):
#   "standard"  - Market-1501 semantics: same identity + same camera gallery items are removed;
#   "vehicleid" - no camera filtering, random query/gallery trials (test sizes 800/1600/2400);
#   "sysu_mm01" - camera-3 queries never see camera-2 gallery items, distinct-identity CMC,
#                 10 random gallery trials;
#   "regdb"     - standard CMC without camera filtering, 10 fixed trials.
PROTOCOLS = ("standard", "vehicleid", "sysu_mm01", "regdb")
# The visible-infrared protocols: their batches pair K visible with K infrared images per
# identity, their models take a modality mode, and their evaluation L2-normalises.
CROSS_MODALITY_PROTOCOLS = ("sysu_mm01", "regdb")
# Distances of --distance_metric (reid_tf.evaluation.distance).
DISTANCE_METRICS = ("cosine", "euclidean", "sqeuclidean")

# Optimisation (reid_tf.training.optimizers, reid_tf.training.schedules).
OPTIMIZERS = ("adam", "sgd", "torch_adam")
# Which weights training_model.h5 holds (reid_tf.training.selection): the best evaluation's
# (FlipReID's ModelCheckpoint on the test mAP) or the final epoch's.
CHECKPOINT_SELECTIONS = ("best", "last")
LEARNING_RATE_MODES = ("constant", "linear", "cosine", "warmup", "default", "warmup_multistep")

# Runtime (reid_tf.runtime.environment, reid_tf.runtime.distribute).
MIXED_PRECISION_POLICIES = ("", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker")

# Inference-model exports (reid_tf.export).
EXPORT_FORMATS = ("h5", "savedmodel", "onnx", "tflite")
# LiteRT variants of --tflite_quantization (int8: dynamic range).
TFLITE_QUANTIZATIONS = ("float32", "float16", "int8")
