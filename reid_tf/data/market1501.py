"""Market-1501 loader (FlipReID §4.1, MSINet §12).

Layout under ``--root_folder_path``::

    Market-1501-v15.09.15/
        bounding_box_train/0002_c1s1_000451_03.jpg ...   -> split "train"
        query/...                                        -> split "query"
        bounding_box_test/...                            -> split "gallery"

Only ``*.jpg`` files are read (``Thumbs.db`` and the like are ignored), in sorted order. The
identity is the integer before the first ``_``; the camera is the digit after ``c`` at the start
of the second ``_``-token (``c3s1`` -> 3), kept 1-based as in the file name. Identity -1 (junk)
is dropped in every split (the count is logged); identity 0 (distractors) is kept.
"""
import os
import re

from reid_tf.data.common import (
    MARKET_SPLIT_FOLDERS,
    finish,
    load_split_folders,
    require_dataset_folder,
)
from reid_tf.data.registry import register_dataset

DATASET_NAME = "Market1501"
FOLDER_NAME = "Market-1501-v15.09.15"
JUNK_IDENTITY = -1

_FILE_NAME_PATTERN = re.compile(r"(-?\d+)_c(\d)")


def parse_market_file_name(file_path):
    """``(identity, camera)`` of a Market-1501/DukeMTMC-reID file name, or ``None``.

    ``0002_c1s1_000451_03.jpg`` -> ``(2, 1)``; ``-1_c3s2_000100_01.jpg`` -> ``(-1, 3)``.
    """
    match = _FILE_NAME_PATTERN.match(os.path.basename(file_path))
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@register_dataset(DATASET_NAME, protocol="standard")
def load_market1501(root_folder_path):
    """Load Market-1501 from ``<root_folder_path>/Market-1501-v15.09.15``.

    Returns the dataset table (columns of ``reid_tf.data.COLUMNS``): train rows, then query,
    then gallery, each in sorted file-name order; junk images (identity -1) are dropped.
    """
    split_folders = [folder for _, folder in MARKET_SPLIT_FOLDERS]
    dataset_folder = require_dataset_folder(DATASET_NAME, root_folder_path, FOLDER_NAME,
                                            split_folders)
    rows = load_split_folders(DATASET_NAME, dataset_folder, parse_market_file_name,
                              MARKET_SPLIT_FOLDERS, junk_identity=JUNK_IDENTITY)
    return finish(DATASET_NAME, rows)
