"""Image reading and the tf.data training/test pipelines."""
import reid_tf  # noqa: F401  (selects tf-keras; first import of every test)

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from reid_tf.data.augmentation import build_augmentation
from reid_tf.data.images import ImageCache, ImageReadError, read_image
from reid_tf.data.pipeline import make_label_map, make_test_dataset, make_training_dataset
from reid_tf.data.sampler import CrossModalitySampler, PKSampler

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
H, W = 16, 8


def normalised(rgb_uint8):
    return (np.asarray(rgb_uint8, np.float32) / 255.0 - MEAN) / STD


# ---------------------------------------------------------------------------------------------
# read_image

def test_read_image_converts_bgr_to_rgb_and_resizes(tmp_path):
    left_bgr, right_bgr = (10, 20, 200), (180, 90, 5)
    image = np.zeros((40, 20, 3), np.uint8)
    image[:, :10] = left_bgr
    image[:, 10:] = right_bgr
    path = tmp_path / "two_colours.png"
    cv2.imwrite(str(path), image)
    rgb = read_image(str(path), 20, 8)
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 8, 3)
    # away from the seam the colours survive bilinear resizing exactly, channels reversed
    assert (rgb[:, :3] == (200, 20, 10)).all()
    assert (rgb[:, -3:] == (5, 90, 180)).all()
    same_size = read_image(path, 40, 20)  # a path-like is accepted too
    np.testing.assert_array_equal(same_size, image[..., ::-1])


def test_read_image_grey_file_becomes_three_channels(tmp_path):
    path = tmp_path / "grey.png"
    cv2.imwrite(str(path), np.arange(12 * 6, dtype=np.uint8).reshape(12, 6))
    image = read_image(str(path), 12, 6)
    assert image.shape == (12, 6, 3)
    np.testing.assert_array_equal(image[..., 0], np.arange(72).reshape(12, 6))
    assert (image == image[..., :1]).all()


def test_read_image_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageReadError, match="corrupt.jpg.*could not decode"):
        read_image(str(corrupt), H, W)
    with pytest.raises(ImageReadError, match="missing.jpg.*does not exist"):
        read_image(str(tmp_path / "missing.jpg"), H, W)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        read_image(str(corrupt), H, -1)


# ---------------------------------------------------------------------------------------------
# Pipelines: each image is a constant colour that encodes its row, so order can be checked.

def row_colour(row):
    return (row * 7 % 256, row * 13 % 256, 255 - row * 3 % 256)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline_images")
    rows = []
    counts = [5, 4, 6, 3, 4, 5]
    row = 0
    for index, count in enumerate(counts):
        for _ in range(count):
            path = folder / f"{row:03d}.png"
            rgb = np.empty((20, 10, 3), np.uint8)
            rgb[:] = row_colour(row)
            cv2.imwrite(str(path), rgb[..., ::-1])
            modality = "visible" if row % 3 else "infrared"
            rows.append((str(path), 50 - 3 * index, 1, modality, "train"))
            row += 1
    return pd.DataFrame(rows, columns=["image_file_path", "identity_ID", "camera_ID",
                                       "modality", "split"])


def collect(dataset):
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return images, labels


def test_label_map_is_sorted_unique_identities(table):
    assert make_label_map(table) == {35: 0, 38: 1, 41: 2, 44: 3, 47: 4, 50: 5}


def test_training_dataset_follows_sampler_order(table):
    sampler = PKSampler.from_dataframe(table, 2, 3, steps_per_epoch=4, seed=1)
    label_map = make_label_map(table)
    dataset = make_training_dataset(table, sampler, H, W, None, label_map, seed=0,
                                    epoch_index=1, num_parallel_calls=2)
    assert dataset.element_spec[0].shape.as_list() == [6, H, W, 3]
    assert dataset.element_spec[0].dtype == tf.float32
    assert dataset.element_spec[1].dtype == tf.int32
    images, labels = collect(dataset)
    batches = sampler.epoch_batches(1)
    assert len(images) == len(batches) == 4
    identity = table.identity_ID.to_numpy()
    for batch_images, batch_labels, rows in zip(images, labels, batches):
        np.testing.assert_array_equal(batch_labels, [label_map[i] for i in identity[rows]])
        for image, row in zip(batch_images, rows):
            np.testing.assert_allclose(image, np.broadcast_to(normalised(row_colour(row)),
                                                              (H, W, 3)), atol=1e-5)


