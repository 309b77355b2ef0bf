"""Dataset loaders on tiny trees written in the real layouts (expected rows written by hand)."""
import logging
import os
import random

import reid_tf  # noqa: F401  (selects tf-keras; first import of every test)
import pytest

from reid_tf.data import COLUMNS, DatasetError, dataset_protocol, load_dataset
from reid_tf.data.sysu_mm01 import sample_gallery

try:
    import dataset_trees as trees
except ImportError:  # tests/ is a package in some set-ups
    from tests import dataset_trees as trees


def rows(dataframe, root, split):
    """``(relative path, identity, camera)`` of one split, in row order."""
    part = dataframe[dataframe["split"] == split]
    return [(os.path.relpath(path, root), identity, camera) for path, identity, camera in zip(
        part["image_file_path"], part["identity_ID"], part["camera_ID"])]


def check_table(dataframe, modality="visible"):
    assert list(dataframe.columns) == COLUMNS
    assert all(os.path.isabs(path) and os.path.isfile(path)
               for path in dataframe["image_file_path"])
    if modality is not None:
        assert set(dataframe["modality"]) == {modality}
    # splits come in blocks: train, then query, then gallery
    order = {"train": 0, "query": 1, "gallery": 2}
    codes = [order[split] for split in dataframe["split"]]
    assert codes == sorted(codes)


def error_text(name, root, **options):
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name, root, **options)
    return str(excinfo.value)


def test_registered_names_and_protocols():
    expected = {"Market1501": "standard", "DukeMTMC_reID": "standard", "MSMT17": "standard",
                "VeRi776": "standard", "VehicleID": "vehicleid", "SYSU_MM01": "sysu_mm01",
                "RegDB": "regdb", "custom": "standard"}
    for name, protocol in expected.items():
        assert dataset_protocol(name) == protocol


# ------------------------------------------------------------------ Market-1501 / Duke
def test_market1501_rows_junk_dropped_distractors_kept(tmp_path, caplog):
    root = str(tmp_path)
    folder = trees.write_market1501(root)
    trees.write_image(os.path.join(folder, "query", "0002_c1s1_000999_01.JPG"))  # not *.jpg
    with caplog.at_level(logging.INFO, logger="reid_tf.data"):
        dataframe = load_dataset("Market1501", root)
    check_table(dataframe)
    base = "Market-1501-v15.09.15"
    assert rows(dataframe, root, "train") == [
        (f"{base}/bounding_box_train/0002_c1s1_000451_03.jpg", 2, 1),
        (f"{base}/bounding_box_train/0002_c2s1_000301_01.jpg", 2, 2),
        (f"{base}/bounding_box_train/0007_c3s1_000101_02.jpg", 7, 3)]
    assert rows(dataframe, root, "query") == [
        (f"{base}/query/0002_c4s2_000100_00.jpg", 2, 4),
        (f"{base}/query/0007_c6s3_000200_01.jpg", 7, 6)]
    assert rows(dataframe, root, "gallery") == [
        (f"{base}/bounding_box_test/0000_c1s1_000010_01.jpg", 0, 1),
        (f"{base}/bounding_box_test/0002_c5s2_000010_01.jpg", 2, 5),
        (f"{base}/bounding_box_test/0007_c1s1_000030_02.jpg", 7, 1)]
    assert -1 not in set(dataframe["identity_ID"])
    assert "left out 1 identities and 2 images: images of the junk identity -1" in caplog.text
    assert "train 1, gallery 1" in caplog.text
    assert ".JPG" in caplog.text  # the skipped image-like file is reported


def test_dukemtmc_reid_rows(tmp_path):
    root = str(tmp_path)
    trees.write_dukemtmc_reid(root)
    dataframe = load_dataset("DukeMTMC_reID", root)
    check_table(dataframe)
    assert rows(dataframe, root, "train") == [
        ("DukeMTMC-reID/bounding_box_train/0001_c1_f0000100.jpg", 1, 1),
        ("DukeMTMC-reID/bounding_box_train/0001_c8_f0000200.jpg", 1, 8),
        ("DukeMTMC-reID/bounding_box_train/0005_c2_f0046182.jpg", 5, 2)]
    assert rows(dataframe, root, "query") == [("DukeMTMC-reID/query/0003_c5_f0100000.jpg", 3, 5)]
    assert rows(dataframe, root, "gallery") == [
        ("DukeMTMC-reID/bounding_box_test/0003_c1_f0100100.jpg", 3, 1),
        ("DukeMTMC-reID/bounding_box_test/0004_c7_f0000001.jpg", 4, 7)]


