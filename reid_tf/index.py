"""``python -m reid_tf.index``: features folders -> a gallery index (:mod:`reid_tf.cli.index`)."""
from reid_tf.cli.index import run_main

if __name__ == "__main__":
    run_main()