def test_training_dataset_augmentation_is_seeded_and_resumable(table):
    sampler = PKSampler.from_dataframe(table, 2, 2, steps_per_epoch=3, seed=2, policy="msinet")
    label_map = make_label_map(table)
    augmentation = build_augmentation("flipreid", H, W)
    full_images, full_labels = collect(make_training_dataset(
        table, sampler, H, W, augmentation, label_map, seed=5, epoch_index=2))
    again, _ = collect(make_training_dataset(table, sampler, H, W, augmentation, label_map,
                                             seed=5, epoch_index=2, num_parallel_calls=1))
    resumed, resumed_labels = collect(make_training_dataset(
        table, sampler, H, W, augmentation, label_map, seed=5, epoch_index=2, start_step=1,
        cache_images=ImageCache()))
    other_seed, _ = collect(make_training_dataset(table, sampler, H, W, augmentation,
                                                  label_map, seed=6, epoch_index=2))
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    for batch in full_images:
        assert batch.dtype == np.float32 and batch.shape == (4, H, W, 3)
        assert (batch >= low - 1e-5).all() and (batch <= high + 1e-5).all()
    for left, right in zip(full_images, again):
        np.testing.assert_array_equal(left, right)
    assert len(resumed) == 2
    for left, right in zip(full_images[1:], resumed):
        np.testing.assert_array_equal(left, right)
    for left, right in zip(full_labels[1:], resumed_labels):
        np.testing.assert_array_equal(left, right)
    assert any(not np.array_equal(left, right) for left, right in zip(full_images, other_seed))


def test_training_dataset_with_image_cache_reads_each_row_once(table):
    sampler = PKSampler.from_dataframe(table, 3, 2, steps_per_epoch=2, seed=3)
    cache = ImageCache()
    label_map = make_label_map(table)
    cached, _ = collect(make_training_dataset(table, sampler, H, W, "none", label_map, seed=0,
                                              cache_images=cache))
    plain, _ = collect(make_training_dataset(table, sampler, H, W, "none", label_map, seed=0))
    for left, right in zip(cached, plain):
        np.testing.assert_array_equal(left, right)
    assert len(cache) == len(set(np.concatenate(sampler.epoch_batches(0)).tolist()))


def test_cross_modality_dataset_puts_visible_then_infrared(table):
    sampler = CrossModalitySampler.from_dataframe(table, 2, 2, steps_per_epoch=3, seed=4)
    label_map = make_label_map(table)
    images, labels = collect(make_training_dataset(table, sampler, H, W, None, label_map,
                                                   seed=0))
    assert len(images) == 3
    for batch_images, batch_labels, (visible, infrared) in zip(images, labels,
                                                                sampler.epoch_batches(0)):
        assert batch_images.shape == (8, H, W, 3)
        np.testing.assert_array_equal(batch_labels[:4], batch_labels[4:])
        for image, row in zip(batch_images, np.concatenate([visible, infrared])):
            np.testing.assert_allclose(image[0, 0], normalised(row_colour(row)), atol=1e-5)


def test_training_dataset_errors(table, tmp_path):
    sampler = PKSampler.from_dataframe(table, 2, 3, steps_per_epoch=2)
    with pytest.raises(ValueError, match=r"no label for the identities \[50\]"):
        make_training_dataset(table, sampler, H, W, None, {35: 0, 38: 1, 41: 2, 44: 3, 47: 4},
                              seed=0)
    with pytest.raises(ValueError, match="start_step=3 is past the end of epoch 0"):
        make_training_dataset(table, sampler, H, W, None, make_label_map(table), seed=0,
                              start_step=3)
    broken = table.copy()
    broken["image_file_path"] = str(tmp_path / "gone.png")
    dataset = make_training_dataset(broken, sampler, H, W, None, make_label_map(table), seed=0)
    with pytest.raises(tf.errors.OpError, match="gone.png"):
        collect(dataset)


def test_test_dataset_keeps_order_partial_last_batch_and_flips(tmp_path):
    paths = []
    for row in range(5):
        rgb = np.random.default_rng(row).integers(0, 256, (H, W, 3), dtype=np.uint8)
        path = tmp_path / f"{row}.png"
        cv2.imwrite(str(path), rgb[..., ::-1])
        paths.append((str(path), rgb))
    table = pd.DataFrame({"image_file_path": [path for path, _ in paths]})
    plain = [batch.numpy() for batch in make_test_dataset(table, H, W, batch_size=2)]
    flipped = [batch.numpy() for batch in make_test_dataset(table, H, W, 2, flip=True)]
    assert [batch.shape[0] for batch in plain] == [2, 2, 1]
    plain, flipped = np.concatenate(plain), np.concatenate(flipped)
    assert plain.dtype == np.float32
    for index, (_, rgb) in enumerate(paths):
        np.testing.assert_allclose(plain[index], normalised(rgb), atol=1e-5)
        np.testing.assert_allclose(flipped[index], normalised(rgb[:, ::-1]), atol=1e-5)
