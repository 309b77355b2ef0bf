"""Command line: ``python -m reid_tf.convert --architecture ARCH --source_file_path X
--output_file_path Y.h5 [...]``. See :mod:`reid_tf.convert`."""
import importlib

import reid_tf  # noqa: F401  (selects tf-keras)
from absl import flags

from reid_tf.cli import app as cli_app
from reid_tf.convert import ARCHITECTURES
from reid_tf.runtime.checkpoints import load_state_dict, print_report

flags.DEFINE_enum("architecture", None, sorted(ARCHITECTURES), "Architecture of the checkpoint.")
flags.DEFINE_string("source_file_path", None, "PyTorch checkpoint (.pth, .pth.tar) or .npz.")
flags.DEFINE_string("output_file_path", None, "Keras weights file to write (.h5).")
flags.DEFINE_string("state_dict_key", "auto",
                    "Entry of the checkpoint holding the state dict ('auto': state_dict/model; "
                    "e.g. 'ema' for CM-NAS EMA weights).")
flags.DEFINE_string("genotype_file_path", "configs/genotypes/msmt.json",
                    "MSINet genotype JSON (architecture msinet).")
flags.DEFINE_string("cmnas_config_file_path", None,
                    "CM-NAS config (.cfg, 53 values 0/1; architecture cmnas_resnet50).")
flags.DEFINE_integer("num_classes", 0,
                     "Classes of the classifier to build; 0 takes them from the checkpoint.")
flags.DEFINE_integer("image_height", 256, "Input height of the built model.")
flags.DEFINE_integer("image_width", 128, "Input width of the built model.")
flags.DEFINE_bool("sam", False, "MSINet: build with the SAM module (cross-domain checkpoints).")
flags.DEFINE_bool("allow_pickle", False,
                  "Read a checkpoint that needs pickle (it executes Python code stored in the "
                  "file): for trusted files only. Without it such a file is refused.")
flags.mark_flags_as_required(["architecture", "source_file_path", "output_file_path"])

FLAGS = flags.FLAGS


def main(argv):
    del argv
    module = importlib.import_module(ARCHITECTURES[FLAGS.architecture])
    state_dict = load_state_dict(FLAGS.source_file_path, state_dict_key=FLAGS.state_dict_key,
                                 allow_pickle=FLAGS.allow_pickle)
    options = {name: FLAGS[name].value for name in module.DEFAULTS}
    report = module.convert(state_dict, FLAGS.output_file_path, **options)
    print_report(report)
    print(f"Wrote {FLAGS.output_file_path}")
    return 0


if __name__ == "__main__":
    cli_app.run(main)
