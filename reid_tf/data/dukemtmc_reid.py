"""DukeMTMC-reID loader (FlipReID §4.1).

Layout under ``--root_folder_path``::

    DukeMTMC-reID/
        bounding_box_train/0001_c2_f0046182.jpg ...   -> split "train"
        query/...                                     -> split "query"
        bounding_box_test/...                         -> split "gallery"

Only ``*.jpg`` files are read, in sorted order. The identity is the integer before the first
``_``; the camera is the digit after ``c`` in the second token (``c5`` -> 5). Nothing is dropped.
"""
from reid_tf.data.common import (
    MARKET_SPLIT_FOLDERS,
    finish,
    load_split_folders,
    require_dataset_folder,
)
from reid_tf.data.market1501 import parse_market_file_name
from reid_tf.data.registry import register_dataset

DATASET_NAME = "DukeMTMC_reID"
FOLDER_NAME = "DukeMTMC-reID"


@register_dataset(DATASET_NAME, protocol="standard")
def load_dukemtmc_reid(root_folder_path):
    """Load DukeMTMC-reID from ``<root_folder_path>/DukeMTMC-reID``.

    Returns the dataset table: train rows, then query, then gallery, each in sorted file-name
    order. No identity is dropped.
    """
    split_folders = [folder for _, folder in MARKET_SPLIT_FOLDERS]
    dataset_folder = require_dataset_folder(DATASET_NAME, root_folder_path, FOLDER_NAME,
                                            split_folders)
    rows = load_split_folders(DATASET_NAME, dataset_folder, parse_market_file_name,
                              MARKET_SPLIT_FOLDERS)
    return finish(DATASET_NAME, rows)
