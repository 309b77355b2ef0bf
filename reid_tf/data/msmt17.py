"""MSMT17 loader (FlipReID §4.1, MSINet §12): list-file forms V2 and V1, and a folder form.

Three layouts under ``--root_folder_path`` are recognised (option ``msmt17_form``):

``"v2"`` (FlipReID)::

    MSMT17_V2/list_train.txt, list_val.txt, list_query.txt, list_gallery.txt
    MSMT17_V2/mask_train_v2/<pid>/<pid>_<n>_<cam>_....jpg   (train and val lists)
    MSMT17_V2/mask_test_v2/<pid>/...                        (query and gallery lists)

``"v1"`` (MSINet): the same with ``MSMT17_V1/`` and the image folders ``train/`` and ``test/``.

List lines are ``<relative path> <label>``; rows follow the line order, and train is
``list_train`` followed by ``list_val``. Every listed file must exist. The identity is the label,
which must equal the integer value of the first path component and the pid of the base name;
the camera is the integer value of the third ``_``-token of the base name
(``0000_000_01_0303morning_0015_0.jpg`` -> identity 0, camera 1).

``"folder"``: a Market-1501 style layout (``bounding_box_train/``, ``query/``,
``bounding_box_test/``) of MSMT17 file names inside ``MSMT17/`` (or ``MSMT17_V2/``,
``MSMT17_V1/``), read in sorted order and parsed with the MSINet regex
``([-\\d]+)_([-\\d]+)_([-\\d]+)`` (identity = group 1, camera = group 3). Nothing is dropped.

With ``msmt17_form="auto"`` (default) the first layout present is used, in the order v2, v1,
folder.
"""
import os
import re

from reid_tf.data.common import (
    MARKET_SPLIT_FOLDERS,
    ROOT_FLAG,
    FileChecker,
    absolute_root,
    check_choice,
    finish,
    load_split_folders,
    log_standard_count,
    parse_int,
    read_list_file,
    require_dataset_folder,
    require_nonempty,
)
from reid_tf.data.registry import DatasetError, register_dataset

DATASET_NAME = "MSMT17"
FORMS = ("auto", "v2", "v1", "folder")
# form -> (dataset folder, train image folder, test image folder)
LIST_FORMS = {
    "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    "v1": ("MSMT17_V1", "train", "test"),
}
FOLDER_FORM_NAMES = ("MSMT17", "MSMT17_V2", "MSMT17_V1")
# (split, list file, uses the train image folder)
LIST_FILES = (
    ("train", "list_train.txt", True),
    ("train", "list_val.txt", True),
    ("query", "list_query.txt", False),
    ("gallery", "list_gallery.txt", False),
)
STANDARD_COUNTS = {"train": 32621, "query": 11659, "gallery": 82161}

_FOLDER_FORM_PATTERN = re.compile(r"([-\d]+)_([-\d]+)_([-\d]+)")


def parse_msmt17_file_name(file_path):
    """``(identity, camera)`` from an MSMT17 base name with the MSINet regex, or ``None``.

    ``0000_000_01_0303morning_0015_0.jpg`` -> ``(0, 1)``.
    """
    match = _FOLDER_FORM_PATTERN.search(os.path.basename(file_path))
    if match is None:
        return None
    try:
        return int(match.group(1)), int(match.group(3))
    except ValueError:
        return None


def detect_msmt17_form(root_folder_path):
    """The MSMT17 layout present under ``root_folder_path``: ``"v2"``, ``"v1"``, ``"folder"``.

    Returns ``None`` when none is recognised.
    """
    root = absolute_root(root_folder_path)
    for form, (folder_name, train_folder, _) in LIST_FORMS.items():
        folder = os.path.join(root, folder_name)
        if (os.path.isfile(os.path.join(folder, "list_train.txt"))
                or os.path.isdir(os.path.join(folder, train_folder))):
            return form
    if _folder_form_name(root) is not None:
        return "folder"
    return None


def _folder_form_name(root):
    for folder_name in FOLDER_FORM_NAMES:
        if os.path.isdir(os.path.join(root, folder_name, "bounding_box_train")):
            return folder_name
    return None