@pytest.mark.parametrize("name,writer", [("Market1501", trees.write_market1501),
                                         ("DukeMTMC_reID", trees.write_dukemtmc_reid)])
def test_market_style_unparsable_name_is_an_error(tmp_path, name, writer):
    folder = writer(str(tmp_path))
    bad = trees.write_image(os.path.join(folder, "bounding_box_train", "abc.jpg"))
    assert bad in error_text(name, str(tmp_path))


def test_market1501_missing_sub_folder_is_one_error(tmp_path):
    folder = trees.write_market1501(str(tmp_path))
    for name in os.listdir(os.path.join(folder, "query")):
        os.remove(os.path.join(folder, "query", name))
    os.rmdir(os.path.join(folder, "query"))
    message = error_text("Market1501", str(tmp_path))
    assert os.path.join(folder, "query") in message
    assert "--root_folder_path" in message and "Market1501" in message
    assert "bounding_box_test" not in message.split("Expected")[0]  # only the missing one


@pytest.mark.parametrize("name,folder_name", [
    ("Market1501", "Market-1501-v15.09.15"), ("DukeMTMC_reID", "DukeMTMC-reID"),
    ("MSMT17", "MSMT17_V2"), ("VeRi776", "VeRi"), ("VehicleID", "VehicleID"),
    ("SYSU_MM01", "SYSU-MM01"), ("RegDB", "RegDB"), ("custom", "dataset.csv")])
def test_missing_dataset_names_dataset_folder_and_flag(tmp_path, name, folder_name):
    message = error_text(name, str(tmp_path / "nowhere"))
    assert "--root_folder_path" in message
    assert folder_name in message
    assert str(tmp_path / "nowhere") in message
    if name != "custom":
        assert name in message
    # an existing root without the dataset folder
    message = error_text(name, str(tmp_path))
    assert folder_name in message and "--root_folder_path" in message


# ------------------------------------------------------------------ MSMT17
MSMT17_EXPECTED = {  # (base name, identity, camera) per split, list order
    "train": [("0000_000_01_0303morning_0015_0.jpg", 0, 1),
              ("0000_001_05_0303morning_0020_1.jpg", 0, 5),
              ("0001_000_12_0303noon_0100_0.jpg", 1, 12),
              ("0002_000_03_0304afternoon_0003_2.jpg", 2, 3)],
    "query": [("0000_000_15_0113morning_0001_0.jpg", 0, 15)],
    "gallery": [("0000_003_02_0113noon_0005_1.jpg", 0, 2),
                ("0004_000_07_0113noon_0010_0.jpg", 4, 7)],
}


@pytest.mark.parametrize("form,train_prefix,test_prefix", [
    ("v2", "MSMT17_V2/mask_train_v2/{pid}/", "MSMT17_V2/mask_test_v2/{pid}/"),
    ("v1", "MSMT17_V1/train/{pid}/", "MSMT17_V1/test/{pid}/"),
    ("folder", "MSMT17/bounding_box_train/", "MSMT17/{split}/")])
def test_msmt17_forms_train_is_list_train_plus_list_val(tmp_path, form, train_prefix,
                                                        test_prefix):
    root = str(tmp_path)
    trees.write_msmt17(root, form)
    for msmt17_form in ("auto", form):
        dataframe = load_dataset("MSMT17", root, msmt17_form=msmt17_form)
        check_table(dataframe)
        for split, expected in MSMT17_EXPECTED.items():
            prefix = train_prefix if split == "train" else test_prefix
            folder_split = {"query": "query", "gallery": "bounding_box_test"}.get(split)
            assert rows(dataframe, root, split) == [
                (prefix.format(pid=name[:4], split=folder_split) + name, identity, camera)
                for name, identity, camera in expected]


