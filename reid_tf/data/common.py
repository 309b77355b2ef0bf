"""Helpers shared by the dataset loaders: folder checks, file listing, list files and parsing.

Every problem is reported as a :class:`reid_tf.data.DatasetError` that names the dataset, the
file or folder involved and, for a missing dataset, the flag to set (``--root_folder_path``).
Nothing is dropped silently: files a loader skips on purpose (junk identities) are counted and
logged on the ``reid_tf.data`` logger.
"""
import logging
import os

from reid_tf.data.left_out import report_left_out
from reid_tf.data.registry import DatasetError, make_dataframe, validate_dataframe

LOGGER = logging.getLogger("reid_tf.data")

ROOT_FLAG = "--root_folder_path"
# File extensions that look like images; a folder loader that reads only ``.jpg`` warns when it
# skips one of these (e.g. ``.JPG`` or ``.png``), since that is probably a mistake.
_IMAGE_LIKE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def absolute_root(root_folder_path):
    """``root_folder_path`` with ``~`` expanded, as an absolute, normalised path string."""
    if root_folder_path is None or str(root_folder_path) == "":
        raise DatasetError(f"No dataset root folder given: set the flag {ROOT_FLAG}.")
    return os.path.abspath(os.path.expanduser(str(root_folder_path)))


def require_dataset_folder(dataset_name, root_folder_path, folder_name, sub_folders=(),
                           files=()):
    """Check that ``<root>/<folder_name>`` and its required entries exist; return its path.

    ``sub_folders`` and ``files`` are paths relative to the dataset folder that must be folders
    and files respectively. All problems are collected into ONE :class:`DatasetError` that names
    the dataset, the folder expected and the flag ``--root_folder_path``.
    """
    root = absolute_root(root_folder_path)
    dataset_folder = os.path.join(root, folder_name)
    problems = []
    if not os.path.isdir(root):
        problems.append(f"the root folder {root} does not exist")
    elif not os.path.isdir(dataset_folder):
        problems.append(f"the folder {dataset_folder} does not exist")
    else:
        for sub_folder in sub_folders:
            path = os.path.join(dataset_folder, sub_folder)
            if not os.path.isdir(path):
                problems.append(f"the sub-folder {path} does not exist")
        for file_name in files:
            path = os.path.join(dataset_folder, file_name)
            if not os.path.isfile(path):
                problems.append(f"the file {path} does not exist")
    if problems:
        raise DatasetError(
            missing_dataset_message(dataset_name, root, folder_name, sub_folders, files, problems))
    return dataset_folder


def missing_dataset_message(dataset_name, root, folder_name, sub_folders, files, problems):
    """The text of the error for a dataset that is not where it is expected."""
    expected = [f"{folder_name}/{entry}/" for entry in sub_folders]
    expected += [f"{folder_name}/{entry}" for entry in files]
    layout = f" with {', '.join(expected)}" if expected else ""
    message = (
        f"{dataset_name}: dataset not found: {'; '.join(problems)}. Expected the folder "
        f"{os.path.join(root, folder_name)}{layout}. Set the flag {ROOT_FLAG} to the folder "
        f"that contains {folder_name}/ (currently {root})."
    )
    if os.path.basename(os.path.normpath(root)) == folder_name:
        message += (f" Note: {ROOT_FLAG} points at {folder_name}/ itself; give its parent "
                    f"folder instead.")
    return message


def list_jpg_files(dataset_name, folder):
    """Sorted absolute paths of the ``*.jpg`` files directly inside ``folder``.

    Other files (``Thumbs.db``...) and sub-folders are ignored, as in the reference loaders;
    files with another image extension (``.JPG``, ``.png``...) are ignored too but reported with
    a warning, since they are probably images that were meant to be read.
    """
    if not os.path.isdir(folder):
        raise DatasetError(
            f"{dataset_name}: the folder {folder} does not exist (flag {ROOT_FLAG}).")
    jpg_names, other_images = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file():
                continue
            if entry.name.endswith(".jpg"):
                jpg_names.append(entry.name)
            elif os.path.splitext(entry.name)[1].lower() in _IMAGE_LIKE_EXTENSIONS:
                other_images.append(entry.name)
    if other_images:
        report_left_out(dataset_name, None, len(other_images),
                        f"image-like files without the .jpg extension in {folder} (only *.jpg "
                        f"is read, as in the reference loaders), e.g. {sorted(other_images)[0]}",
                        "rename them to .jpg to read them")
    return [os.path.join(folder, name) for name in sorted(jpg_names)]


def require_nonempty(dataset_name, paths, where):
    """Raise if a split folder or list gave no image at all."""
    if not paths:
        raise DatasetError(f"{dataset_name}: {where} holds no images.")
    return paths


def parse_int(text, dataset_name, what, where):
    """``int(text)``, or a :class:`DatasetError` naming ``what`` (the field) and ``where``."""
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DatasetError(
            f"{dataset_name}: cannot read {what} from {text!r} in {where}: not an integer."
        ) from None


