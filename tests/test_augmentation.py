"""Augmentation recipes: output format, the custom rectangle transforms, fills and seeding."""
from concurrent.futures import ThreadPoolExecutor

import reid_tf  # noqa: F401  (selects tf-keras; first import of every test)

import numpy as np
import pytest

from reid_tf.data.augmentation import (
    Augmenter,
    augment_image,
    build_augmentation,
    normalize_image,
    sample_rectangle_flipreid,
    sample_rectangle_inclusive,
)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
H, W = 48, 24


def random_image(seed=0, height=H, width=W):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def changed_rectangle(before, after):
    """Bounding box (top, left, h, w) of the changed pixels, checking they fill it; or None."""
    changed = np.any(before != after, axis=-1)
    if not changed.any():
        return None
    rows = np.flatnonzero(changed.any(axis=1))
    cols = np.flatnonzero(changed.any(axis=0))
    top, left = rows[0], cols[0]
    height, width = rows[-1] - top + 1, cols[-1] - left + 1
    # a random colour image: every pixel of the patch changes, nothing outside it does
    assert changed[top:top + height, left:left + width].all()
    assert changed.sum() == height * width
    return top, left, height, width


@pytest.mark.parametrize("recipe", ["flipreid", "msinet", "cmnas", "none"])
def test_recipes_give_normalised_float32(recipe):
    image = random_image(1)
    output = augment_image(build_augmentation(recipe, H, W), image, (0, 1, 2, 3))
    assert output.dtype == np.float32 and output.shape == (H, W, 3)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert (output >= low - 1e-5).all() and (output <= high + 1e-5).all()
    if recipe == "none":
        expected = (image.astype(np.float32) / 255.0 - MEAN) / STD
        np.testing.assert_allclose(output, expected, atol=1e-5)
        np.testing.assert_array_equal(normalize_image(image), output)


def test_flipreid_grayscale_patch_replaces_one_strict_rectangle_with_its_grey_version():
    image = random_image(2)
    augmentation = build_augmentation(
        "flipreid", H, W, horizontal_flip_probability=0.0, patch_replacement_probability=1.0,
        random_erasing_probability=0.0, padding_ratio=0.0, normalize=False)
    for seed in range(20):
        output = augment_image(augmentation, image, seed)
        assert output.dtype == np.uint8 and output.shape == (H, W, 3)
        top, left, height, width = changed_rectangle(image, output)
        assert height < H and width < W
        patch = image[top:top + height, left:left + width].astype(np.float64)
        grey = patch @ np.array([0.299, 0.587, 0.114])
        for channel in range(3):
            assert np.abs(output[top:top + height, left:left + width, channel] - grey).max() <= 1


def test_flipreid_random_erasing_fills_one_strict_rectangle_with_truncated_mean():
    image = random_image(3)
    augmentation = build_augmentation(
        "flipreid", H, W, horizontal_flip_probability=0.0, patch_replacement_probability=0.0,
        random_erasing_probability=1.0, padding_ratio=0.0, normalize=False)
    sizes = set()
    for seed in range(20):
        output = augment_image(augmentation, image, seed)
        rectangle = changed_rectangle(image, output)
        assert rectangle is not None
        top, left, height, width = rectangle
        assert height < H and width < W
        sizes.add((height, width))
        assert (output[top:top + height, left:left + width] == [123, 116, 103]).all()
    assert len(sizes) > 5  # the rectangle is random