def _parse_list_line(list_file_path, line_number, fields):
    """``(relative path, identity, camera)`` of one list line, with the consistency checks."""
    relative_path, label_text = fields
    where = f"line {line_number} of {list_file_path}"
    label = parse_int(label_text, DATASET_NAME, "the identity label", where)
    components = relative_path.replace("\\", "/").split("/")
    base_name = components[-1]
    tokens = base_name.split("_")
    if len(components) < 2 or len(tokens) < 3:
        raise DatasetError(
            f"{DATASET_NAME}: {where}: the path {relative_path!r} does not have the form "
            f"<pid>/<pid>_<index>_<camera>_....jpg.")
    folder_identity = parse_int(components[0], DATASET_NAME, "the identity folder", where)
    name_identity = parse_int(tokens[0], DATASET_NAME, "the identity of the file name", where)
    camera = parse_int(tokens[2], DATASET_NAME, "the camera of the file name", where)
    if not label == folder_identity == name_identity:
        raise DatasetError(
            f"{DATASET_NAME}: {where}: the label {label} does not match the identity folder "
            f"{components[0]!r} and the file name {base_name!r}.")
    return relative_path, label, camera


def _load_list_form(root_folder_path, form):
    folder_name, train_folder, test_folder = LIST_FORMS[form]
    dataset_folder = require_dataset_folder(
        DATASET_NAME, root_folder_path, folder_name, [train_folder, test_folder],
        [list_file for _, list_file, _ in LIST_FILES])
    checker = FileChecker(DATASET_NAME)
    rows = []
    for split, list_file, uses_train_folder in LIST_FILES:
        list_file_path = os.path.join(dataset_folder, list_file)
        image_folder = os.path.join(dataset_folder,
                                    train_folder if uses_train_folder else test_folder)
        records = require_nonempty(DATASET_NAME, read_list_file(DATASET_NAME, list_file_path),
                                   f"the list file {list_file_path}")
        for line_number, fields in records:
            relative_path, identity, camera = _parse_list_line(list_file_path, line_number, fields)
            image_file_path = os.path.normpath(os.path.join(image_folder, relative_path))
            checker.check(image_file_path, f"line {line_number} of {list_file_path}")
            rows.append((image_file_path, identity, camera, "visible", split))
    checker.raise_if_missing()
    for split, standard_count in STANDARD_COUNTS.items():
        log_standard_count(DATASET_NAME, f"the {split} image count",
                           sum(row[4] == split for row in rows), standard_count)
    return rows


def _load_folder_form(root_folder_path):
    root = absolute_root(root_folder_path)
    folder_name = _folder_form_name(root) or FOLDER_FORM_NAMES[0]
    split_folders = [folder for _, folder in MARKET_SPLIT_FOLDERS]
    dataset_folder = require_dataset_folder(DATASET_NAME, root_folder_path, folder_name,
                                            split_folders)
    return load_split_folders(DATASET_NAME, dataset_folder, parse_msmt17_file_name,
                              MARKET_SPLIT_FOLDERS)


@register_dataset(DATASET_NAME, protocol="standard")
def load_msmt17(root_folder_path, msmt17_form="auto"):
    """Load MSMT17 from ``root_folder_path`` in one of the layouts of the module docstring.

    ``msmt17_form``: ``"auto"`` (detect: v2, then v1, then folder), ``"v2"``, ``"v1"`` or
    ``"folder"``. Returns the dataset table: train (list_train then list_val), query, gallery.
    """
    form = msmt17_form.lower() if isinstance(msmt17_form, str) else msmt17_form
    check_choice(DATASET_NAME, "msmt17_form", form, FORMS)
    if form == "auto":
        form = detect_msmt17_form(root_folder_path)
        if form is None:
            root = absolute_root(root_folder_path)
            raise DatasetError(
                f"{DATASET_NAME}: dataset not found under {root}. Expected one of: "
                f"{os.path.join(root, 'MSMT17_V2')} with list_train.txt, list_val.txt, "
                f"list_query.txt, list_gallery.txt, mask_train_v2/ and mask_test_v2/; "
                f"{os.path.join(root, 'MSMT17_V1')} with the same lists, train/ and test/; or "
                f"{os.path.join(root, 'MSMT17')} with bounding_box_train/, query/ and "
                f"bounding_box_test/. Set the flag {ROOT_FLAG} to the folder that contains it "
                f"(option msmt17_form forces one layout).")
    if form == "folder":
        rows = _load_folder_form(root_folder_path)
    else:
        rows = _load_list_form(root_folder_path, form)
    return finish(DATASET_NAME, rows)
