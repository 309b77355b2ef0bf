"""``python -m reid_tf.extract``: images -> a features folder, resumable, with a trained model.

    python -m reid_tf.extract --run_folder=output/Synthetic_msinet \\
        --images_folder=/data/gallery --features_folder=runs/gallery_features
    python -m reid_tf.extract --run_folder=RUN --images_csv=my/dataset.csv --features_folder=F
    python -m reid_tf.extract --run_folder=RUN --dataset_name=Market1501 \\
        --root_folder_path=/data --dataset_split=gallery --features_folder=F
    python -m reid_tf.extract --weights_file_path=X.h5 --flagfile=configs/msinet/market1501.flags \\
        --images_folder=... --features_folder=...     # the model of solution.py's flags
    python -m reid_tf.extract --savedmodel_path=RUN/inference_model_savedmodel ...

The model: a run folder of ``solution.py`` (``--run_folder``: its ``run_settings.json`` and
``inference_model.h5``), an ``.h5`` file with the flags that define the model
(``--weights_file_path`` and ``solution.py``'s flags), or an exported SavedModel. The images:
a folder (recursive, sorted paths), a custom-dataset CSV (``--images_csv``, every split) or a
registered dataset's split. The features folder (:mod:`reid_tf.retrieval.features_folder`) is
written chunk by chunk (``--chunk_size`` images): running the same command again after an
interruption resumes after the last complete chunk. Images that cannot be read are reported by
path (count and list, and ``unreadable_WWW.csv`` per worker in the features folder) and left out; nothing is
skipped silently. Under ``--strategy`` each worker extracts its contiguous share of the
images into its own chunks (the index reads them all); ``mirrored`` cuts every batch over the
local devices.
"""
import glob
import os
import sys

import pandas as pd
from absl import flags

from reid_tf.cli import app as cli_app
from reid_tf.cli.validation import flag_given
from reid_tf.runtime.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "query", "gallery", "test", "all")
FLAGS = flags.FLAGS


def define_model_flags():
    """The flags that name the model (``python -m reid_tf.extract`` and ``reid_tf.retrieve``);
    ``solution.py``'s flags (they define a model given by ``--weights_file_path``) are defined
    first by the entry module (``reid_tf.flags`` sits above this package)."""
    if "run_folder" in FLAGS:
        return
    flags.DEFINE_string("run_folder", "", "A solution.py run folder: the model of its "
                        "run_settings.json with its inference_model.h5.")
    flags.DEFINE_string("weights_file_path", "", "An .h5 weights file of the model that "
                        "solution.py's flags describe (inference_model.h5, or "
                        "training_model.h5 with the run's class count in --num_classes).")
    flags.DEFINE_integer("num_classes", 1, "Classes of the training model when "
                         "--weights_file_path is a training_model.h5.", lower_bound=1)
    flags.DEFINE_string("savedmodel_path", "", "An exported SavedModel "
                        "(--export_formats=savedmodel); image size and flip from the flags.")


def define_image_flags():
    """The flags that name the images to extract (the extraction's and the retrieval's
    queries)."""
    if "images_folder" in FLAGS:
        return
    flags.DEFINE_string("images_folder", "", "Extract every image under this folder "
                        "(recursive, sorted paths).")
    flags.DEFINE_string("images_csv", "", "Extract the images of a custom-dataset CSV "
                        "(path, identity, camera[, modality, split]).")
    flags.DEFINE_enum("dataset_split", "", [""] + list(SPLITS),
                      "Extract a split of --dataset_name (test = query + gallery).")
    flags.DEFINE_enum("modality", "", ["", "visible", "infrared"],
                      "Modality of the images of a folder (visible-infrared models).")


def define_extract_flags():
    """The extraction's flags: the model, the images, the features folder."""
    define_model_flags()
    define_image_flags()
    if "features_folder" in FLAGS:
        return
    flags.DEFINE_string("features_folder", "", "The features folder to write (resumable).")
    flags.DEFINE_integer("chunk_size", 1024, "Images per committed chunk.", lower_bound=1)


