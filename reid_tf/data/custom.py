"""Your own dataset from a CSV file (``--dataset_name custom``).

``--root_folder_path`` is the CSV file itself, or a folder that contains ``dataset.csv``.
The CSV is comma-separated with a header line; one row per image::

    path,identity,camera,modality,split
    images/0001_a.jpg,1,1,visible,train
    images/0001_b.jpg,1,2,visible,train
    /data/probe/0007.jpg,7,1,infrared,query
    images/gallery/0007_x.jpg,7,2,visible,gallery

Columns (names are case-sensitive, surrounding spaces are ignored):

* ``path`` (required): the image file; a relative path is resolved against the folder that
  holds the CSV file. The file must exist.
* ``identity`` (required): integer identity (any integer; only equality matters).
* ``camera`` (required): integer camera id. Gallery images with the same identity and camera
  as a query are ignored by the standard evaluation protocol.
* ``modality`` (optional, default ``visible``): ``visible`` or ``infrared``.
* ``split`` (optional, default ``train``): ``train``, ``query`` or ``gallery``.

An empty optional cell takes the default. Other columns are an error (they are usually a typo).
Rows keep the order of the file. Every problem raises ``DatasetError`` naming the CSV file, the
line number and the offending value.
"""
import csv
import os

from reid_tf.data.common import ROOT_FLAG, LOGGER, FileChecker, finish
from reid_tf.data.registry import MODALITIES, SPLITS, DatasetError, register_dataset

DATASET_NAME = "custom"
DEFAULT_CSV_NAME = "dataset.csv"
REQUIRED_COLUMNS = ("path", "identity", "camera")
OPTIONAL_COLUMNS = {"modality": "visible", "split": "train"}


def resolve_csv_path(root_folder_path):
    """The CSV file named by ``root_folder_path`` (the file, or a folder with dataset.csv)."""
    if root_folder_path is None or str(root_folder_path) == "":
        raise DatasetError(f"{DATASET_NAME}: set the flag {ROOT_FLAG} to a CSV file or to a "
                           f"folder containing {DEFAULT_CSV_NAME}.")
    path = os.path.abspath(os.path.expanduser(str(root_folder_path)))
    if os.path.isdir(path):
        csv_path = os.path.join(path, DEFAULT_CSV_NAME)
        if not os.path.isfile(csv_path):
            raise DatasetError(f"{DATASET_NAME}: the folder {path} has no {DEFAULT_CSV_NAME}; "
                               f"set the flag {ROOT_FLAG} to the CSV file or to a folder "
                               f"containing {DEFAULT_CSV_NAME}.")
        return csv_path
    if not os.path.isfile(path):
        raise DatasetError(f"{DATASET_NAME}: the CSV file {path} does not exist (flag "
                           f"{ROOT_FLAG}: a CSV file or a folder containing {DEFAULT_CSV_NAME}).")
    return path


def _read_header(reader, csv_path):
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"{DATASET_NAME}: {csv_path} is empty; expected the header line "
                           f"'path,identity,camera[,modality][,split]'.") from None
    columns = [name.strip() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise DatasetError(f"{DATASET_NAME}: {csv_path} line 1: the header {columns} lacks the "
                           f"columns {missing} (required: {', '.join(REQUIRED_COLUMNS)}).")
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    unknown = [name for name in columns if name not in known]
    if unknown:
        allowed = ", ".join(list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS))
        raise DatasetError(f"{DATASET_NAME}: {csv_path} line 1: unknown columns {unknown}; "
                           f"allowed: {allowed}.")
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise DatasetError(f"{DATASET_NAME}: {csv_path} line 1: duplicated columns {duplicated}.")
    return columns


def _integer_cell(value, column, csv_path, line_number):
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{DATASET_NAME}: {csv_path} line {line_number}: {column} {value!r} "
                           f"is not an integer.") from None


@register_dataset(DATASET_NAME, protocol="standard")
def load_custom(root_folder_path):
    """Load the CSV dataset described in the module docstring.

    ``root_folder_path`` is the CSV file or a folder containing ``dataset.csv``. Returns the
    dataset table in file order.
    """
    csv_path = resolve_csv_path(root_folder_path)
    checker = FileChecker(DATASET_NAME)
    try:
        rows = _read_rows(csv_path, checker)
    except (csv.Error, UnicodeDecodeError) as error:
        raise DatasetError(f"{DATASET_NAME}: cannot read {csv_path} as a UTF-8 CSV file: "
                           f"{error}.") from None
    checker.raise_if_missing()
    if not rows:
        raise DatasetError(f"{DATASET_NAME}: {csv_path} has a header but no image rows.")
    if "train" not in {row[4] for row in rows}:
        LOGGER.info("%s: %s has no train rows (evaluation only).", DATASET_NAME, csv_path)
    return finish(DATASET_NAME, rows)


def _read_rows(csv_path, checker):
    csv_folder = os.path.dirname(csv_path)
    rows = []
    with open(csv_path, newline="", encoding="utf-8-sig") as csv_file:
        reader = csv.reader(csv_file)
        columns = _read_header(reader, csv_path)
        for record in reader:
            line_number = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(columns):
                raise DatasetError(f"{DATASET_NAME}: {csv_path} line {line_number}: "
                                   f"{len(record)} values for the {len(columns)} columns "
                                   f"{columns}: {record}.")
            cells = {name: cell.strip() for name, cell in zip(columns, record)}
            path = cells["path"]
            if not path:
                raise DatasetError(f"{DATASET_NAME}: {csv_path} line {line_number}: empty path.")
            identity = _integer_cell(cells["identity"], "identity", csv_path, line_number)
            camera = _integer_cell(cells["camera"], "camera", csv_path, line_number)
            modality = cells.get("modality") or OPTIONAL_COLUMNS["modality"]
            split = cells.get("split") or OPTIONAL_COLUMNS["split"]
            if modality not in MODALITIES:
                raise DatasetError(f"{DATASET_NAME}: {csv_path} line {line_number}: unknown "
                                   f"modality {modality!r}; expected one of {MODALITIES}.")
            if split not in SPLITS:
                raise DatasetError(f"{DATASET_NAME}: {csv_path} line {line_number}: unknown "
                                   f"split {split!r}; expected one of {SPLITS}.")
            image_file_path = os.path.normpath(
                os.path.join(csv_folder, os.path.expanduser(path)))
            checker.check(image_file_path, f"{csv_path} line {line_number}, path {path!r}")
            rows.append((image_file_path, identity, camera, modality, split))
    return rows
