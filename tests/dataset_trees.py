"""Write tiny dataset trees in the real layouts (for loader tests and anything that needs files).

Each ``write_<dataset>(root, ...)`` creates ``<root>/<dataset folder>`` with real, tiny images
(JPEG, or BMP for ``.bmp`` names) and the list files of the real release, and returns the path of
the dataset folder. The default contents are small module constants, so a test can state the
expected rows by hand; every function also takes its own contents.
"""
import os

import cv2
import numpy as np

_ENCODED = {}


def image_bytes(extension=".jpg", height=8, width=4):
    """Bytes of a tiny real image (a fixed colour gradient) encoded for ``extension``."""
    key = (extension.lower(), height, width)
    if key not in _ENCODED:
        rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
        image = np.broadcast_to(rows, (height, width, 3)).copy()
        image[..., 1] = 128
        ok, buffer = cv2.imencode(key[0], image)
        assert ok, f"cv2 cannot encode {extension}"
        _ENCODED[key] = buffer.tobytes()
    return _ENCODED[key]


def write_image(path):
    """Write a tiny real image at ``path`` (folders created); the extension picks the codec."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    extension = os.path.splitext(path)[1]
    with open(path, "wb") as image_file:
        image_file.write(image_bytes(extension if extension.lower() in (".bmp", ".png")
                                     else ".jpg"))
    return path


def write_text(path, text):
    """Write ``text`` to ``path`` (folders created)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as text_file:
        text_file.write(text)
    return path


def write_list(path, records):
    """Write a ``<path> <label>`` list file from ``[(relative_path, label), ...]``."""
    return write_text(path, "".join(f"{name} {label}\n" for name, label in records))


def write_folder_tree(dataset_folder, files_per_folder, extra_files=()):
    """Write ``{sub_folder: [file names]}`` images; ``extra_files`` (non-images) in each folder."""
    for sub_folder, names in files_per_folder.items():
        folder = os.path.join(dataset_folder, sub_folder)
        os.makedirs(folder, exist_ok=True)
        for name in names:
            write_image(os.path.join(folder, name))
        for name in extra_files:
            write_text(os.path.join(folder, name), "not an image")
    return dataset_folder


# ---------------------------------------------------------------- Market-1501 / DukeMTMC-reID
MARKET1501_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                           "0007_c3s1_000101_02.jpg", "-1_c1s1_000001_00.jpg"],
    "query": ["0007_c6s3_000200_01.jpg", "0002_c4s2_000100_00.jpg"],
    "bounding_box_test": ["0000_c1s1_000010_01.jpg", "-1_c2s1_000020_01.jpg",
                          "0002_c5s2_000010_01.jpg", "0007_c1s1_000030_02.jpg"],
}

DUKEMTMC_REID_FILES = {
    "bounding_box_train": ["0005_c2_f0046182.jpg", "0001_c1_f0000100.jpg",
                           "0001_c8_f0000200.jpg"],
    "query": ["0003_c5_f0100000.jpg"],
    "bounding_box_test": ["0003_c1_f0100100.jpg", "0004_c7_f0000001.jpg"],
}


def write_market1501(root, files=MARKET1501_FILES, extra_files=("Thumbs.db",)):
    """``<root>/Market-1501-v15.09.15`` with ``files`` per split folder (and a Thumbs.db)."""
    return write_folder_tree(os.path.join(root, "Market-1501-v15.09.15"), files, extra_files)


def write_dukemtmc_reid(root, files=DUKEMTMC_REID_FILES, extra_files=()):
    """``<root>/DukeMTMC-reID`` with ``files`` per split folder."""
    return write_folder_tree(os.path.join(root, "DukeMTMC-reID"), files, extra_files)