def test_msmt17_keeps_list_order_and_detection_preference(tmp_path):
    root = str(tmp_path)
    lists = dict(trees.MSMT17_LISTS)
    lists["list_train.txt"] = lists["list_train.txt"][::-1]
    trees.write_msmt17(root, "v2", lists)
    trees.write_msmt17(root, "folder")
    dataframe = load_dataset("MSMT17", root)  # auto prefers the V2 lists
    assert [os.path.basename(path) for path in
            dataframe[dataframe["split"] == "train"]["image_file_path"]] == [
        "0001_000_12_0303noon_0100_0.jpg", "0000_001_05_0303morning_0020_1.jpg",
        "0000_000_01_0303morning_0015_0.jpg", "0002_000_03_0304afternoon_0003_2.jpg"]
    forced = load_dataset("MSMT17", root, msmt17_form="folder")
    assert all("/MSMT17/" in path for path in forced["image_file_path"])
    assert "msmt17_form" in error_text("MSMT17", root, msmt17_form="v3")
    assert "MSMT17_V1" in error_text("MSMT17", root, msmt17_form="v1")


def test_msmt17_list_errors(tmp_path):
    root = str(tmp_path)
    folder = trees.write_msmt17(root, "v2")
    # a listed file that does not exist
    missing = os.path.join(folder, "mask_test_v2", "0004", "0004_000_07_0113noon_0010_0.jpg")
    os.remove(missing)
    message = error_text("MSMT17", root)
    assert missing in message and "list_gallery.txt" in message
    trees.write_image(missing)
    # a label that disagrees with the identity folder and the file name
    list_train = os.path.join(folder, "list_train.txt")
    with open(list_train, "a", encoding="utf-8") as list_file:
        list_file.write("0001/0001_002_04_0303noon_0101_0.jpg 7\n")
    trees.write_image(os.path.join(folder, "mask_train_v2", "0001",
                                   "0001_002_04_0303noon_0101_0.jpg"))
    message = error_text("MSMT17", root)
    assert list_train in message and "line 4" in message and "7" in message
    trees.write_list(list_train, trees.MSMT17_LISTS["list_train.txt"])
    # a missing list file
    os.remove(os.path.join(folder, "list_val.txt"))
    message = error_text("MSMT17", root)
    assert os.path.join(folder, "list_val.txt") in message and "--root_folder_path" in message


# ------------------------------------------------------------------ VeRi-776
def test_veri776_rows_and_range_checks(tmp_path, caplog):
    root = str(tmp_path)
    folder = trees.write_veri776(root)
    with caplog.at_level(logging.WARNING, logger="reid_tf.data"):
        dataframe = load_dataset("VeRi776", root)
    check_table(dataframe)
    assert rows(dataframe, root, "train") == [
        ("VeRi/image_train/0002_c002_00030600_0.jpg", 2, 2),
        ("VeRi/image_train/0002_c015_00031000_1.jpg", 2, 15),
        ("VeRi/image_train/0010_c020_00000100_0.jpg", 10, 20)]
    assert rows(dataframe, root, "query") == [("VeRi/image_query/0776_c001_00000005_0.jpg", 776, 1)]
    assert rows(dataframe, root, "gallery") == [
        ("VeRi/image_test/0000_c004_00000001_1.jpg", 0, 4),
        ("VeRi/image_test/0776_c019_00001000_0.jpg", 776, 19)]
    assert "left out 1 identities and 1 images" in caplog.text
    for bad_name in ("0777_c001_00000001_0.jpg", "0001_c021_00000001_0.jpg",
                     "0001_c000_00000001_0.jpg", "vehicle.jpg"):
        bad = trees.write_image(os.path.join(folder, "image_test", bad_name))
        assert bad in error_text("VeRi776", root)
        os.remove(bad)


