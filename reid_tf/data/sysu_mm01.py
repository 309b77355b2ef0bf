"""SYSU-MM01 loader (CM-NAS §7.1, §9.2): visible-infrared person re-identification.

Layout under ``--root_folder_path``::

    SYSU-MM01/
        cam1/ ... cam6/<4-digit identity>/<file>.jpg
        exp/train_id.txt, exp/val_id.txt, exp/test_id.txt   (one line of comma-separated ints)

Cameras 1, 2, 4, 5 are visible, 3 and 6 infrared; ``camera_ID`` is K of ``camK`` and
``identity_ID`` the identity folder. Only ``*.jpg`` files are read, in sorted order.

* train = the identities of train_id.txt and val_id.txt (validation merged into training):
  first every visible image (identities ascending, cameras 1, 2, 4, 5, files sorted), then every
  infrared image (identities ascending, cameras 3, 6, files sorted), as the reference
  preprocessing builds its visible and thermal lists;
* query = the infrared images of the test identities from cameras 3 and 6 (identities
  ascending, camera 3 then 6, files sorted), for both search modes;
* gallery = visible images of the test identities from the cameras of ``search_mode``
  (``"all"``: 1, 2, 4, 5; ``"indoor"``: 1, 2). With ``trial_index=None`` the whole candidate
  pool is returned (identities ascending, cameras ascending, files sorted); with an integer
  trial the reference draw is applied (:func:`sample_gallery`).

Missing ``cam<K>/<identity>`` folders are skipped, as in the reference.
"""
import os
import random

import numpy as np

from reid_tf.data.common import (
    LOGGER,
    check_choice,
    check_int,
    finish,
    list_jpg_files,
    parse_int,
    require_dataset_folder,
    require_nonempty,
)
from reid_tf.data.left_out import report_left_out
from reid_tf.data.registry import DatasetError, make_dataframe, register_dataset

DATASET_NAME = "SYSU_MM01"
FOLDER_NAME = "SYSU-MM01"
VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
ID_FILES = ("exp/train_id.txt", "exp/val_id.txt", "exp/test_id.txt")


def read_id_file(id_file_path):
    """The identities of an ``exp/*_id.txt`` file: one line of comma-separated integers."""
    with open(id_file_path, encoding="utf-8") as id_file:
        lines = [line.strip() for line in id_file.read().splitlines()]
    lines = [line for line in lines if line]
    if len(lines) != 1:
        raise DatasetError(f"{DATASET_NAME}: {id_file_path} has {len(lines)} non-empty lines; "
                           f"expected one line of comma-separated identities.")
    identities = []
    for token in lines[0].split(","):
        token = token.strip()
        if token:
            identities.append(parse_int(token, DATASET_NAME, "an identity", id_file_path))
    if not identities:
        raise DatasetError(f"{DATASET_NAME}: {id_file_path} lists no identity.")
    return identities


def _identity_images(dataset_folder, camera, identity):
    """Sorted ``.jpg`` paths of ``cam<camera>/<identity:04d>``; empty if the folder is absent."""
    folder = os.path.join(dataset_folder, f"cam{camera}", f"{identity:04d}")
    if not os.path.isdir(folder):
        return []
    return list_jpg_files(DATASET_NAME, folder)


def _report_identities_without_images(dataset_folder, identities, rows, part, id_files):
    """Identities of the id files with no ``cam<K>/<identity>`` folder (no image) at all,
    skipped as in the reference: said aloud."""
    present = {row[1] for row in rows}
    absent = [identity for identity in identities if identity not in present]
    if absent:
        report_left_out(DATASET_NAME, len(absent), 0,
                        f"{part} identities listed in {id_files} with no image folder under "
                        f"{dataset_folder}/cam1..cam6 (e.g. {absent[:5]}), skipped as in the "
                        "reference")


def _collect(dataset_folder, identities, cameras, modality, split):
    rows = []
    for identity in sorted(identities):
        for camera in cameras:
            for path in _identity_images(dataset_folder, camera, identity):
                rows.append((path, identity, camera, modality, split))
    return rows