# ---------------------------------------------------------------- MSMT17
MSMT17_LISTS = {
    "list_train.txt": [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                       ("0000/0000_001_05_0303morning_0020_1.jpg", 0),
                       ("0001/0001_000_12_0303noon_0100_0.jpg", 1)],
    "list_val.txt": [("0002/0002_000_03_0304afternoon_0003_2.jpg", 2)],
    "list_query.txt": [("0000/0000_000_15_0113morning_0001_0.jpg", 0)],
    "list_gallery.txt": [("0000/0000_003_02_0113noon_0005_1.jpg", 0),
                         ("0004/0004_000_07_0113noon_0010_0.jpg", 4)],
}

# form -> (dataset folder, train image folder, test image folder)
MSMT17_FORMS = {
    "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    "v1": ("MSMT17_V1", "train", "test"),
}


def write_msmt17(root, form="v2", lists=MSMT17_LISTS):
    """An MSMT17 tree of ``form`` ``"v2"``, ``"v1"`` or ``"folder"`` holding the ``lists``.

    The folder form (``<root>/MSMT17/``) puts the images of list_train and list_val into
    ``bounding_box_train/``, list_query into ``query/`` and list_gallery into
    ``bounding_box_test/`` under their base names.
    """
    if form == "folder":
        dataset_folder = os.path.join(root, "MSMT17")
        split_lists = {"bounding_box_train": ("list_train.txt", "list_val.txt"),
                       "query": ("list_query.txt",), "bounding_box_test": ("list_gallery.txt",)}
        files = {folder: [os.path.basename(name) for list_name in list_names
                          for name, _ in lists[list_name]]
                 for folder, list_names in split_lists.items()}
        return write_folder_tree(dataset_folder, files)
    folder_name, train_folder, test_folder = MSMT17_FORMS[form]
    dataset_folder = os.path.join(root, folder_name)
    for list_name, records in lists.items():
        write_list(os.path.join(dataset_folder, list_name), records)
        image_folder = train_folder if list_name in ("list_train.txt", "list_val.txt") else \
            test_folder
        for name, _ in records:
            write_image(os.path.join(dataset_folder, image_folder, name))
    return dataset_folder


# ---------------------------------------------------------------- VeRi-776
VERI776_FILES = {
    "image_train": ["0002_c002_00030600_0.jpg", "0002_c015_00031000_1.jpg",
                    "0010_c020_00000100_0.jpg"],
    "image_query": ["0776_c001_00000005_0.jpg", "-1_c003_00000006_0.jpg"],
    "image_test": ["0776_c019_00001000_0.jpg", "0000_c004_00000001_1.jpg"],
}


def write_veri776(root, files=VERI776_FILES):
    """``<root>/VeRi`` with ``files`` per split folder."""
    return write_folder_tree(os.path.join(root, "VeRi"), files)


# ---------------------------------------------------------------- VehicleID
VEHICLEID_TRAIN = [("0000010", 3), ("0000011", 3), ("0000005", 1), ("0000012", 3)]
VEHICLEID_TESTS = {
    2400: [("0000100", 20), ("0000101", 20), ("0000102", 31), ("0000103", 20),
           ("0000104", 31), ("0000105", 7), ("0000106", 20), ("0000107", 31)],
    1600: [("0000102", 31), ("0000104", 31), ("0000107", 31)],
    800: [("0000105", 7)],
}


def write_vehicleid(root, train=VEHICLEID_TRAIN, tests=VEHICLEID_TESTS):
    """``<root>/VehicleID`` with ``image/<name>.jpg`` and the ``train_test_split`` lists."""
    dataset_folder = os.path.join(root, "VehicleID")
    split_folder = os.path.join(dataset_folder, "train_test_split")
    write_list(os.path.join(split_folder, "train_list.txt"), train)
    for size, records in tests.items():
        write_list(os.path.join(split_folder, f"test_list_{size}.txt"), records)
    for name, _ in list(train) + [record for records in tests.values() for record in records]:
        write_image(os.path.join(dataset_folder, "image", name + ".jpg"))
    return dataset_folder