# ------------------------------------------------------------------ VehicleID
def reference_vehicleid_split(records):
    """The reference split with Python's global random seeded with 0 (state restored)."""
    state = random.getstate()
    try:
        random.seed(0)
        per_id = {}
        for name, pid in records:
            per_id.setdefault(pid, []).append([name, pid])
        query, gallery = [], []
        for pid in per_id:
            info = per_id[pid]
            sample = random.choice(info)
            info.remove(sample)
            query.extend(info)
            gallery.append(sample)
    finally:
        random.setstate(state)
    return ([(name + ".jpg", pid) for name, pid in query],
            [(name + ".jpg", pid) for name, pid in gallery])


def index_split(groups, rng):
    query, gallery = [], []
    for group in groups:
        index = rng.randrange(len(group))
        gallery.append(group[index])
        query.extend(group[:index] + group[index + 1:])
    return query, gallery


def named(dataframe, split):
    part = dataframe[dataframe["split"] == split]
    return [(os.path.basename(path), identity)
            for path, identity in zip(part["image_file_path"], part["identity_ID"])]


def test_vehicleid_train_query_gallery(tmp_path):
    root = str(tmp_path)
    trees.write_vehicleid(root)
    dataframe = load_dataset("VehicleID", root)
    check_table(dataframe)
    assert set(dataframe["camera_ID"]) == {0}
    assert rows(dataframe, root, "train") == [
        ("VehicleID/image/0000010.jpg", 3, 0), ("VehicleID/image/0000011.jpg", 3, 0),
        ("VehicleID/image/0000005.jpg", 1, 0), ("VehicleID/image/0000012.jpg", 3, 0)]
    query, gallery = reference_vehicleid_split(trees.VEHICLEID_TESTS[2400])
    assert named(dataframe, "query") == query
    assert named(dataframe, "gallery") == gallery
    assert [identity for _, identity in gallery] == [20, 31, 7]  # one per id, first appearance
    # trials: random.Random(seed + trial_index), groups in order of first appearance
    groups = [[("0000100.jpg", 20), ("0000101.jpg", 20), ("0000103.jpg", 20),
               ("0000106.jpg", 20)],
              [("0000102.jpg", 31), ("0000104.jpg", 31), ("0000107.jpg", 31)],
              [("0000105.jpg", 7)]]
    galleries = set()
    for trial_index, seed in ((0, 0), (1, 0), (2, 0), (3, 4)):
        trial = load_dataset("VehicleID", root, trial_index=trial_index, seed=seed)
        query, gallery = index_split(groups, random.Random(seed + trial_index))
        assert named(trial, "query") == query and named(trial, "gallery") == gallery
        galleries.add(tuple(gallery))
    assert len(galleries) > 1
    small = load_dataset("VehicleID", root, test_size=1600)
    assert [identity for _, identity in named(small, "gallery")] == [31]
    assert sorted(named(small, "query") + named(small, "gallery")) == [
        ("0000102.jpg", 31), ("0000104.jpg", 31), ("0000107.jpg", 31)]
    assert named(load_dataset("VehicleID", root, test_size=800), "gallery") == [
        ("0000105.jpg", 7)]


def test_vehicleid_errors(tmp_path):
    root = str(tmp_path)
    folder = trees.write_vehicleid(root)
    message = error_text("VehicleID", root, test_size=1000)
    assert "test_size" in message and "1000" in message
    assert "trial_index" in error_text("VehicleID", root, trial_index=-1)
    os.remove(os.path.join(folder, "image", "0000104.jpg"))
    message = error_text("VehicleID", root)
    assert os.path.join(folder, "image", "0000104.jpg") in message
    assert "test_list_2400.txt" in message
    os.remove(os.path.join(folder, "train_test_split", "test_list_800.txt"))
    assert os.path.join(folder, "train_test_split", "test_list_800.txt") in error_text(
        "VehicleID", root, test_size=800)


# ------------------------------------------------------------------ SYSU-MM01
SYSU_TRAIN = [  # visible (ids 1, 2, 3 ascending; cameras 1, 2, 4, 5), then infrared (3, 6)
    ("cam1/0001/0001.jpg", 1, 1, "visible"), ("cam1/0001/0002.jpg", 1, 1, "visible"),
    ("cam5/0001/0001.jpg", 1, 5, "visible"), ("cam4/0002/0001.jpg", 2, 4, "visible"),
    ("cam2/0003/0001.jpg", 3, 2, "visible"),
    ("cam3/0001/0001.jpg", 1, 3, "infrared"), ("cam6/0002/0003.jpg", 2, 6, "infrared"),
    ("cam3/0003/0002.jpg", 3, 3, "infrared")]