def sample_gallery(gallery_pool, trial_index, shot=1, seed=None):
    """Row positions of one trial's gallery drawn from a candidate pool, like the reference.

    ``gallery_pool`` is a DataFrame of gallery candidates (e.g. the gallery rows returned with
    ``trial_index=None``) with the columns ``image_file_path``, ``identity_ID``, ``camera_ID``.
    ``rng = random.Random(seed)`` with ``seed = trial_index`` when ``seed`` is ``None`` (the
    reference calls ``random.seed(trial)``). For each identity in ascending order and each of its
    cameras in ascending order, the files of that (identity, camera) group are sorted by path;
    ``shot == 1`` takes ``rng.choice(files)``, ``shot > 1`` takes
    ``rng.sample(files, min(shot, len(files)))``.

    Returns a numpy ``int64`` array of **0-based row positions** into ``gallery_pool`` (use
    ``gallery_pool.iloc[positions]`` or index a feature matrix with it), in draw order.
    """
    shot = check_int(DATASET_NAME, "shot", shot, minimum=1)
    trial_index = check_int(DATASET_NAME, "trial_index", trial_index)
    seed = trial_index if seed is None else check_int(DATASET_NAME, "seed", seed)
    missing = [column for column in ("image_file_path", "identity_ID", "camera_ID")
               if column not in gallery_pool.columns]
    if missing:
        raise DatasetError(f"{DATASET_NAME}: the gallery pool lacks the columns {missing}.")
    groups = {}
    for position, (path, identity, camera) in enumerate(zip(
            gallery_pool["image_file_path"], gallery_pool["identity_ID"],
            gallery_pool["camera_ID"])):
        groups.setdefault((int(identity), int(camera)), []).append((str(path), position))
    rng = random.Random(seed)
    positions = []
    for key in sorted(groups):
        files = sorted(groups[key])
        if shot == 1:
            positions.append(rng.choice(files)[1])
        else:
            positions.extend(position for _, position in rng.sample(files, min(shot, len(files))))
    return np.asarray(positions, dtype=np.int64)


@register_dataset(DATASET_NAME, protocol="sysu_mm01")
def load_sysu_mm01(root_folder_path, search_mode="all", shot=1, trial_index=None, seed=None):
    """Load SYSU-MM01 from ``<root_folder_path>/SYSU-MM01``.

    ``search_mode``: ``"all"`` (gallery cameras 1, 2, 4, 5) or ``"indoor"`` (1, 2). ``shot``:
    images per (identity, camera) in a sampled gallery (1 single-shot, 10 multi-shot).
    ``trial_index``: ``None`` returns the whole gallery pool, an integer the gallery of that
    trial drawn with ``random.Random(seed)`` (``seed=None`` uses ``trial_index``).
    Returns the dataset table: train, then query, then gallery rows.
    """
    check_choice(DATASET_NAME, "search_mode", search_mode, tuple(GALLERY_CAMERAS))
    shot = check_int(DATASET_NAME, "shot", shot, minimum=1)
    if trial_index is None:
        if seed is not None:
            raise DatasetError(f"{DATASET_NAME}: seed={seed!r} needs an integer trial_index "
                               f"(trial_index=None returns the whole gallery pool).")
    else:
        trial_index = check_int(DATASET_NAME, "trial_index", trial_index)
    dataset_folder = require_dataset_folder(
        DATASET_NAME, root_folder_path, FOLDER_NAME,
        [f"cam{camera}" for camera in range(1, 7)], ID_FILES)
    train_ids, val_ids, test_ids = (read_id_file(os.path.join(dataset_folder, name))
                                    for name in ID_FILES)
    train_identities = sorted(set(train_ids) | set(val_ids))
    test_identities = sorted(set(test_ids))
    overlap = sorted(set(train_identities) & set(test_identities))
    if overlap:
        LOGGER.warning("%s: %d identities (e.g. %s) are listed both for training and for testing "
                       "in %s.", DATASET_NAME, len(overlap), overlap[:5],
                       os.path.join(dataset_folder, "exp"))

    train = _collect(dataset_folder, train_identities, VISIBLE_CAMERAS, "visible", "train")
    train += _collect(dataset_folder, train_identities, INFRARED_CAMERAS, "infrared", "train")
    query = _collect(dataset_folder, test_identities, INFRARED_CAMERAS, "infrared", "query")
    gallery = _collect(dataset_folder, test_identities, GALLERY_CAMERAS[search_mode], "visible",
                       "gallery")
    _report_identities_without_images(dataset_folder, train_identities, train, "training",
                                      "exp/train_id.txt and exp/val_id.txt")
    _report_identities_without_images(dataset_folder, test_identities, query + gallery, "test",
                                      "exp/test_id.txt")
    require_nonempty(DATASET_NAME, train, "the training identities of exp/train_id.txt and "
                     "exp/val_id.txt")
    require_nonempty(DATASET_NAME, query, "cameras 3 and 6 for the test identities")
    require_nonempty(DATASET_NAME, gallery,
                     f"the gallery cameras of search_mode={search_mode!r} for the test identities")
    if trial_index is not None:
        pool = make_dataframe(gallery)
        gallery = [gallery[position] for position in
                   sample_gallery(pool, trial_index, shot=shot, seed=seed)]
    return finish(DATASET_NAME, train + query + gallery)
