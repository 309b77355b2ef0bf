"""reid-tf command line (FlipReID's flags and more): train and evaluate re-identification models.

    python solution.py                      # quick start: configs/quickstart.flags
    python solution.py --flagfile=configs/flipreid/market1501_resnet50.flags
    python solution.py --help               # every flag

Without any argument the quick-start job runs (the embedded synthetic dataset, a few minutes on
two CPU cores). With arguments every flag has the reference FlipReID default unless given.
"""
import os
import sys

import reid_tf  # noqa: F401  (selects tf-keras before TensorFlow is imported)
from absl import app, flags

from reid_tf.cli import app as cli_app
from reid_tf.cli.validation import check_files, validate_flags
from reid_tf.flags import define_flags

HERE = os.path.dirname(os.path.abspath(__file__))
QUICKSTART_FLAGFILE = os.path.join(HERE, "configs", "quickstart.flags")

define_flags()
flags.FLAGS.set_default("output_folder_path", os.path.join(HERE, "output"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    # Every flag is checked before TensorFlow, a dataset or a model is loaded.
    validate_flags(flags.FLAGS)
    check_files(flags.FLAGS)
    from reid_tf.cli.train import run
    run(flags.FLAGS)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        sys.argv.append(f"--flagfile={QUICKSTART_FLAGFILE}")
    cli_app.run(main)
