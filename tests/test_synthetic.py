"""Tests of the embedded synthetic ReID datasets (reid_tf.data.synthetic).

Tiny datasets are generated into ``tmp_path``; the layouts are parsed here independently of the
real loaders, then read back through ``load_dataset``. The learnability check computes a
raw-pixel baseline and a per-part colour oracle with a plain numpy mAP written below.
"""
import reid_tf  # noqa: F401  (selects tf-keras; must come first)

import json
import os
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from reid_tf.data import DatasetError, dataset_protocol, load_dataset
from reid_tf.data import synthetic, synthetic_render as render

MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-9])s([1-9])_(\d{6})_(\d{2})\.jpg$")
TINY_MARKET = dict(num_train_identities=3, num_test_identities=3, num_cameras=3,
                   images_per_identity=6, num_junk_images=4, num_distractor_images=3)
TINY_SYSU = dict(num_train_identities=3, num_val_identities=2, num_test_identities=3,
                 images_per_camera=2)
TINY_REGDB = dict(num_identities=6, images_per_identity=3)


def _tree(root):
    """{relative path: bytes} of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = handle.read()
    return files


def _read_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _parse_market(dataset_folder):
    """Rows (file name, identity, camera, split) parsed from the Market-1501 folders."""
    rows = []
    for folder, split in (("bounding_box_train", "train"), ("query", "query"),
                          ("bounding_box_test", "gallery")):
        for name in sorted(os.listdir(os.path.join(dataset_folder, folder))):
            match = MARKET_NAME.match(name)
            assert match is not None, f"bad Market-1501 file name {name}"
            rows.append((name, int(match.group(1)), int(match.group(2)), split))
    return pd.DataFrame(rows, columns=["name", "identity", "camera", "split"])


def _mean_average_precision(distances, query_ids, query_cams, gallery_ids, gallery_cams):
    """Market-1501 mAP: same identity and same camera gallery items are removed per query."""
    average_precisions = []
    for i in range(len(query_ids)):
        keep = ~((gallery_ids == query_ids[i]) & (gallery_cams == query_cams[i]))
        order = np.argsort(distances[i, keep], kind="stable")
        matches = (gallery_ids[keep] == query_ids[i])[order]
        if not matches.any():
            continue
        precision_at_hits = np.cumsum(matches)[matches] / (np.flatnonzero(matches) + 1)
        average_precisions.append(precision_at_hits.mean())
    return float(np.mean(average_precisions))


def _region_mean(image, row, top, bottom):
    """Mean RGB of a central band (fractions ``top..bottom`` of the body height) of the person."""
    height, width = image.shape[:2]
    body_height = row.person_y1 - row.person_y0
    centre = 0.5 * (row.person_x0 + row.person_x1)
    half = 0.25 * (row.person_x1 - row.person_x0)
    y0 = int(np.clip(row.person_y0 + top * body_height, 0, height - 1))
    y1 = int(np.clip(row.person_y0 + bottom * body_height, y0 + 1, height))
    x0 = int(np.clip(centre - half, 0, width - 1))
    x1 = int(np.clip(centre + half, x0 + 1, width))
    return image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("writer, parameters", [
    (synthetic.write_market1501, TINY_MARKET),
    (synthetic.write_sysu_mm01, TINY_SYSU),
    (synthetic.write_regdb, TINY_REGDB),
])
def test_same_seed_same_bytes_other_seed_differs(tmp_path, writer, parameters):
    writer(tmp_path / "a", seed=5, **parameters)
    writer(tmp_path / "b", seed=5, **parameters)
    writer(tmp_path / "c", seed=6, **parameters)
    first, second, other = (_tree(tmp_path / name) for name in "abc")
    assert len(first) > 20
    assert first.keys() == second.keys()
    assert all(first[path] == second[path] for path in first)
    common = first.keys() & other.keys()
    changed = (first.keys() ^ other.keys()) | {p for p in common if first[p] != other[p]}
    # File names (identity numbers, frames) and image bytes both depend on the seed.
    jpgs = [p for p in first if p.endswith(".jpg")]
    assert len(changed) >= len(jpgs) // 2


# ---------------------------------------------------------------------------------------------
# Market-1501 layout, junk and distractors, loading through Market1501
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_market(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    table = load_dataset("Synthetic", "ignored", cache_folder_path=str(cache), **TINY_MARKET)
    (folder,) = [cache / name for name in os.listdir(cache)]
    return folder, table


def test_market_layout_and_file_names(tiny_market):
    folder, _ = tiny_market
    dataset_folder = folder / "Market-1501-v15.09.15"
    assert sorted(os.listdir(dataset_folder)) == ["bounding_box_test", "bounding_box_train",
                                                 "query"]
    parsed = _parse_market(dataset_folder)
    persons = parsed[parsed.identity > 0]
    train_ids = set(persons.identity[persons.split == "train"])
    test_ids = set(persons.identity[persons.split != "train"])
    assert len(train_ids) == 3 and len(test_ids) == 3 and not train_ids & test_ids
    assert set(parsed.camera) <= {1, 2, 3}
    assert parsed.name.is_unique
    # Every identity is seen by at least two cameras.
    assert (persons.groupby("identity").camera.nunique() >= 2).all()
    # One query per (test identity, camera) and a gallery match in another camera for each.
    queries = parsed[parsed.split == "query"]
    gallery = parsed[parsed.split == "gallery"]
    assert not queries.duplicated(["identity", "camera"]).any()
    assert set(queries.identity) == test_ids
    for row in queries.itertuples():
        assert ((gallery.identity == row.identity) & (gallery.camera != row.camera)).any()
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for row in parsed.iloc[::7].itertuples():
        image = _read_rgb(dataset_folder / folders[row.split] / row.name)
        assert image.shape == (128, 64, 3)


def test_market_junk_and_distractors(tiny_market):
    folder, table = tiny_market
    parsed = _parse_market(folder / "Market-1501-v15.09.15")
    junk = parsed[parsed.identity == -1]
    distractors = parsed[parsed.identity == 0]
    assert len(junk) == 4 and set(junk.split) == {"train", "gallery"}
    assert len(distractors) == 3 and set(distractors.split) == {"gallery"}
    assert junk.name.str.match(r"^-1_c\ds\d_\d{6}_\d{2}\.jpg$").all()
    assert distractors.name.str.startswith("0000_c").all()
    # The real loader drops the junk identity and keeps the distractors.
    assert -1 not in set(table.identity_ID)
    assert (table.identity_ID[table.split == "gallery"] == 0).sum() == 3


def test_market_loads_through_real_loader(tiny_market):
    folder, table = tiny_market
    assert dataset_protocol("Synthetic") == "standard"
    parsed = _parse_market(folder / "Market-1501-v15.09.15")
    expected = parsed[parsed.identity != -1]
    loaded = pd.DataFrame({"name": table.image_file_path.map(os.path.basename),
                           "identity": table.identity_ID, "camera": table.camera_ID,
                           "split": table.split})
    key = ["split", "name"]
    pd.testing.assert_frame_equal(
        loaded.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True), check_dtype=False)
    assert (table.modality == "visible").all()
    assert all(path.startswith(str(folder)) and os.path.isfile(path)
               for path in table.image_file_path)


# ---------------------------------------------------------------------------------------------
# SYSU-MM01 layout
# ---------------------------------------------------------------------------------------------

def test_sysu_layout_and_loading(tmp_path):
    table = load_dataset("Synthetic_SYSU", None, cache_folder_path=str(tmp_path), **TINY_SYSU)
    assert dataset_protocol("Synthetic_SYSU") == "sysu_mm01"
    (folder,) = [tmp_path / name for name in os.listdir(tmp_path)]
    dataset_folder = folder / "SYSU-MM01"
    assert sorted(os.listdir(dataset_folder)) == [f"cam{k}" for k in range(1, 7)] + ["exp"]
    lists = {}
    for name in ("train", "val", "test"):
        with open(dataset_folder / "exp" / f"{name}_id.txt") as handle:
            lines = handle.read().splitlines()
        assert len(lines) == 1 and re.fullmatch(r"\d+(,\d+)*", lines[0])
        lists[name] = [int(v) for v in lines[0].split(",")]
    assert [len(lists[n]) for n in ("train", "val", "test")] == [3, 2, 3]
    assert len(set().union(*lists.values())) == 8
    files = []  # (identity, camera, name)
    for camera in range(1, 7):
        for identity in os.listdir(dataset_folder / f"cam{camera}"):
            assert re.fullmatch(r"\d{4}", identity)
            for name in os.listdir(dataset_folder / f"cam{camera}" / identity):
                assert re.fullmatch(r"\d{4}\.jpg", name)
                files.append((int(identity), camera, name))
    files = pd.DataFrame(files, columns=["identity", "camera", "name"])
    assert set(files.identity) == set().union(*lists.values())
    # Every identity has visible (1, 2, 4, 5) and infrared (3, 6) images.
    for _, group in files.groupby("identity"):
        assert set(group.camera) & {1, 2, 4, 5} and set(group.camera) & {3, 6}
    # Through the SYSU_MM01 loader (whole gallery pool).
    train_ids = set(lists["train"]) | set(lists["val"])
    train = table[table.split == "train"]
    assert set(train.identity_ID) == train_ids
    assert len(train) == files.identity.isin(train_ids).sum()
    assert ((train.modality == "infrared") == train.camera_ID.isin([3, 6])).all()
    query = table[table.split == "query"]
    test_files = files[files.identity.isin(lists["test"])]
    assert len(query) == test_files.camera.isin([3, 6]).sum()
    assert set(query.camera_ID) <= {3, 6} and (query.modality == "infrared").all()
    gallery = table[table.split == "gallery"]
    assert len(gallery) == test_files.camera.isin([1, 2, 4, 5]).sum()
    # A sampled single-shot indoor gallery: one image per (identity, camera 1 or 2).
    indoor = load_dataset("Synthetic_SYSU", None, cache_folder_path=str(tmp_path),
                          search_mode="indoor", trial_index=0, **TINY_SYSU)
    indoor_gallery = indoor[indoor.split == "gallery"]
    indoor_groups = test_files[test_files.camera.isin([1, 2])].groupby(["identity", "camera"])
    assert len(indoor_gallery) == indoor_groups.ngroups
    assert len(os.listdir(tmp_path)) == 1  # protocol options do not regenerate


# ---------------------------------------------------------------------------------------------
# RegDB layout
# ---------------------------------------------------------------------------------------------

def test_regdb_layout_and_loading(tmp_path):
    table = load_dataset("Synthetic_RegDB", None, cache_folder_path=str(tmp_path),
                         trial_index=2, **TINY_REGDB)
    assert dataset_protocol("Synthetic_RegDB") == "regdb"
    (folder,) = [tmp_path / name for name in os.listdir(tmp_path)]
    dataset_folder = folder / "RegDB"
    assert sorted(os.listdir(dataset_folder)) == ["Thermal", "Visible", "idx"]
    for modality, letter in (("Visible", "v"), ("Thermal", "t")):
        assert sorted(os.listdir(dataset_folder / modality), key=int) == [str(i) for i in
                                                                           range(1, 7)]
        for identity in range(1, 7):
            names = os.listdir(dataset_folder / modality / str(identity))
            assert len(names) == 3
            assert all(re.fullmatch(rf"(fe)?male_(front|back)_{letter}_\d{{5}}_{identity}\.jpg",
                                    name) for name in names)
    assert len(os.listdir(dataset_folder / "idx")) == 40
    train_sets = []
    for trial in range(1, 11):
        labels = {}
        for split in ("train", "test"):
            for modality in ("visible", "thermal"):
                with open(dataset_folder / "idx" / f"{split}_{modality}_{trial}.txt") as handle:
                    lines = handle.read().splitlines()
                pairs = [line.split(" ") for line in lines]
                assert all(len(pair) == 2 for pair in pairs)
                for path, label in pairs:
                    top, identity, _ = path.split("/")
                    assert top == modality.capitalize() and identity == label
                    assert (dataset_folder / path).is_file()
                labels[split, modality] = [int(label) for _, label in pairs]
                assert len(lines) == 3 * 3
        assert set(labels["train", "visible"]) == set(labels["train", "thermal"])
        assert set(labels["test", "visible"]) == set(labels["test", "thermal"])
        assert set(labels["train", "visible"]).isdisjoint(labels["test", "visible"])
        train_sets.append(frozenset(labels["train", "visible"]))
    assert len(set(train_sets)) > 1  # trials draw different halves
    # Through the RegDB loader, trial 2, visible to infrared.
    query, gallery = table[table.split == "query"], table[table.split == "gallery"]
    assert set(table.identity_ID[table.split == "train"]) == train_sets[1]
    assert (query.modality == "visible").all() and (query.camera_ID == 1).all()
    assert (gallery.modality == "infrared").all() and (gallery.camera_ID == 2).all()
    assert len(query) == len(gallery) == 9


# ---------------------------------------------------------------------------------------------
# Appearance: identity consistency, infrared rendering, domains
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def learnability_set(tmp_path_factory):
    """20 test identities over 6 cameras (about 10 images each)."""
    root = tmp_path_factory.mktemp("learnability")
    metadata = synthetic.write_market1501(root, num_train_identities=1, num_test_identities=20,
                                          num_cameras=6, images_per_identity=10,
                                          num_junk_images=0, num_distractor_images=0, seed=0)
    test = metadata[metadata.split != "train"].reset_index(drop=True)
    images = [_read_rgb(root / path).astype(np.float32) / 255.0 for path in test.relative_path]
    return test, images


def test_identity_is_consistent_across_cameras(learnability_set):
    test, images = learnability_set
    upper = np.stack([_region_mean(image, row, 0.22, 0.42)
                      for image, row in zip(images, test.itertuples())])
    identities = test.identity_ID.to_numpy()
    distances = np.linalg.norm(upper[:, None] - upper[None], axis=-1)

    def intra_over_inter(labels):
        same = labels[:, None] == labels[None]
        off_diagonal = ~np.eye(len(labels), dtype=bool)
        return distances[same & off_diagonal].mean() / distances[~same].mean()

    assert intra_over_inter(identities) < 0.6
    # The same statistic with shuffled identities is about 1: the check can fail.
    shuffled = np.random.default_rng(0).permutation(identities)
    assert intra_over_inter(shuffled) > 0.9
    # Leave-one-out nearest neighbour on the upper-body colour alone (chance is 1/20).
    np.fill_diagonal(distances, np.inf)
    assert (identities[distances.argmin(axis=1)] == identities).mean() > 0.5


def test_learnability_raw_pixels_poor_oracle_good(learnability_set):
    test, images = learnability_set
    raw = np.stack([cv2.resize(image, (16, 32), interpolation=cv2.INTER_AREA).ravel()
                    for image in images])

    def oracle_feature(image, row):
        # Log colours of the upper and lower body: their difference cancels the camera's gain
        # and colour cast; centred log colours keep the chromaticity.
        upper = np.log(_region_mean(image, row, 0.22, 0.42) + 0.02)
        lower = np.log(_region_mean(image, row, 0.6, 0.85) + 0.02)
        return np.concatenate([upper - lower, upper - upper.mean(), lower - lower.mean()])

    oracle = np.stack([oracle_feature(image, row) for image, row in zip(images, test.itertuples())])
    query = (test.split == "query").to_numpy()
    ids, cams = test.identity_ID.to_numpy(), test.camera_ID.to_numpy()
    scores = {}
    for name, features in (("raw", raw), ("oracle", oracle)):
        distances = np.linalg.norm(features[query][:, None] - features[~query][None], axis=-1)
        scores[name] = _mean_average_precision(distances, ids[query], cams[query], ids[~query],
                                               cams[~query])
    # Measured with seed 0: raw 0.116, oracle 0.759.
    assert scores["raw"] < 0.25, scores
    assert scores["oracle"] > 0.5 and scores["oracle"] > scores["raw"] + 0.3, scores


def test_mean_average_precision_helper_by_hand():
    # Query id 1 cam 1; gallery ranked by distance: id1/cam1 (removed), id2, id1/cam2, id1/cam3.
    distances = np.array([[0.1, 0.2, 0.3, 0.4]])
    value = _mean_average_precision(distances, np.array([1]), np.array([1]),
                                    np.array([1, 2, 1, 1]), np.array([1, 2, 2, 3]))
    assert value == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_infrared_is_not_a_grey_copy_of_visible():
    size = (128, 64)
    visible = render.sample_camera_style(render.make_rng(0, 1), size, 0)
    thermal = render.sample_camera_style(render.make_rng(0, 2), size, 0, infrared=True,
                                         paired_scene=visible.scene)
    correlations = []
    for index in range(8):
        identity = render.sample_identity(render.make_rng(5, index))
        pose = render.sample_pose(render.make_rng(6, index), visible)
        pose["occluded"] = False
        colour, info = render.render_image(identity, visible, render.make_rng(7, index), size,
                                           pose=dict(pose))
        infrared, _ = render.render_image(identity, thermal, render.make_rng(7, index), size,
                                          pose=dict(pose))
        # Infrared images are grey (three equal channels), visible ones are not.
        assert (infrared[..., 0] == infrared[..., 1]).all()
        assert (infrared[..., 0] == infrared[..., 2]).all()
        assert np.abs(colour[..., 0].astype(int) - colour[..., 2]).mean() > 3
        x0, y0, x1, y1 = (int(round(v)) for v in info["box"])
        x0, y0 = max(x0, 0), max(y0, 0)
        grey = colour.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        person = np.zeros(size, bool)
        person[y0:y1, x0:x1] = True
        heat = infrared[..., 0].astype(np.float64)
        correlations.append(np.corrcoef(grey[person], heat[person])[0, 1])
        # People are warmer than the cool scene.
        assert heat[person].mean() > heat[~person].mean() + 20
    # A grey copy would correlate at ~1 with the same pose; measured |r| < 0.4 here.
    assert np.max(np.abs(correlations)) < 0.6, correlations


def test_written_infrared_images_are_grey(tmp_path):
    metadata = synthetic.write_sysu_mm01(tmp_path, seed=1, **TINY_SYSU)
    for row in metadata.head(40).itertuples():
        image = _read_rgb(tmp_path / row.relative_path).astype(int)
        spread = np.abs(image - image.mean(axis=2, keepdims=True)).max()
        if row.modality == "infrared":
            assert spread <= 3, row.relative_path
    assert set(metadata.modality) == {"visible", "infrared"}


def test_domain_one_has_other_camera_styles(tmp_path):
    parameters = dict(TINY_MARKET, num_junk_images=0, num_distractor_images=0)
    statistics = {}
    for domain in (0, 1):
        metadata = synthetic.write_market1501(tmp_path / str(domain), seed=2, domain=domain,
                                              **parameters)
        images = np.stack([_read_rgb(tmp_path / str(domain) / p).astype(np.float32)
                           for p in metadata.relative_path])
        # Blue minus red of every image: domain 0 is warm, domain 1 cold.
        statistics[domain] = (images[..., 2] - images[..., 0]).mean(axis=(1, 2))
    assert statistics[1].mean() > statistics[0].mean() + 30
    # Same seed, same people (identity numbers), different cameras.
    names = {d: sorted(os.listdir(tmp_path / str(d) / "Market-1501-v15.09.15" / "query"))
             for d in (0, 1)}
    assert {n[:4] for n in names[0]} == {n[:4] for n in names[1]}


def test_default_sizes_match_the_quick_start_budget():
    parameters = synthetic.generation_parameters("Synthetic")
    assert 60 <= parameters["num_train_identities"] <= 100
    assert 30 <= parameters["num_test_identities"] <= 50
    assert parameters["num_cameras"] == 6 and parameters["image_size"] == [128, 64]
    expected = ((parameters["num_train_identities"] + parameters["num_test_identities"])
                * parameters["images_per_identity"] + parameters["num_junk_images"]
                + parameters["num_distractor_images"])
    assert 1500 <= expected <= 2500
    target = synthetic.generation_parameters("Synthetic_Target")
    assert target["domain"] == 1 and target["seed"] != parameters["seed"]


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def count_jpegs(monkeypatch):
    calls = []
    original = render.encode_jpeg

    def counting(image, quality):
        calls.append(1)
        return original(image, quality)

    monkeypatch.setattr(render, "encode_jpeg", counting)
    return calls


def test_cache_reused_and_regenerated_on_parameter_change(tmp_path, count_jpegs):
    first = load_dataset("Synthetic", "", cache_folder_path=str(tmp_path), **TINY_MARKET)
    written = len(count_jpegs)
    assert written == len(first) + TINY_MARKET["num_junk_images"]
    second = load_dataset("Synthetic", "", cache_folder_path=str(tmp_path), **TINY_MARKET)
    assert len(count_jpegs) == written  # nothing regenerated
    pd.testing.assert_frame_equal(first, second)
    (folder,) = os.listdir(tmp_path)
    assert folder.startswith(f"Synthetic-v{synthetic.GENERATOR_VERSION}-")
    with open(tmp_path / folder / "synthetic_parameters.json") as handle:
        recorded = json.load(handle)
    assert recorded["parameters"]["num_train_identities"] == 3
    # Spelling out a default value is the same dataset.
    load_dataset("Synthetic", "", cache_folder_path=str(tmp_path), generation_seed=0,
                 **TINY_MARKET)
    assert len(count_jpegs) == written and len(os.listdir(tmp_path)) == 1
    # A changed parameter generates a new dataset next to the old one.
    changed = dict(TINY_MARKET, num_test_identities=2)
    third = load_dataset("Synthetic", "", cache_folder_path=str(tmp_path), **changed)
    assert len(count_jpegs) > written
    assert len(os.listdir(tmp_path)) == 2
    assert third.identity_ID[third.split == "query"].nunique() == 2


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(synthetic.CACHE_ENVIRONMENT_VARIABLE, raising=False)
    assert synthetic.cache_root() == str(tmp_path / "home" / ".cache" / "reid_tf")
    monkeypatch.setenv(synthetic.CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "env"))
    assert synthetic.cache_root() == str(tmp_path / "env")
    assert synthetic.cache_root(str(tmp_path / "option")) == str(tmp_path / "option")
    table = load_dataset("Synthetic_RegDB", None, **TINY_REGDB)
    assert all(path.startswith(str(tmp_path / "env")) for path in table.image_file_path)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    original = render.encode_jpeg

    def failing(image, quality):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return original(image, quality)

    monkeypatch.setattr(render, "encode_jpeg", failing)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("Synthetic", "", cache_folder_path=str(tmp_path), **TINY_MARKET)
    assert os.listdir(tmp_path) == []  # neither a half dataset nor a temporary folder
    monkeypatch.setattr(render, "encode_jpeg", original)
    table = load_dataset("Synthetic", "", cache_folder_path=str(tmp_path), **TINY_MARKET)
    assert len(table) > 0 and len(os.listdir(tmp_path)) == 1


def test_concurrent_generation_keeps_the_finished_copy(tmp_path, monkeypatch):
    parameters = synthetic.generation_parameters("Synthetic_RegDB", **TINY_REGDB)
    final = tmp_path / synthetic._folder_name("Synthetic_RegDB", parameters)
    original = render.encode_jpeg

    def other_process_finishes_first(image, quality):
        if not final.exists():  # another process renames its complete copy into place
            final.mkdir()
            (final / "winner.txt").write_text("other process")
        return original(image, quality)

    monkeypatch.setattr(render, "encode_jpeg", other_process_finishes_first)
    folder = synthetic.prepare_synthetic_dataset("Synthetic_RegDB", str(tmp_path), **TINY_REGDB)
    assert folder == str(final) and (final / "winner.txt").is_file()
    assert os.listdir(tmp_path) == [final.name]  # our temporary copy was removed


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def test_bad_options_raise_dataset_errors(tmp_path):
    cache = str(tmp_path)
    with pytest.raises(DatasetError, match="num_cameras=12"):
        load_dataset("Synthetic", "", cache_folder_path=cache, num_cameras=12)
    with pytest.raises(DatasetError, match="domain=2"):
        load_dataset("Synthetic", "", cache_folder_path=cache, domain=2)
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset("Synthetic", "", cache_folder_path=cache, image_size=(8, 8))
    with pytest.raises(DatasetError, match="num_train_identites"):  # a typo
        load_dataset("Synthetic", "", cache_folder_path=cache, num_train_identites=5)
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['seed'\]"):
        load_dataset("Synthetic", "", cache_folder_path=cache, seed=5)
    assert os.listdir(tmp_path) == []  # bad options are caught before generating anything
    with pytest.raises(DatasetError, match="trial_index"):
        load_dataset("Synthetic_RegDB", "", cache_folder_path=cache, trial_index=11,
                     **TINY_REGDB)
    with pytest.raises(DatasetError, match="generation_seed"):
        synthetic.generation_parameters("Synthetic", seed=3)
    assert [name for name in os.listdir(tmp_path) if ".tmp-" in name] == []


def test_writer_refuses_an_existing_dataset_folder(tmp_path):
    (tmp_path / "Market-1501-v15.09.15").mkdir()
    with pytest.raises(DatasetError, match="already exists"):
        synthetic.write_market1501(tmp_path, **TINY_MARKET)
