"""``python -m reid_tf.report RUN_FOLDER [--report_file_path PATH]``: rebuild ``report.html``.

The page is rebuilt from ``RUN_FOLDER/report_data.npz``, which an evaluation run with
``--save_data_to_disk`` keeps (:mod:`reid_tf.evaluation.report`); image thumbnails are read
again from the image files. Errors print one line ``error: ...`` and exit with status 2.
"""
import os

from absl import app, flags

from reid_tf.cli import app as cli_app

flags.DEFINE_string("report_file_path", "",
                    "Where to write the page (default: RUN_FOLDER/report.html).")

FLAGS = flags.FLAGS
USAGE = "usage: python -m reid_tf.report RUN_FOLDER [--report_file_path PATH]"


def rebuild(run_folder, report_file_path=""):
    """Rebuild the report of ``run_folder``; returns the page's path. Raises
    :class:`~reid_tf.evaluation.report_data.ReportDataError` when the data is missing."""
    from reid_tf.evaluation.report import REPORT_FILE, render_report
    from reid_tf.evaluation.report_data import ReportDataError, load_report_data
    if not os.path.isdir(run_folder):
        raise ReportDataError(f"{run_folder}: no such run folder.")
    data = load_report_data(run_folder)
    return render_report(data, report_file_path or os.path.join(run_folder, REPORT_FILE))


def main(argv):
    if len(argv) != 2:
        raise app.UsageError(f"expected one RUN_FOLDER, got {len(argv) - 1} arguments; {USAGE}")
    path = rebuild(argv[1], FLAGS.report_file_path)
    print(f"Wrote {path}")
    return 0


def run_main():
    cli_app.run(main)