def read_list_file(dataset_name, list_file_path, field_count=2):
    """Read a list file whose lines are ``<relative path> <integer label>``-like records.

    Returns ``[(line_number, fields), ...]`` in file order (1-based line numbers); blank lines
    are skipped. A missing file, or a line that does not split into ``field_count``
    whitespace-separated fields, raises :class:`DatasetError` naming the file (and the line).
    """
    if not os.path.isfile(list_file_path):
        raise DatasetError(
            f"{dataset_name}: the list file {list_file_path} does not exist "
            f"(check the dataset folder and the flag {ROOT_FLAG}).")
    records = []
    with open(list_file_path, encoding="utf-8") as list_file:
        for line_number, line in enumerate(list_file, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != field_count:
                raise DatasetError(
                    f"{dataset_name}: line {line_number} of {list_file_path} is {line.rstrip()!r}; "
                    f"expected {field_count} fields separated by a space.")
            records.append((line_number, fields))
    return records


class FileChecker:
    """Checks that listed files exist, listing each folder once (fast for big flat folders).

    Call :meth:`check` for every file and :meth:`raise_if_missing` at the end: the error names
    the first missing files with the list file and line that referenced them.
    """

    def __init__(self, dataset_name):
        self.dataset_name = dataset_name
        self._folder_cache = {}
        self.missing = []

    def _names_in(self, folder):
        names = self._folder_cache.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            self._folder_cache[folder] = names
        return names

    def exists(self, file_path):
        """Whether ``file_path`` is an entry of its folder."""
        folder, name = os.path.split(file_path)
        return name in self._names_in(folder)

    def check(self, file_path, source):
        """Record ``file_path`` as missing (referenced from ``source``) unless it exists."""
        if not self.exists(file_path):
            self.missing.append((file_path, source))

    def raise_if_missing(self):
        """Raise one :class:`DatasetError` listing the missing files, if any were recorded."""
        if not self.missing:
            return
        shown = "; ".join(f"{path} (listed in {source})" for path, source in self.missing[:5])
        more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
        raise DatasetError(
            f"{self.dataset_name}: {len(self.missing)} listed image files do not exist: "
            f"{shown}{more}.")


def check_choice(dataset_name, option_name, value, allowed):
    """Raise a :class:`DatasetError` naming the option and value unless ``value in allowed``."""
    if isinstance(value, bool) or value not in allowed:
        raise DatasetError(
            f"{dataset_name}: invalid {option_name}={value!r}; expected one of "
            f"{', '.join(repr(choice) for choice in allowed)}.")
    return value


def check_int(dataset_name, option_name, value, minimum=None, maximum=None):
    """Return ``value`` if it is an integer within ``[minimum, maximum]``, else raise."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        is_int = value.dtype.kind in "iu"  # numpy integer scalars
        value = int(value) if is_int else value
    if (not is_int or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        bound_text = f" {' and '.join(bounds)}" if bounds else ""
        raise DatasetError(
            f"{dataset_name}: invalid {option_name}={value!r}; expected an integer{bound_text}.")
    return int(value)


def log_standard_count(dataset_name, what, count, standard_count):
    """Log (INFO) when a count differs from the standard release; tiny test trees are fine."""
    if count != standard_count:
        LOGGER.info("%s: %s is %d; the standard release has %d.", dataset_name, what, count,
                    standard_count)


def finish(dataset_name, rows):
    """Build the validated DataFrame from ``(path, identity, camera, modality, split)`` rows."""
    dataframe = validate_dataframe(make_dataframe(rows), dataset_name)
    counts = dataframe["split"].value_counts()
    LOGGER.info("%s loaded: %s.", dataset_name,
                ", ".join(f"{split} {int(counts.get(split, 0))} images"
                          for split in ("train", "query", "gallery")))
    return dataframe


# Market-1501 style layout shared by Market1501, DukeMTMC_reID, VeRi776 and the folder form of
# MSMT17: (split, sub-folder) in the order the rows are emitted.
MARKET_SPLIT_FOLDERS = (("train", "bounding_box_train"), ("query", "query"),
                        ("gallery", "bounding_box_test"))


def load_split_folders(dataset_name, dataset_folder, parse_file_path, split_folders,
                       junk_identity=None):
    """Rows of a dataset stored as one flat folder of ``*.jpg`` files per split.

    ``parse_file_path(path)`` returns ``(identity, camera)`` or ``None`` when the base name does
    not follow the dataset's naming (it may raise :class:`DatasetError` itself, e.g. for a value
    out of range). Unparsable names raise one error naming the first such path. Images whose
    identity equals ``junk_identity`` are skipped and the count per split is logged (WARNING).
    Files are enumerated in sorted order; splits in the order of ``split_folders``.
    """
    rows = []
    dropped = {}
    for split, sub_folder in split_folders:
        folder = os.path.join(dataset_folder, sub_folder)
        paths = require_nonempty(dataset_name, list_jpg_files(dataset_name, folder),
                                 f"the folder {folder}")
        unparsable = []
        for path in paths:
            parsed = parse_file_path(path)
            if parsed is None:
                unparsable.append(path)
                continue
            identity, camera = parsed
            if junk_identity is not None and identity == junk_identity:
                dropped[split] = dropped.get(split, 0) + 1
                continue
            rows.append((path, identity, camera, "visible", split))
        if unparsable:
            others = f" ({len(unparsable) - 1} more in that folder)" if len(unparsable) > 1 else ""
            raise DatasetError(
                f"{dataset_name}: cannot parse identity and camera from the file name "
                f"{unparsable[0]}{others}.")
    if dropped:
        report_left_out(dataset_name, 1, sum(dropped.values()),
                        f"images of the junk identity {junk_identity} ("
                        + ", ".join(f"{split} {count}" for split, count in dropped.items())
                        + "), as in the reference loaders")
    return rows