def test_flipreid_padding_is_centred_with_rounded_mean_colour():
    # 40 × 20: pad by int(0.05·40) = 2 rows (1 top, 1 bottom) and int(0.05·20) = 1 column (0
    # left, 1 right) with (124, 117, 104), then crop 40 × 20 back at y ∈ {0, 1, 2}, x ∈ {0, 1}.
    image = np.zeros((40, 20, 3), np.uint8)
    padded = np.empty((42, 21, 3), np.uint8)
    padded[:] = (124, 117, 104)
    padded[1:41, 0:20] = image
    crops = {(y, x): padded[y:y + 40, x:x + 20] for y in range(3) for x in range(2)}
    augmentation = build_augmentation(
        "flipreid", 40, 20, horizontal_flip_probability=0.0, patch_replacement_probability=0.0,
        random_erasing_probability=0.0, normalize=False)
    seen = set()
    for seed in range(40):
        output = augment_image(augmentation, image, seed)
        matches = [offset for offset, crop in crops.items() if np.array_equal(output, crop)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 5  # uniformly random crop position


@pytest.mark.parametrize("recipe,fill", [("msinet", (0.4914, 0.4822, 0.4465)),
                                         ("cmnas", (0.485, 0.456, 0.406))])
def test_normalised_erasing_fill(recipe, fill):
    image = random_image(4)
    augmentation = build_augmentation(recipe, H, W, horizontal_flip_probability=0.0,
                                      random_erasing_probability=1.0, padding=0)
    normalised = normalize_image(image)
    for seed in range(10):
        output = augment_image(augmentation, image, seed)
        top, left, height, width = changed_rectangle(normalised, output)
        assert height < H and width < W
        np.testing.assert_array_equal(output[top:top + height, left:left + width],
                                      np.broadcast_to(np.float32(fill), (height, width, 3)))


@pytest.mark.parametrize("recipe", ["msinet", "cmnas"])
def test_zero_padding_and_crop_shift_the_image(recipe):
    image = np.full((H, W, 3), 200, np.uint8)
    augmentation = build_augmentation(recipe, H, W, horizontal_flip_probability=0.0,
                                      random_erasing_probability=0.0)
    black = (0 - MEAN) / STD
    saw_padding = False
    for seed in range(10):
        output = augment_image(augmentation, image, seed)
        is_black = np.isclose(output, black, atol=1e-5).all(axis=-1)
        rows = np.flatnonzero(~is_black.all(axis=1))
        cols = np.flatnonzero(~is_black.all(axis=0))
        # the image content is one rectangle, shifted by at most 10 px
        assert rows[-1] - rows[0] + 1 >= H - 10 and cols[-1] - cols[0] + 1 >= W - 10
        saw_padding |= bool(is_black.any())
    assert saw_padding


def test_msinet_colour_jitter_option_and_erasing_default():
    image = random_image(5)
    plain = build_augmentation("msinet", H, W, horizontal_flip_probability=0.0, padding=0,
                               random_erasing_probability=0.0)
    jitter = build_augmentation("msinet", H, W, horizontal_flip_probability=0.0, padding=0,
                                color_jitter=True)
    assert not any(type(t).__name__ == "RandomErasingNormalized" for t in jitter.transforms)
    assert any(type(t).__name__ == "RandomErasingNormalized"
               for t in build_augmentation("msinet", H, W).transforms)
    np.testing.assert_array_equal(augment_image(plain, image, 1), normalize_image(image))
    assert not np.allclose(augment_image(jitter, image, 1), normalize_image(image))


def test_rectangle_sampling_bounds():
    class FakeGenerator:
        def __init__(self):
            self.integer_calls = []

        def uniform(self, low, high):
            return 0.25 if high < 1 else 1.0  # area fraction 0.25, aspect 1

        def integers(self, low, high):
            self.integer_calls.append((low, high))
            return high - 1  # numpy: exclusive upper bound

    class FakeRandom:
        def __init__(self):
            self.randint_calls = []

        def uniform(self, low, high):
            return 0.25 if high < 1 else 1.0

        def randint(self, low, high):
            self.randint_calls.append((low, high))
            return high  # random.randint: inclusive upper bound

    # H·W = 100·40 = 4000; area 1000 with aspect 1 → h = w = round(31.62) = 32
    generator = FakeGenerator()
    assert sample_rectangle_flipreid(generator, 100, 40) == (100 - 32 - 1, 40 - 32 - 1, 32, 32)
    assert generator.integer_calls == [(0, 68), (0, 8)]
    py_random = FakeRandom()
    assert sample_rectangle_inclusive(py_random, 100, 40) == (68, 8, 32, 32)
    assert py_random.randint_calls == [(0, 68), (0, 8)]


def test_rectangle_sampling_strict_size_test_and_100_attempts():
    class TooLarge:
        calls = 0

        def uniform(self, low, high):
            TooLarge.calls += 1
            return 0.4 if high < 1 else 1.0

    # 20 × 50: area 0.4·1000 = 400, aspect 1 → h = w = 20 = H, rejected by the strict test
    assert sample_rectangle_flipreid(TooLarge(), 20, 50) is None
    assert TooLarge.calls == 200  # 100 attempts, two draws each
    TooLarge.calls = 0
    assert sample_rectangle_inclusive(TooLarge(), 50, 20) is None
    assert TooLarge.calls == 200


def test_per_element_seed_reproducibility_across_threads():
    image = random_image(6)
    augmentation = build_augmentation("flipreid", H, W)
    seeds = [(0, 2, step, position) for step in range(2) for position in range(8)]
    reference = [augment_image(build_augmentation("flipreid", H, W), image, seed)
                 for seed in seeds]
    augmenter = Augmenter(augmentation)
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda seed: augmenter(image, seed), seeds[::-1]))[::-1]
    for left, right in zip(reference, threaded):
        np.testing.assert_array_equal(left, right)
    distinct = {output.tobytes() for output in reference}
    assert len(distinct) == len(seeds)


def test_bad_recipes_and_options():
    with pytest.raises(ValueError, match="Unknown augmentation recipe 'random'"):
        build_augmentation("random", H, W)
    with pytest.raises(ValueError, match=r"recipe 'cmnas' has no option\(s\) \['color_jitter'\]"):
        build_augmentation("cmnas", H, W, color_jitter=True)
    with pytest.raises(ValueError, match="random_erasing_probability must be a probability"):
        build_augmentation("flipreid", H, W, random_erasing_probability=1.5)
    with pytest.raises(ValueError, match="height must be a positive integer"):
        build_augmentation("none", 0, W)
    with pytest.raises(ValueError, match="normalised float32"):
        Augmenter(build_augmentation("flipreid", H, W, normalize=False))(random_image(), 0)