def check_model_flags(values):
    """Exactly one way of naming the model is given."""
    models = [name for name in ("run_folder", "weights_file_path", "savedmodel_path")
              if getattr(values, name)]
    if len(models) != 1:
        raise UsageError("give the model with exactly one of --run_folder, --weights_file_path "
                         f"(with solution.py's model flags) or --savedmodel_path (got "
                         f"{', '.join('--' + name for name in models) or 'none'}).")
    for name in ("run_folder", "savedmodel_path"):
        path = getattr(values, name)
        if path and not os.path.isdir(os.path.expanduser(path)):
            raise FileNotFoundError(f"--{name}: no such folder {path}.")


def _check(values):
    check_model_flags(values)
    sources = [name for name in ("images_folder", "images_csv", "dataset_split")
               if getattr(values, name)]
    if len(sources) != 1:
        raise UsageError("give the images with exactly one of --images_folder, --images_csv "
                         f"or --dataset_split (got "
                         f"{', '.join('--' + name for name in sources) or 'none'}).")
    if not values.features_folder:
        raise UsageError("--features_folder: where to write the features is required.")
    if values.images_folder and not os.path.isdir(os.path.expanduser(values.images_folder)):
        raise FileNotFoundError(f"--images_folder: no such folder {values.images_folder}.")


def folder_table(folder, modality=""):
    """The images under ``folder`` (recursive, sorted paths), one row each."""
    folder = os.path.expanduser(folder)
    paths = sorted(path for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if path.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path))
    if not paths:
        raise UsageError(f"--images_folder={folder}: no image files "
                         f"({', '.join(IMAGE_EXTENSIONS)}) under it.")
    table = pd.DataFrame({"image_file_path": paths})
    if modality:
        table["modality"] = modality
    return table


def images_table(values):
    """The images to extract, one row each (``image_file_path`` and the metadata known)."""
    from reid_tf.cli import settings as cli_settings  # (TensorFlow: after the flag checks)
    from reid_tf.data import dataset_protocol, load_dataset
    if values.images_folder:
        return folder_table(values.images_folder, values.modality)
    if values.images_csv:
        return load_dataset("custom", values.images_csv)
    protocol = dataset_protocol(values.dataset_name)
    frame = load_dataset(values.dataset_name, values.root_folder_path,
                         **cli_settings.loader_options(values, protocol))
    split = values.dataset_split
    if split == "test":
        frame = frame[frame["split"].isin(["query", "gallery"])]
    elif split != "all":
        frame = frame[frame["split"] == split]
    if len(frame) == 0:
        raise UsageError(f"--dataset_split={split}: {values.dataset_name} has no such images.")
    return frame.reset_index(drop=True)


def build_extractor(values, strategy):
    """The :class:`~reid_tf.retrieval.extractor.FeatureExtractor` the flags name."""
    from reid_tf.cli import settings as cli_settings
    from reid_tf.retrieval.extractor import FeatureExtractor
    if values.run_folder:
        weights = values.weights_file_path or "inference_model.h5"
        return FeatureExtractor.from_run_folder(values.run_folder, weights, strategy=strategy)
    from reid_tf.data import dataset_protocol
    from reid_tf.runtime.choices import CROSS_MODALITY_PROTOCOLS
    cross_modality = dataset_protocol(values.dataset_name) in CROSS_MODALITY_PROTOCOLS
    settings = cli_settings.evaluation_settings(values)
    if values.savedmodel_path:
        return FeatureExtractor.from_savedmodel(values.savedmodel_path, settings, cross_modality)
    return FeatureExtractor.from_weights(values.weights_file_path,
                                         cli_settings.model_settings(values), settings,
                                         values.num_classes, cross_modality, strategy)


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}")
    _check(FLAGS)
    if flag_given(FLAGS, "dataset_name") or FLAGS.dataset_split:
        from reid_tf.data import dataset_protocol
        dataset_protocol(FLAGS.dataset_name)  # an unknown dataset is named before any work
    from reid_tf.retrieval.extraction import extract_to_folder
    from reid_tf.runtime import distribute
    strategy = distribute.create_strategy(FLAGS.strategy)
    table = images_table(FLAGS)
    with strategy.scope():
        extractor = build_extractor(FLAGS, strategy)
    report = extract_to_folder(extractor, table, FLAGS.features_folder,
                               chunk_size=FLAGS.chunk_size, strategy=strategy)
    print(report.summary(), flush=True)
    return 0


def run_main(argv=None):
    define_extract_flags()
    cli_app.run(main, argv=argv if argv is not None else sys.argv)
