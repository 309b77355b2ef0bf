"""``python -m reid_tf.report RUN_FOLDER``: rebuild an evaluation's ``report.html``
(:mod:`reid_tf.cli.report`)."""
from reid_tf.cli.report import run_main

if __name__ == "__main__":
    run_main()
