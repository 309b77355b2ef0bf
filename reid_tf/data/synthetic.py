"""The embedded procedural synthetic ReID datasets: real-layout writers and registered loaders.

No data has to be downloaded to run reid-tf: these datasets are drawn procedurally (see
:mod:`reid_tf.data.synthetic_render` for the renderer) and written to disk in exactly the folder
layouts of the real datasets, then read back through the real loaders:

* ``Synthetic`` (protocol ``standard``): Market-1501 layout, read by ``Market1501``; 80 train and
  40 test identities, 6 cameras, about 1.8k images of 128 x 64 (the quick-start dataset);
* ``Synthetic_Target`` (``standard``): Market-1501 layout, camera domain 1 and other people
  (seed 1); 60 train and 30 test identities, for cross-domain experiments;
* ``Synthetic_SYSU`` (``sysu_mm01``): SYSU-MM01 layout, read by ``SYSU_MM01``; 24 + 8 (val)
  train and 16 test identities, visible cameras 1, 2, 4, 5 and infrared cameras 3, 6;
* ``Synthetic_RegDB`` (``regdb``): RegDB layout with its 10 trials, read by ``RegDB``; 24
  identities with 6 visible and 6 thermal images each.

Each person has one appearance everywhere (build, skin, hair, cap, garment colours and patterns,
shoes, bag; thermal emissivities for infrared cameras) while each camera has its own background,
illumination, colour cast, framing, blur, noise and occlusions, so that identity is the main
consistent signal but naive pixel matching across cameras is poor.

Caching. ``load_dataset("Synthetic", root_folder_path, **options)`` ignores
``root_folder_path`` (any value, e.g. the default data root, is accepted) and instead generates
the dataset on first use into a cache folder: the option ``cache_folder_path`` if given, else the
environment variable ``REID_TF_CACHE_DIR`` if set, else ``~/.cache/reid_tf``. The sub-folder name
holds the dataset name, the generator version and a digest of all generation parameters, so
changing a parameter generates a new dataset next to the old one. Generation writes into a
temporary folder that is renamed when complete, so an interrupted or concurrent generation never
leaves a half dataset under the final name.

Options. Generation parameters are the keyword arguments of the writers (without
``root_folder_path``), except that the random seed is called ``generation_seed`` (``seed`` is a
gallery-sampling option of the SYSU-MM01 loader). Every other option is passed to the real loader
(e.g. ``search_mode``, ``shot``, ``trial_index`` for SYSU-MM01; ``trial_index``, ``direction`` for
RegDB). Example: ``load_dataset("Synthetic", "", num_train_identities=20, generation_seed=3)``.

Determinism. The same parameters and seed give byte-identical files (for a given numpy and
OpenCV build). Every image has its own random generator keyed by (seed, identity, camera, index),
so images do not depend on generation order. The appearance of identity number ``n`` depends on
the seed and ``n`` only, not on the domain: the same seed in domain 1 shows the same people
through other cameras.

Besides the real layout every writer stores a side table ``synthetic_<layout>.csv`` in its root
folder (one row per image: relative path, identity, camera, modality, split, kind, the person box
``person_x0, person_y0, person_x1, person_y1`` in pixels, ``back_view``, ``flip``, ``occluded``)
for tests and diagnostics. The real loaders never read it.
"""
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

from reid_tf.data.registry import DatasetError, get_loader, load_dataset, register_dataset
from reid_tf.data import synthetic_render as render

GENERATOR_VERSION = 1
CACHE_ENVIRONMENT_VARIABLE = "REID_TF_CACHE_DIR"
DEFAULT_CACHE_FOLDER = os.path.join("~", ".cache", "reid_tf")

MARKET1501_FOLDER = "Market-1501-v15.09.15"
SYSU_MM01_FOLDER = "SYSU-MM01"
REGDB_FOLDER = "RegDB"
SYSU_VISIBLE_CAMERAS = (1, 2, 4, 5)
SYSU_INFRARED_CAMERAS = (3, 6)
REGDB_NUM_TRIALS = 10

