"""``python -m reid_tf.extract``: images -> a features folder (:mod:`reid_tf.cli.extract`)."""
from reid_tf.cli.extract import run_main
from reid_tf.flags import define_flags

if __name__ == "__main__":
    define_flags()  # solution.py's flags: they define the model of --weights_file_path
    run_main()