# ---------------------------------------------------------------- SYSU-MM01
SYSU_MM01_IDS = {"train_id.txt": [2, 1], "val_id.txt": [3], "test_id.txt": [10, 5]}
# (camera, identity) -> file names in cam<camera>/<identity:04d>/
SYSU_MM01_IMAGES = {
    (1, 1): ["0002.jpg", "0001.jpg"], (5, 1): ["0001.jpg"], (3, 1): ["0001.jpg"],
    (4, 2): ["0001.jpg"], (6, 2): ["0003.jpg"],
    (2, 3): ["0001.jpg"], (3, 3): ["0002.jpg"],
    (1, 5): ["0003.jpg", "0001.jpg", "0002.jpg"], (2, 5): ["0001.jpg", "0005.jpg"],
    (4, 5): ["0004.jpg", "0002.jpg", "0007.jpg"], (3, 5): ["0001.jpg", "0002.jpg"],
    (6, 5): ["0001.jpg"],
    (1, 10): ["0001.jpg"], (4, 10): ["0002.jpg", "0001.jpg"],
    (5, 10): ["0004.jpg", "0001.jpg", "0003.jpg", "0002.jpg"], (3, 10): ["0009.jpg"],
    (6, 10): ["0002.jpg", "0001.jpg"],
}


def write_sysu_mm01(root, ids=SYSU_MM01_IDS, images=SYSU_MM01_IMAGES):
    """``<root>/SYSU-MM01`` with ``cam1..cam6`` and the ``exp/*_id.txt`` files.

    ``ids`` maps each id file name to its identities (written as one comma-separated line);
    ``images`` maps ``(camera, identity)`` to the file names of ``cam<camera>/<identity:04d>``.
    """
    dataset_folder = os.path.join(root, "SYSU-MM01")
    for camera in range(1, 7):
        os.makedirs(os.path.join(dataset_folder, f"cam{camera}"), exist_ok=True)
    for file_name, identities in ids.items():
        write_text(os.path.join(dataset_folder, "exp", file_name),
                   ",".join(str(identity) for identity in identities) + "\n")
    for (camera, identity), names in images.items():
        for name in names:
            write_image(os.path.join(dataset_folder, f"cam{camera}", f"{identity:04d}", name))
    return dataset_folder


# ---------------------------------------------------------------- RegDB
def regdb_records(trial_index, split, modality):
    """The tiny RegDB list of ``(relative path, label)`` used by :func:`write_regdb`.

    Trial t trains on identities ``t, t+1`` (labels 0, 1) and tests on ``t+2, t+3`` (labels 2,
    3); every identity has two images per modality.
    """
    first = trial_index if split == "train" else trial_index + 2
    folder, letter = ("Visible", "v") if modality == "visible" else ("Thermal", "t")
    sex = "female" if modality == "visible" else "male"
    records = []
    for offset in range(2):
        person = first + offset
        label = offset if split == "train" else 2 + offset
        for index in range(1, 3):
            records.append((f"{folder}/{person}/{sex}_front_{letter}_{person:05d}_{index}.bmp",
                            label))
    return records


def write_regdb(root, trials=(1, 2)):
    """``<root>/RegDB`` with ``idx/{train,test}_{visible,thermal}_{t}.txt`` for ``trials``."""
    dataset_folder = os.path.join(root, "RegDB")
    for trial_index in trials:
        for split in ("train", "test"):
            for modality, word in (("visible", "visible"), ("infrared", "thermal")):
                records = regdb_records(trial_index, split, modality)
                write_list(os.path.join(dataset_folder, "idx",
                                        f"{split}_{word}_{trial_index}.txt"), records)
                for name, _ in records:
                    write_image(os.path.join(dataset_folder, name))
    return dataset_folder


# ---------------------------------------------------------------- custom CSV
def write_custom_csv(csv_path, header, rows, images=()):
    """Write a CSV (``header`` list, ``rows`` lists of cells) and the ``images`` it names.

    ``images`` are paths relative to the CSV's folder (or absolute) to create as real images.
    """
    csv_folder = os.path.dirname(csv_path)
    for image in images:
        write_image(os.path.join(csv_folder, image))
    lines = [",".join(header)] + [",".join(str(cell) for cell in row) for row in rows]
    return write_text(csv_path, "\n".join(lines) + "\n")