# Keys of the random generators (first entries after the seed), so that streams never collide.
_IDENTITY_KEY, _CAMERA_KEY, _LAYOUT_KEY, _IMAGE_KEY, _EXTRA_KEY = 1, 2, 3, 4, 5
_MARKET_KEY, _SYSU_KEY, _REGDB_KEY = 11, 12, 13

METADATA_COLUMNS = ["relative_path", "identity_ID", "camera_ID", "modality", "split", "kind",
                    "person_x0", "person_y0", "person_x1", "person_y1", "back_view", "flip",
                    "occluded"]


# --------------------------------------------------------------------------------------------
# Parameter checks and shared helpers
# --------------------------------------------------------------------------------------------

def _check_int(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DatasetError(f"Synthetic data: option {name}={value!r} must be an integer.")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DatasetError(f"Synthetic data: option {name}={value!r} must be {bound}.")
    return int(value)


def _check_common(seed, image_size, domain):
    seed = _check_int("seed", seed, 0)
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DatasetError(
            f"Synthetic data: option image_size={image_size!r} must be (height, width)."
        ) from None
    if height < 32 or width < 16 or height > 1024 or width > 1024:
        raise DatasetError(
            f"Synthetic data: option image_size={image_size!r} must be (height, width) with "
            "32 <= height <= 1024 and 16 <= width <= 1024."
        )
    if domain not in render.DOMAINS or isinstance(domain, bool):
        raise DatasetError(
            f"Synthetic data: option domain={domain!r} must be one of {render.DOMAINS}."
        )
    return seed, (height, width), int(domain)


def _prepare_folder(root_folder_path, folder_name):
    root = os.path.expanduser(str(root_folder_path))
    folder = os.path.join(root, folder_name)
    if os.path.exists(folder):
        raise DatasetError(
            f"Synthetic data: {folder} already exists; write synthetic data into an empty "
            "root_folder_path."
        )
    os.makedirs(folder)
    return root, folder


def _write_image(path, image, quality):
    with open(path, "wb") as handle:
        handle.write(render.encode_jpeg(image, quality))


def _metadata_row(relative_path, identity, camera, modality, split, kind, info):
    x0, y0, x1, y1 = (round(float(v), 2) for v in info["box"])
    return (relative_path, int(identity), int(camera), modality, split, kind, x0, y0, x1, y1,
            bool(info["back_view"]), bool(info["flip"]), bool(info["occluded"]))


def _write_metadata(root, name, rows):
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    table.to_csv(os.path.join(root, f"synthetic_{name}.csv"), index=False)
    return table


def _identity_numbers(rng, count, upper):
    upper = max(upper, count)
    return np.sort(rng.choice(np.arange(1, upper + 1), size=count, replace=False))


def _split_count(rng, total, parts, minimum):
    """``total`` items over ``parts`` bins, each at least ``minimum``, random proportions."""
    counts = np.full(parts, minimum, dtype=int)
    remaining = total - minimum * parts
    if remaining > 0:
        weights = rng.dirichlet(np.full(parts, 1.5))
        counts += rng.multinomial(remaining, weights)
    return counts


# --------------------------------------------------------------------------------------------
# Market-1501 layout
# --------------------------------------------------------------------------------------------

def write_market1501(root_folder_path, num_train_identities=80, num_test_identities=40,
                     num_cameras=6, images_per_identity=14, num_junk_images=32,
                     num_distractor_images=24, seed=0, image_size=(128, 64), domain=0):
    """Write a synthetic dataset in the Market-1501 layout under ``root_folder_path``.

    Creates ``<root>/Market-1501-v15.09.15/`` with ``bounding_box_train/``, ``query/`` and
    ``bounding_box_test/`` holding JPEGs named like the real ones, ``PPPP_cCsS_FFFFFF_BB.jpg``
    (identity, camera, sequence, frame, box index; e.g. ``0002_c1s1_000451_03.jpg``), plus the
    side table ``<root>/synthetic_market1501.csv``.

    Every identity appears in 2..``num_cameras`` cameras with about ``images_per_identity``
    images (uniformly 0.75-1.25 times that, at least 1 per camera for training identities and
    2 per camera for test identities). Each test identity gives one query image per camera it
    appears in; its other images go to the gallery, so every query has gallery matches in other
    cameras. ``num_junk_images`` images of identity ``-1`` (background-only boxes and body
    fragments, like Market's junk detections) are split between the training folder and the
    gallery; ``num_distractor_images`` images of identity ``0000`` (one-off people framed badly:
    far away or cut off) go to the gallery only.

    Args:
      root_folder_path: folder that will hold ``Market-1501-v15.09.15`` (must not exist yet).
      num_train_identities, num_test_identities: disjoint identity counts (>= 1 each).
      num_cameras: 2..9 (camera numbers are one digit in Market-1501 names).
      images_per_identity: mean images per identity (>= 4); an identity is seen by at most as
        many cameras as its images allow (1 per camera for training, 2 for test identities).
      num_junk_images, num_distractor_images: counts of identity -1 and 0 images (>= 0).
      seed: generation seed; same seed, same bytes.
      image_size: (height, width) of the images, default (128, 64).
      domain: camera style family, 0 (default) or 1 (see :mod:`reid_tf.data.synthetic_render`).

    Returns:
      The side table as a DataFrame (one row per written image).
    """
    seed, image_size, domain = _check_common(seed, image_size, domain)
    num_train = _check_int("num_train_identities", num_train_identities, 1)
    num_test = _check_int("num_test_identities", num_test_identities, 1)
    num_cameras = _check_int("num_cameras", num_cameras, 2, 9)
    per_identity = _check_int("images_per_identity", images_per_identity, 4)
    num_junk = _check_int("num_junk_images", num_junk_images, 0)
    num_distractors = _check_int("num_distractor_images", num_distractor_images, 0)
    if num_train + num_test > 9999:
        raise DatasetError("Synthetic data: num_train_identities + num_test_identities must be "
                           "<= 9999 (four-digit identity numbers).")
    root, folder = _prepare_folder(root_folder_path, MARKET1501_FOLDER)
    subfolders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for name in subfolders.values():
        os.makedirs(os.path.join(folder, name))

    layout_rng = render.make_rng(seed, _LAYOUT_KEY, _MARKET_KEY)
    numbers = _identity_numbers(layout_rng, num_train + num_test, 1501)
    test_numbers = set(layout_rng.choice(numbers, size=num_test, replace=False).tolist())
    cameras = {camera: render.sample_camera_style(
        render.make_rng(seed, _CAMERA_KEY, _MARKET_KEY, domain, camera), image_size, domain)
        for camera in range(1, num_cameras + 1)}
    used_names = set()

    def file_name(identity_text, camera, rng):
        while True:
            name = (f"{identity_text}_c{camera}s{int(rng.integers(1, 7))}_"
                    f"{int(rng.integers(0, 1000000)):06d}_{int(rng.integers(1, 9)):02d}.jpg")
            if name not in used_names:
                used_names.add(name)
                return name

    rows = []

    def emit(split, identity_text, identity, camera, kind, image, info, rng):
        name = file_name(identity_text, camera, rng)
        relative = os.path.join(MARKET1501_FOLDER, subfolders[split], name)
        _write_image(os.path.join(root, relative), image, cameras[camera].jpeg_quality)
        rows.append(_metadata_row(relative, identity, camera, "visible", split, kind, info))

    for number in numbers.tolist():
        is_test = number in test_numbers
        identity = render.sample_identity(render.make_rng(seed, _IDENTITY_KEY, number))
        plan_rng = render.make_rng(seed, _LAYOUT_KEY, _MARKET_KEY, number)
        count = max(4, int(round(per_identity * plan_rng.uniform(0.75, 1.25))))
        minimum_per_camera = 2 if is_test else 1
        max_cameras = min(num_cameras, count // minimum_per_camera)
        num_seen = int(plan_rng.integers(2, max_cameras + 1))
        seen = np.sort(plan_rng.choice(np.arange(1, num_cameras + 1), num_seen, replace=False))
        counts = _split_count(plan_rng, count, num_seen, minimum_per_camera)
        for camera, camera_count in zip(seen.tolist(), counts.tolist()):
            query_index = int(plan_rng.integers(camera_count)) if is_test else -1
            for index in range(camera_count):
                rng = render.make_rng(seed, _IMAGE_KEY, _MARKET_KEY, domain, number, camera, index)
                image, info = render.render_image(identity, cameras[camera], rng, image_size)
                split = "train" if not is_test else ("query" if index == query_index else "gallery")
                emit(split, f"{number:04d}", number, camera, "person", image, info, rng)

    extra_rng = render.make_rng(seed, _EXTRA_KEY, _MARKET_KEY, domain)
    for index in range(num_junk):
        rng = render.make_rng(seed, _EXTRA_KEY, _MARKET_KEY, domain, 1, index)
        camera = int(extra_rng.integers(1, num_cameras + 1))
        split = "train" if index % 2 == 0 else "gallery"
        junk_identity = render.sample_identity(rng)
        pose = render.sample_pose(rng, cameras[camera], shift_factor=3.0)
        if rng.random() < 0.5:  # background only
            image, info = render.render_image(junk_identity, cameras[camera], rng, image_size,
                                              pose=pose, draw_person=False)
        else:  # a body fragment: far too close and off centre
            pose["scale"] *= float(rng.uniform(1.8, 2.8))
            pose["y_shift"] += float(rng.uniform(-0.6, 0.6))
            image, info = render.render_image(junk_identity, cameras[camera], rng, image_size,
                                              pose=pose)
        emit(split, "-1", -1, camera, "junk", image, info, rng)
    for index in range(num_distractors):
        rng = render.make_rng(seed, _EXTRA_KEY, _MARKET_KEY, domain, 2, index)
        camera = int(extra_rng.integers(1, num_cameras + 1))
        stranger = render.sample_identity(rng)
        scale = float(rng.uniform(0.4, 0.6)) if rng.random() < 0.5 else float(rng.uniform(1.3, 1.8))
        pose = render.sample_pose(rng, cameras[camera], scale_factor=scale / cameras[camera].scale,
                                  shift_factor=2.0)
        image, info = render.render_image(stranger, cameras[camera], rng, image_size, pose=pose)
        emit("gallery", "0000", 0, camera, "distractor", image, info, rng)
    return _write_metadata(root, "market1501", rows)


# --------------------------------------------------------------------------------------------
# SYSU-MM01 layout
# --------------------------------------------------------------------------------------------

def write_sysu_mm01(root_folder_path, num_train_identities=24, num_val_identities=8,
                    num_test_identities=16, images_per_camera=4, camera_probability=0.8, seed=0,
                    image_size=(128, 64), domain=0):
    """Write a synthetic dataset in the SYSU-MM01 layout under ``root_folder_path``.

    Creates ``<root>/SYSU-MM01/cam1..cam6/<4-digit id>/<4-digit>.jpg`` (visible cameras 1, 2, 4,
    5; infrared cameras 3 and 6), ``exp/train_id.txt``, ``exp/val_id.txt`` and
    ``exp/test_id.txt`` (one line of comma-separated identity numbers each), plus the side table
    ``<root>/synthetic_sysu_mm01.csv``. Cameras 1-3 are indoor and 4-6 outdoor: the infrared
    camera 3 sees the room of camera 2 and camera 6 the place of camera 5 (their thermal scenes
    reuse those scenes' structure). Infrared images are thermal renderings of the same people.

    Every identity is seen by each camera with probability ``camera_probability`` (at least one
    visible and one infrared camera always), with about ``images_per_camera`` images there
    (uniformly 0.5-1.5 times that, at least 1). Identity numbers are drawn from 1..533 (more if
    needed) and split at random into the train, val and test lists.

    Args:
      root_folder_path: folder that will hold ``SYSU-MM01`` (must not exist yet).
      num_train_identities, num_val_identities, num_test_identities: identity counts
        (>= 1, >= 0, >= 1).
      images_per_camera: mean images of an identity in a camera that sees it (>= 1).
      camera_probability: probability that a camera sees an identity, in (0, 1].
      seed, image_size, domain: as in :func:`write_market1501`.

    Returns:
      The side table as a DataFrame (``split`` holds train/val/test identity sets).
    """
    seed, image_size, domain = _check_common(seed, image_size, domain)
    num_train = _check_int("num_train_identities", num_train_identities, 1)
    num_val = _check_int("num_val_identities", num_val_identities, 0)
    num_test = _check_int("num_test_identities", num_test_identities, 1)
    per_camera = _check_int("images_per_camera", images_per_camera, 1)
    if not isinstance(camera_probability, (int, float)) or not 0.0 < camera_probability <= 1.0:
        raise DatasetError(f"Synthetic data: option camera_probability={camera_probability!r} "
                           "must be a number in (0, 1].")
    total = num_train + num_val + num_test
    if total > 9999:
        raise DatasetError("Synthetic data: the identity counts must add up to <= 9999.")
    root, folder = _prepare_folder(root_folder_path, SYSU_MM01_FOLDER)
    layout_rng = render.make_rng(seed, _LAYOUT_KEY, _SYSU_KEY)
    numbers = layout_rng.permutation(_identity_numbers(layout_rng, total, 533))
    sets = {"train": np.sort(numbers[:num_train]),
            "val": np.sort(numbers[num_train:num_train + num_val]),
            "test": np.sort(numbers[num_train + num_val:])}
    os.makedirs(os.path.join(folder, "exp"))
    for name, values in sets.items():
        with open(os.path.join(folder, "exp", f"{name}_id.txt"), "w") as handle:
            handle.write(",".join(str(int(v)) for v in values) + "\n")
    cameras = {}
    for camera in SYSU_VISIBLE_CAMERAS:
        cameras[camera] = render.sample_camera_style(
            render.make_rng(seed, _CAMERA_KEY, _SYSU_KEY, domain, camera), image_size, domain)
    for camera, paired in zip(SYSU_INFRARED_CAMERAS, (2, 5)):
        cameras[camera] = render.sample_camera_style(
            render.make_rng(seed, _CAMERA_KEY, _SYSU_KEY, domain, camera), image_size, domain,
            infrared=True, paired_scene=cameras[paired].scene)
    split_of = {int(v): name for name, values in sets.items() for v in values}
    rows = []
    for number in np.sort(numbers).tolist():
        identity = render.sample_identity(render.make_rng(seed, _IDENTITY_KEY, number))
        plan_rng = render.make_rng(seed, _LAYOUT_KEY, _SYSU_KEY, number)
        seen = [c for c in range(1, 7) if plan_rng.random() < camera_probability]
        if not any(c in SYSU_VISIBLE_CAMERAS for c in seen):
            seen.append(int(plan_rng.choice(SYSU_VISIBLE_CAMERAS)))
        if not any(c in SYSU_INFRARED_CAMERAS for c in seen):
            seen.append(int(plan_rng.choice(SYSU_INFRARED_CAMERAS)))
        for camera in sorted(seen):
            count = max(1, int(round(per_camera * plan_rng.uniform(0.5, 1.5))))
            person_folder = os.path.join(f"cam{camera}", f"{number:04d}")
            os.makedirs(os.path.join(folder, person_folder))
            modality = "infrared" if camera in SYSU_INFRARED_CAMERAS else "visible"
            for index in range(count):
                rng = render.make_rng(seed, _IMAGE_KEY, _SYSU_KEY, domain, number, camera, index)
                image, info = render.render_image(identity, cameras[camera], rng, image_size)
                relative = os.path.join(SYSU_MM01_FOLDER, person_folder, f"{index + 1:04d}.jpg")
                _write_image(os.path.join(root, relative), image, cameras[camera].jpeg_quality)
                rows.append(_metadata_row(relative, number, camera, modality, split_of[number],
                                          "person", info))
    return _write_metadata(root, "sysu_mm01", rows)


# --------------------------------------------------------------------------------------------
# RegDB layout
# --------------------------------------------------------------------------------------------

def write_regdb(root_folder_path, num_identities=24, images_per_identity=6, seed=0,
                image_size=(128, 64), domain=0):
    """Write a synthetic dataset in the RegDB layout under ``root_folder_path``.

    Creates ``<root>/RegDB/Visible/<id>/<name>.jpg`` and ``<root>/RegDB/Thermal/<id>/<name>.jpg``
    (identity folders ``1..num_identities`` without padding, like RegDB; names like
    ``female_front_v_01234_7.jpg`` / ``female_back_t_01240_7.jpg`` with the rendered view),
    ``images_per_identity`` images per identity and modality from one co-located visible/thermal
    camera pair, and the 10 trials ``RegDB/idx/{train,test}_{visible,thermal}_{t}.txt`` for
    t = 1..10: each trial puts a different random half (``num_identities // 2``) of the
    identities in training and the rest in test. List lines are ``relative/path label`` with
    the path relative to ``RegDB/`` and the label the identity number (the folder name), sorted
    by identity then file name. Also writes the side table ``<root>/synthetic_regdb.csv``.

    Args:
      root_folder_path: folder that will hold ``RegDB`` (must not exist yet).
      num_identities: >= 2.
      images_per_identity: images per identity and modality (>= 1; RegDB has 10).
      seed, image_size, domain: as in :func:`write_market1501`.

    Returns:
      The side table as a DataFrame (``split`` is ``all``: the split depends on the trial).
    """
    seed, image_size, domain = _check_common(seed, image_size, domain)
    num_identities = _check_int("num_identities", num_identities, 2, 9999)
    per_identity = _check_int("images_per_identity", images_per_identity, 1)
    root, folder = _prepare_folder(root_folder_path, REGDB_FOLDER)
    visible = render.sample_camera_style(
        render.make_rng(seed, _CAMERA_KEY, _REGDB_KEY, domain, 1), image_size, domain)
    thermal = render.sample_camera_style(
        render.make_rng(seed, _CAMERA_KEY, _REGDB_KEY, domain, 2), image_size, domain,
        infrared=True, paired_scene=visible.scene)
    # A dual-camera system films people from close by: similar framing in every image.
    files = {}  # (identity, modality) -> list of relative paths
    rows = []
    serial = int(render.make_rng(seed, _LAYOUT_KEY, _REGDB_KEY).integers(1, 50000))
    for number in range(1, num_identities + 1):
        identity = render.sample_identity(render.make_rng(seed, _IDENTITY_KEY, number))
        gender = ("female", "male")[int(render.make_rng(seed, _LAYOUT_KEY, _REGDB_KEY,
                                                        number).integers(2))]
        for camera_id, (modality, camera, folder_name, letter) in enumerate(
                (("visible", visible, "Visible", "v"), ("infrared", thermal, "Thermal", "t")),
                start=1):
            os.makedirs(os.path.join(folder, folder_name, str(number)))
            paths = []
            for index in range(per_identity):
                rng = render.make_rng(seed, _IMAGE_KEY, _REGDB_KEY, domain, number, camera_id,
                                      index)
                image, info = render.render_image(identity, camera, rng, image_size)
                view = "back" if info["back_view"] else "front"
                name = f"{gender}_{view}_{letter}_{serial + index:05d}_{number}.jpg"
                relative = f"{folder_name}/{number}/{name}"
                _write_image(os.path.join(folder, folder_name, str(number), name), image,
                             camera.jpeg_quality)
                paths.append(relative)
                rows.append(_metadata_row(os.path.join(REGDB_FOLDER, folder_name, str(number),
                                                       name),
                                          number, camera_id, modality, "all", "person", info))
            files[number, modality] = sorted(paths)
        serial += per_identity
    os.makedirs(os.path.join(folder, "idx"))
    identities = np.arange(1, num_identities + 1)
    for trial in range(1, REGDB_NUM_TRIALS + 1):
        trial_rng = render.make_rng(seed, _LAYOUT_KEY, _REGDB_KEY, 0, trial)
        train = set(trial_rng.permutation(identities)[:num_identities // 2].tolist())
        for split in ("train", "test"):
            chosen = [n for n in identities.tolist() if (n in train) == (split == "train")]
            for modality, file_modality in (("visible", "visible"), ("infrared", "thermal")):
                lines = [f"{path} {number}\n" for number in chosen
                         for path in files[number, modality]]
                with open(os.path.join(folder, "idx", f"{split}_{file_modality}_{trial}.txt"),
                          "w") as handle:
                    handle.writelines(lines)
    return _write_metadata(root, "regdb", rows)


# --------------------------------------------------------------------------------------------
# Cache and registered loaders
# --------------------------------------------------------------------------------------------

# name -> (writer, real loader name, generation parameters that differ from the writer's)
_DATASETS = {
    "Synthetic": (write_market1501, "Market1501", {}),
    "Synthetic_Target": (write_market1501, "Market1501",
                         {"num_train_identities": 60, "num_test_identities": 30, "seed": 1,
                          "domain": 1}),
    "Synthetic_SYSU": (write_sysu_mm01, "SYSU_MM01", {}),
    "Synthetic_RegDB": (write_regdb, "RegDB", {}),
}


def cache_root(cache_folder_path=None):
    """The folder holding generated synthetic datasets (see the module docstring)."""
    if cache_folder_path:
        return os.path.expanduser(str(cache_folder_path))
    environment = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if environment:
        return os.path.expanduser(environment)
    return os.path.expanduser(DEFAULT_CACHE_FOLDER)


def generation_parameters(dataset_name, **options):
    """Full generation parameters of a synthetic dataset (defaults merged with ``options``).

    ``options`` use the loader names (``generation_seed`` for the writer's ``seed``). Returns a
    dict of writer keyword arguments (JSON-serialisable, ``image_size`` as a list).
    """
    if dataset_name not in _DATASETS:
        raise DatasetError(f"Unknown synthetic dataset {dataset_name!r}; expected one of "
                           f"{sorted(_DATASETS)}.")
    writer, _, overrides = _DATASETS[dataset_name]
    parameters = {name: parameter.default
                  for name, parameter in inspect.signature(writer).parameters.items()
                  if name != "root_folder_path"}
    parameters.update(overrides)
    for name, value in options.items():
        key = "seed" if name == "generation_seed" else name
        if key not in parameters or name == "seed":
            raise DatasetError(f"{dataset_name}: unknown generation option {name!r}; expected "
                               f"one of {sorted(_option_names(writer))}.")
        parameters[key] = value
    parameters["image_size"] = [int(v) for v in parameters["image_size"]] \
        if isinstance(parameters["image_size"], (list, tuple)) else parameters["image_size"]
    return parameters


def _option_names(writer):
    names = [name for name in inspect.signature(writer).parameters if name != "root_folder_path"]
    return ["generation_seed" if name == "seed" else name for name in names]


def _folder_name(dataset_name, parameters):
    text = json.dumps({"dataset": dataset_name, "version": GENERATOR_VERSION,
                       "parameters": parameters}, sort_keys=True)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{dataset_name}-v{GENERATOR_VERSION}-{digest}"


def _remove_stale_temporaries(root, prefix, max_age_seconds=24 * 3600):
    """Delete temporary folders of generations that died more than a day ago."""
    now = time.time()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(prefix) and os.path.isdir(path):
            try:
                if now - os.path.getmtime(path) > max_age_seconds:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def prepare_synthetic_dataset(dataset_name, cache_folder_path=None, **options):
    """Generate a synthetic dataset into the cache unless already there; return its folder.

    The returned folder is the ``root_folder_path`` of the real loader (it holds e.g.
    ``Market-1501-v15.09.15``). Generation goes to a temporary folder next to it that is
    renamed when complete; if another process finished the same dataset first, its copy is
    kept and ours is deleted.
    """
    parameters = generation_parameters(dataset_name, **options)
    writer = _DATASETS[dataset_name][0]
    root = cache_root(cache_folder_path)
    folder = os.path.join(root, _folder_name(dataset_name, parameters))
    if os.path.isdir(folder):
        return folder
    os.makedirs(root, exist_ok=True)
    prefix = f".{os.path.basename(folder)}.tmp-"
    _remove_stale_temporaries(root, prefix)
    temporary = tempfile.mkdtemp(prefix=prefix, dir=root)
    try:
        os.chmod(temporary, 0o755)  # mkdtemp makes it private; the cache may be shared
        writer(temporary, **parameters)
        with open(os.path.join(temporary, "synthetic_parameters.json"), "w") as handle:
            json.dump({"dataset": dataset_name, "version": GENERATOR_VERSION,
                       "parameters": parameters}, handle, indent=1, sort_keys=True)
        try:
            os.rename(temporary, folder)
        except OSError:
            if not os.path.isdir(folder):
                raise
            shutil.rmtree(temporary, ignore_errors=True)  # a concurrent generation won
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder


def _split_options(dataset_name, options):
    writer = _DATASETS[dataset_name][0]
    generation_names = set(_option_names(writer))
    generation = {k: v for k, v in options.items() if k in generation_names}
    protocol = {k: v for k, v in options.items() if k not in generation_names}
    return generation, protocol


def _check_protocol_options(dataset_name, protocol):
    """Reject, before generating anything, options that the real loader does not take."""
    real_name = _DATASETS[dataset_name][1]
    parameters = list(inspect.signature(get_loader(real_name)).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {p.name for p in parameters}
    unknown = sorted(set(protocol) - accepted)
    if unknown:
        raise DatasetError(
            f"{dataset_name}: unknown option(s) {unknown}. Generation options are "
            f"{sorted(_option_names(_DATASETS[dataset_name][0]))} and cache_folder_path; "
            f"the {real_name} loader takes {sorted(accepted) or 'no options'}."
        )


def _load(dataset_name, options):
    options = dict(options)
    cache_folder_path = options.pop("cache_folder_path", None)
    generation, protocol = _split_options(dataset_name, options)
    _check_protocol_options(dataset_name, protocol)
    folder = prepare_synthetic_dataset(dataset_name, cache_folder_path, **generation)
    return load_dataset(_DATASETS[dataset_name][1], folder, **protocol)


@register_dataset("Synthetic", protocol="standard")
def load_synthetic(root_folder_path=None, **options):
    """The default synthetic dataset in the Market-1501 layout (the quick-start dataset).

    ``root_folder_path`` is ignored (the data lives in the cache, see the module docstring).
    Options: ``cache_folder_path``, the generation options of :func:`write_market1501`
    (``generation_seed`` for ``seed``), anything else goes to the ``Market1501`` loader.
    """
    return _load("Synthetic", options)


@register_dataset("Synthetic_Target", protocol="standard")
def load_synthetic_target(root_folder_path=None, **options):
    """A second synthetic domain (camera styles of domain 1, other people: seed 1), Market layout.

    ``root_folder_path`` is ignored; options as for :func:`load_synthetic`.
    """
    return _load("Synthetic_Target", options)


@register_dataset("Synthetic_SYSU", protocol="sysu_mm01")
def load_synthetic_sysu(root_folder_path=None, **options):
    """Synthetic visible-infrared dataset in the SYSU-MM01 layout, read by ``SYSU_MM01``.

    ``root_folder_path`` is ignored. Options: ``cache_folder_path``, the generation options of
    :func:`write_sysu_mm01` (``generation_seed`` for ``seed``), and the ``SYSU_MM01`` loader's
    options (``search_mode``, ``shot``, ``trial_index``, ``seed``).
    """
    return _load("Synthetic_SYSU", options)


@register_dataset("Synthetic_RegDB", protocol="regdb")
def load_synthetic_regdb(root_folder_path=None, **options):
    """Synthetic visible-thermal dataset in the RegDB layout (10 trials), read by ``RegDB``.

    ``root_folder_path`` is ignored. Options: ``cache_folder_path``, the generation options of
    :func:`write_regdb` (``generation_seed`` for ``seed``), and the ``RegDB`` loader's options
    (``trial_index``, ``direction``).
    """
    return _load("Synthetic_RegDB", options)
