"""RegDB loader (CM-NAS §7.2, §9.3): visible-thermal person re-identification, 10 trials.

Layout under ``--root_folder_path``::

    RegDB/
        idx/train_visible_{t}.txt, idx/train_thermal_{t}.txt   (t = 1..10)
        idx/test_visible_{t}.txt,  idx/test_thermal_{t}.txt
        Visible/..., Thermal/...                                (images)

List lines are ``<path relative to RegDB/> <integer label>``; the label is the identity and
rows follow the line order. Visible images get ``camera_ID`` 1 and modality ``"visible"``,
thermal images ``camera_ID`` 2 and modality ``"infrared"``. Every listed file must exist.

* train = ``train_visible_{t}`` then ``train_thermal_{t}``;
* ``direction="visible_to_infrared"`` (default): query = ``test_visible_{t}``, gallery =
  ``test_thermal_{t}``; ``"infrared_to_visible"`` swaps them (the reference's ``--tvsearch``).

Rows: train, then query, then gallery.
"""
import os

from reid_tf.data.common import (
    FileChecker,
    check_choice,
    check_int,
    finish,
    parse_int,
    read_list_file,
    require_dataset_folder,
    require_nonempty,
)
from reid_tf.data.registry import register_dataset

DATASET_NAME = "RegDB"
FOLDER_NAME = "RegDB"
TRIALS = tuple(range(1, 11))
DIRECTIONS = ("visible_to_infrared", "infrared_to_visible")
# modality -> (list-file word, camera_ID)
MODALITIES = {"visible": ("visible", 1), "infrared": ("thermal", 2)}


def _read_regdb_list(dataset_folder, list_name, modality, split, checker):
    list_file_path = os.path.join(dataset_folder, "idx", list_name)
    records = require_nonempty(DATASET_NAME, read_list_file(DATASET_NAME, list_file_path),
                               f"the list file {list_file_path}")
    camera = MODALITIES[modality][1]
    rows = []
    for line_number, (relative_path, label_text) in records:
        where = f"line {line_number} of {list_file_path}"
        identity = parse_int(label_text, DATASET_NAME, "the identity label", where)
        image_file_path = os.path.normpath(os.path.join(dataset_folder, relative_path))
        checker.check(image_file_path, where)
        rows.append((image_file_path, identity, camera, modality, split))
    return rows


@register_dataset(DATASET_NAME, protocol="regdb")
def load_regdb(root_folder_path, trial_index=1, direction="visible_to_infrared"):
    """Load trial ``trial_index`` (1..10) of RegDB from ``<root_folder_path>/RegDB``.

    ``direction``: ``"visible_to_infrared"`` (query visible, gallery thermal) or
    ``"infrared_to_visible"``. Returns the dataset table: train, then query, then gallery.
    """
    trial_index = check_int(DATASET_NAME, "trial_index", trial_index, minimum=1, maximum=10)
    check_choice(DATASET_NAME, "direction", direction, DIRECTIONS)
    list_names = {(split, modality): f"{split}_{word}_{trial_index}.txt"
                  for split in ("train", "test")
                  for modality, (word, _) in MODALITIES.items()}
    dataset_folder = require_dataset_folder(
        DATASET_NAME, root_folder_path, FOLDER_NAME, ["idx"],
        [f"idx/{name}" for name in list_names.values()])
    query_modality, gallery_modality = (
        ("visible", "infrared") if direction == "visible_to_infrared"
        else ("infrared", "visible"))
    checker = FileChecker(DATASET_NAME)
    rows = []
    for list_key, split in ((("train", "visible"), "train"), (("train", "infrared"), "train"),
                            (("test", query_modality), "query"),
                            (("test", gallery_modality), "gallery")):
        rows += _read_regdb_list(dataset_folder, list_names[list_key], list_key[1], split,
                                 checker)
    checker.raise_if_missing()
    return finish(DATASET_NAME, rows)
