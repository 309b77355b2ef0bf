"""``python -m reid_tf.extract``: images -> a features folder (:mod:`reid_tf.cli.extract`)."""
from reid_tf.cli.extract import run_main

if __name__ == "__main__":
    run_main()
