"""VeRi-776 loader (MSINet §12).

Layout under ``--root_folder_path``::

    VeRi/
        image_train/0002_c002_00030600_0.jpg ...   -> split "train"
        image_query/...                            -> split "query"
        image_test/...                             -> split "gallery"

Only ``*.jpg`` files are read, in sorted order. The base name is parsed with the reference regex
``([-\\d]+)_c([-\\d]+)`` (``0002_c002_...`` -> identity 2, camera 2; the camera stays 1-based as
in the file name). Identity -1 is skipped (the count is logged); otherwise the identity must lie
in 0..776 and the camera in 1..20, as the reference asserts.
"""
import os
import re

from reid_tf.data.common import finish, load_split_folders, require_dataset_folder
from reid_tf.data.registry import DatasetError, register_dataset

DATASET_NAME = "VeRi776"
FOLDER_NAME = "VeRi"
SPLIT_FOLDERS = (("train", "image_train"), ("query", "image_query"), ("gallery", "image_test"))
JUNK_IDENTITY = -1
IDENTITY_RANGE = (0, 776)
CAMERA_RANGE = (1, 20)

_FILE_NAME_PATTERN = re.compile(r"([-\d]+)_c([-\d]+)")


def parse_veri_file_name(file_path):
    """``(identity, camera)`` of a VeRi-776 file name, or ``None`` if the regex does not match.

    Raises :class:`DatasetError` (naming the path) for numbers that cannot be read or lie
    outside the ranges of the reference (identity 0..776, camera 1..20; identity -1 passes).
    """
    match = _FILE_NAME_PATTERN.search(os.path.basename(file_path))
    if match is None:
        return None
    try:
        identity, camera = int(match.group(1)), int(match.group(2))
    except ValueError:
        return None
    if identity == JUNK_IDENTITY:
        return identity, camera
    if not IDENTITY_RANGE[0] <= identity <= IDENTITY_RANGE[1]:
        raise DatasetError(f"{DATASET_NAME}: identity {identity} of {file_path} is outside "
                           f"{IDENTITY_RANGE[0]}..{IDENTITY_RANGE[1]}.")
    if not CAMERA_RANGE[0] <= camera <= CAMERA_RANGE[1]:
        raise DatasetError(f"{DATASET_NAME}: camera {camera} of {file_path} is outside "
                           f"{CAMERA_RANGE[0]}..{CAMERA_RANGE[1]}.")
    return identity, camera


@register_dataset(DATASET_NAME, protocol="standard")
def load_veri776(root_folder_path):
    """Load VeRi-776 from ``<root_folder_path>/VeRi``.

    Returns the dataset table: train (``image_train``), query (``image_query``) and gallery
    (``image_test``) rows, each in sorted file-name order, identity -1 skipped.
    """
    dataset_folder = require_dataset_folder(DATASET_NAME, root_folder_path, FOLDER_NAME,
                                            [folder for _, folder in SPLIT_FOLDERS])
    rows = load_split_folders(DATASET_NAME, dataset_folder, parse_veri_file_name, SPLIT_FOLDERS,
                              junk_identity=JUNK_IDENTITY)
    return finish(DATASET_NAME, rows)