SYSU_QUERY = [("cam3/0005/0001.jpg", 5, 3), ("cam3/0005/0002.jpg", 5, 3),
              ("cam6/0005/0001.jpg", 5, 6), ("cam3/0010/0009.jpg", 10, 3),
              ("cam6/0010/0001.jpg", 10, 6), ("cam6/0010/0002.jpg", 10, 6)]
# gallery groups (identity, camera, sorted files) in the reference order, all-search
SYSU_GROUPS = [(5, 1, ["0001.jpg", "0002.jpg", "0003.jpg"]), (5, 2, ["0001.jpg", "0005.jpg"]),
               (5, 4, ["0002.jpg", "0004.jpg", "0007.jpg"]), (10, 1, ["0001.jpg"]),
               (10, 4, ["0001.jpg", "0002.jpg"]),
               (10, 5, ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"])]


def sysu_rows(dataframe, split):
    part = dataframe[dataframe["split"] == split]
    return [(os.path.relpath(path, os.path.dirname(os.path.dirname(os.path.dirname(path)))),
             identity, camera, modality) for path, identity, camera, modality in zip(
        part["image_file_path"], part["identity_ID"], part["camera_ID"], part["modality"])]


def group_rows(groups):
    return [(f"cam{camera}/{identity:04d}/{name}", identity, camera, "visible")
            for identity, camera, names in groups for name in names]


def test_sysu_mm01_train_query_and_gallery_pools(tmp_path):
    root = str(tmp_path)
    trees.write_sysu_mm01(root)
    dataframe = load_dataset("SYSU_MM01", root)
    check_table(dataframe, modality=None)
    assert sysu_rows(dataframe, "train") == SYSU_TRAIN
    assert sysu_rows(dataframe, "query") == [row + ("infrared",) for row in SYSU_QUERY]
    assert sysu_rows(dataframe, "gallery") == group_rows(SYSU_GROUPS)
    indoor = load_dataset("SYSU_MM01", root, search_mode="indoor")
    assert sysu_rows(indoor, "query") == sysu_rows(dataframe, "query")
    assert sysu_rows(indoor, "gallery") == group_rows(
        [group for group in SYSU_GROUPS if group[1] in (1, 2)])
    assert set(indoor[indoor["split"] == "gallery"]["camera_ID"]) == {1, 2}


@pytest.mark.parametrize("search_mode", ["all", "indoor"])
def test_sysu_mm01_trials_match_reference_draws(tmp_path, search_mode):
    root = str(tmp_path)
    trees.write_sysu_mm01(root)
    groups = [group for group in SYSU_GROUPS
              if search_mode == "all" or group[1] in (1, 2)]
    for trial in (0, 1, 7):
        # single shot, as the reference: random.seed(trial); random.choice(files)
        state = random.getstate()
        try:
            random.seed(trial)
            expected = [(identity, camera, [random.choice(names)])
                        for identity, camera, names in groups]
        finally:
            random.setstate(state)
        single = load_dataset("SYSU_MM01", root, search_mode=search_mode, trial_index=trial)
        assert sysu_rows(single, "gallery") == group_rows(expected)
        assert sysu_rows(single, "train") == SYSU_TRAIN
        # multi-shot: rng.sample(files, min(shot, len(files)))
        for shot in (2, 10):
            rng = random.Random(trial)
            expected = [(identity, camera, rng.sample(names, min(shot, len(names))))
                        for identity, camera, names in groups]
            multi = load_dataset("SYSU_MM01", root, search_mode=search_mode, shot=shot,
                                 trial_index=trial)
            assert sysu_rows(multi, "gallery") == group_rows(expected)
    again = load_dataset("SYSU_MM01", root, search_mode=search_mode, trial_index=7)
    assert again.equals(load_dataset("SYSU_MM01", root, search_mode=search_mode, trial_index=7))
    reseeded = load_dataset("SYSU_MM01", root, search_mode=search_mode, trial_index=3, seed=7)
    assert sysu_rows(reseeded, "gallery") == sysu_rows(again, "gallery")


def test_sysu_mm01_sample_gallery_on_pool(tmp_path):
    root = str(tmp_path)
    trees.write_sysu_mm01(root)
    dataframe = load_dataset("SYSU_MM01", root)
    pool = dataframe[dataframe["split"] == "gallery"].reset_index(drop=True)
    shuffled = pool.sample(frac=1.0, random_state=3).reset_index(drop=True)
    for trial in range(4):
        trial_table = load_dataset("SYSU_MM01", root, trial_index=trial)
        expected = list(trial_table[trial_table["split"] == "gallery"]["image_file_path"])
        positions = sample_gallery(pool, trial)
        assert positions.dtype.kind == "i" and len(positions) == len(SYSU_GROUPS)
        assert list(pool["image_file_path"].iloc[positions]) == expected
        # the draw does not depend on the row order of the pool
        assert list(shuffled["image_file_path"].iloc[sample_gallery(shuffled, trial)]) == expected
    multi = sample_gallery(pool, 0, shot=10)
    assert sorted(multi.tolist()) == list(range(len(pool)))  # 10 >= every group size


def test_sysu_mm01_errors(tmp_path):
    root = str(tmp_path)
    folder = trees.write_sysu_mm01(root)
    message = error_text("SYSU_MM01", root, search_mode="outdoor")
    assert "search_mode" in message and "outdoor" in message
    assert "shot" in error_text("SYSU_MM01", root, shot=0, trial_index=0)
    assert "trial_index" in error_text("SYSU_MM01", root, seed=3)
    trees.write_text(os.path.join(folder, "exp", "val_id.txt"), "3,x\n")
    assert os.path.join(folder, "exp", "val_id.txt") in error_text("SYSU_MM01", root)
    os.remove(os.path.join(folder, "exp", "test_id.txt"))
    message = error_text("SYSU_MM01", root)
    assert os.path.join(folder, "exp", "test_id.txt") in message
    assert "--root_folder_path" in message


# ------------------------------------------------------------------ RegDB
def regdb_expected(folder, letter, persons, labels, camera, modality):
    sex = "female" if letter == "v" else "male"
    return [(f"RegDB/{folder}/{person}/{sex}_front_{letter}_{person:05d}_{index}.bmp", label,
             camera, modality) for person, label in zip(persons, labels) for index in (1, 2)]


def regdb_rows(dataframe, root, split):
    part = dataframe[dataframe["split"] == split]
    return [(os.path.relpath(path, root), identity, camera, modality)
            for path, identity, camera, modality in zip(
                part["image_file_path"], part["identity_ID"], part["camera_ID"],
                part["modality"])]


def test_regdb_trials_and_directions(tmp_path):
    root = str(tmp_path)
    trees.write_regdb(root, trials=(1, 2))
    dataframe = load_dataset("RegDB", root)
    check_table(dataframe, modality=None)
    assert regdb_rows(dataframe, root, "train") == (
        regdb_expected("Visible", "v", (1, 2), (0, 1), 1, "visible")
        + regdb_expected("Thermal", "t", (1, 2), (0, 1), 2, "infrared"))
    visible_test = regdb_expected("Visible", "v", (3, 4), (2, 3), 1, "visible")
    thermal_test = regdb_expected("Thermal", "t", (3, 4), (2, 3), 2, "infrared")
    assert regdb_rows(dataframe, root, "query") == visible_test
    assert regdb_rows(dataframe, root, "gallery") == thermal_test
    swapped = load_dataset("RegDB", root, direction="infrared_to_visible")
    assert regdb_rows(swapped, root, "query") == thermal_test
    assert regdb_rows(swapped, root, "gallery") == visible_test
    trial2 = load_dataset("RegDB", root, trial_index=2)
    assert regdb_rows(trial2, root, "train")[:4] == regdb_expected(
        "Visible", "v", (2, 3), (0, 1), 1, "visible")
    assert regdb_rows(trial2, root, "gallery") == regdb_expected(
        "Thermal", "t", (4, 5), (2, 3), 2, "infrared")


def test_regdb_errors(tmp_path):
    root = str(tmp_path)
    folder = trees.write_regdb(root, trials=(1, 2))
    for bad in (0, 11, "1"):
        message = error_text("RegDB", root, trial_index=bad)
        assert "trial_index" in message and repr(bad) in message
    assert "direction" in error_text("RegDB", root, direction="both")
    message = error_text("RegDB", root, trial_index=3)
    assert os.path.join(folder, "idx", "train_visible_3.txt") in message
    missing = os.path.join(folder, "Thermal", "4", "male_front_t_00004_2.bmp")
    os.remove(missing)
    message = error_text("RegDB", root)
    assert missing in message and "test_thermal_1.txt" in message and "line 4" in message


# ------------------------------------------------------------------ custom CSV
def test_custom_csv(tmp_path):
    csv_path = str(tmp_path / "data" / "dataset.csv")
    absolute = str(tmp_path / "elsewhere" / "probe.jpg")
    trees.write_image(absolute)
    trees.write_custom_csv(
        csv_path, ["path", "identity", "camera", "modality", "split"],
        [["images/a.jpg", 1, 1, "visible", "train"], ["images/b.jpg", 1, 2, "", ""],
         [absolute, 7, 3, "infrared", "query"], [" images/g.jpg ", 7, 1, "visible", "gallery"]],
        images=["images/a.jpg", "images/b.jpg", "images/g.jpg"])
    data_folder = str(tmp_path / "data")
    for root in (csv_path, data_folder):
        dataframe = load_dataset("custom", root)
        check_table(dataframe, modality=None)
        assert list(dataframe.itertuples(index=False, name=None)) == [
            (os.path.join(data_folder, "images", "a.jpg"), 1, 1, "visible", "train"),
            (os.path.join(data_folder, "images", "b.jpg"), 1, 2, "visible", "train"),
            (absolute, 7, 3, "infrared", "query"),
            (os.path.join(data_folder, "images", "g.jpg"), 7, 1, "visible", "gallery")]
    minimal = str(tmp_path / "minimal.csv")
    trees.write_custom_csv(minimal, ["identity", "path", "camera"], [[4, "data/images/a.jpg", 2]])
    assert list(load_dataset("custom", minimal).itertuples(index=False, name=None)) == [
        (os.path.join(data_folder, "images", "a.jpg"), 4, 2, "visible", "train")]


@pytest.mark.parametrize("header,row,expected", [
    (["path", "identity"], ["a.jpg", 1], ["camera", "line 1"]),
    (["path", "identity", "camera", "colour"], ["a.jpg", 1, 1, "red"], ["colour"]),
    (["path", "identity", "camera"], ["a.jpg", "x7", 1], ["line 3", "'x7'", "identity"]),
    (["path", "identity", "camera"], ["a.jpg", 1, "1.5"], ["line 3", "'1.5'", "camera"]),
    (["path", "identity", "camera", "split"], ["a.jpg", 1, 1, "test"], ["line 3", "'test'"]),
    (["path", "identity", "camera", "modality"], ["a.jpg", 1, 1, "thermal"],
     ["line 3", "'thermal'"]),
    (["path", "identity", "camera"], ["missing.jpg", 1, 1], ["line 3", "missing.jpg"]),
])
def test_custom_csv_errors(tmp_path, header, row, expected):
    csv_path = str(tmp_path / "dataset.csv")
    good = [dict(zip(["path", "identity", "camera", "modality", "split", "colour"],
                     ["a.jpg", 1, 1, "visible", "train", "red"]))[name] for name in header]
    trees.write_custom_csv(csv_path, header, [good, row], images=["a.jpg"])
    message = error_text("custom", csv_path)
    assert csv_path in message
    for text in expected:
        assert text in message


def test_custom_csv_missing_file_and_folder(tmp_path):
    missing = str(tmp_path / "nothing.csv")
    message = error_text("custom", missing)
    assert missing in message and "--root_folder_path" in message
    message = error_text("custom", str(tmp_path))
    assert str(tmp_path) in message and "dataset.csv" in message
