"""VehicleID loader (MSINet §12).

Layout under ``--root_folder_path``::

    VehicleID/
        image/<name>.jpg
        train_test_split/train_list.txt
        train_test_split/test_list_800.txt, test_list_1600.txt, test_list_2400.txt

List lines are ``<image name without extension> <vehicle id>``. Every image gets camera 0 (the
dataset has no camera information; evaluation uses the ``"vehicleid"`` protocol without camera
filtering). Train rows follow the line order of ``train_list.txt``.

Query and gallery are built like the reference: the test ids are visited in order of first
appearance in ``test_list_<test_size>.txt``; for each id ``rng.choice`` picks one of its images
(in file order), which is removed from the id's list and goes to the gallery; the remaining
images of the id, in file order, go to the query set. ``rng = random.Random(seed + trial_index)``,
so ``trial_index=0, seed=0`` reproduces the reference (which seeds Python's ``random`` with 0).
Rows: train, then query, then gallery.
"""
import collections
import os
import random

from reid_tf.data.common import (
    FileChecker,
    check_choice,
    check_int,
    finish,
    log_standard_count,
    parse_int,
    read_list_file,
    require_dataset_folder,
    require_nonempty,
)
from reid_tf.data.registry import register_dataset

DATASET_NAME = "VehicleID"
FOLDER_NAME = "VehicleID"
TEST_SIZES = (800, 1600, 2400)
STANDARD_TRAIN_IDENTITIES = 13164


def _read_vehicle_list(list_file_path, image_folder, checker):
    records = require_nonempty(DATASET_NAME, read_list_file(DATASET_NAME, list_file_path),
                               f"the list file {list_file_path}")
    items = []
    for line_number, (name, identity_text) in records:
        where = f"line {line_number} of {list_file_path}"
        identity = parse_int(identity_text, DATASET_NAME, "the vehicle id", where)
        image_file_path = os.path.join(image_folder, name + ".jpg")
        checker.check(image_file_path, where)
        items.append((image_file_path, identity))
    return items


def split_query_gallery(test_items, rng):
    """Split ``[(path, identity), ...]`` (file order) into query and gallery like the reference.

    For each identity in order of first appearance, ``rng.choice`` picks one of its items, which
    is removed from the identity's list (first equal item) and appended to the gallery; the
    rest are appended to the query in file order. Returns ``(query_items, gallery_items)``.
    """
    per_identity = collections.OrderedDict()
    for item in test_items:
        per_identity.setdefault(item[1], []).append(item)
    query, gallery = [], []
    for items in per_identity.values():
        sample = rng.choice(items)
        items.remove(sample)
        query.extend(items)
        gallery.append(sample)
    return query, gallery


@register_dataset(DATASET_NAME, protocol="vehicleid")
def load_vehicleid(root_folder_path, test_size=2400, trial_index=0, seed=0):
    """Load VehicleID from ``<root_folder_path>/VehicleID``.

    ``test_size`` selects ``test_list_{800,1600,2400}.txt``; ``trial_index`` (>= 0) and
    ``seed`` give the random query/gallery split with ``random.Random(seed + trial_index)``.
    Returns the dataset table (train in file order, then query, then gallery).
    """
    check_choice(DATASET_NAME, "test_size", test_size, TEST_SIZES)
    trial_index = check_int(DATASET_NAME, "trial_index", trial_index, minimum=0)
    seed = check_int(DATASET_NAME, "seed", seed)
    test_list = f"train_test_split/test_list_{test_size}.txt"
    dataset_folder = require_dataset_folder(
        DATASET_NAME, root_folder_path, FOLDER_NAME, ["image", "train_test_split"],
        ["train_test_split/train_list.txt", test_list])
    image_folder = os.path.join(dataset_folder, "image")
    checker = FileChecker(DATASET_NAME)
    train_items = _read_vehicle_list(
        os.path.join(dataset_folder, "train_test_split", "train_list.txt"), image_folder, checker)
    test_items = _read_vehicle_list(os.path.join(dataset_folder, test_list), image_folder,
                                    checker)
    checker.raise_if_missing()
    log_standard_count(DATASET_NAME, "the number of train identities",
                       len({identity for _, identity in train_items}), STANDARD_TRAIN_IDENTITIES)
    log_standard_count(DATASET_NAME, f"the number of identities in {test_list}",
                       len({identity for _, identity in test_items}), test_size)
    query, gallery = split_query_gallery(test_items, random.Random(seed + trial_index))
    rows = [(path, identity, 0, "visible", "train") for path, identity in train_items]
    rows += [(path, identity, 0, "visible", "query") for path, identity in query]
    rows += [(path, identity, 0, "visible", "gallery") for path, identity in gallery]
    return finish(DATASET_NAME, rows)
