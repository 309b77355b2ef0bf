"""``python -m reid_tf.retrieve``: queries + a gallery index -> top-k CSV and a rank list
(:mod:`reid_tf.cli.retrieve`)."""
from reid_tf.cli.retrieve import run_main
from reid_tf.flags import define_flags

if __name__ == "__main__":
    define_flags()  # solution.py's flags: they define the model of --weights_file_path
    run_main()
