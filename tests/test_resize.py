"""--resize_interpolation: images resized exactly as each reference does (Pillow's own output
for MSINet's torchvision Resize and CM-NAS's ANTIALIAS, OpenCV's for FlipReID)."""
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import parse_flags
from reid_tf.data.images import ImageCache, ImageReadError, read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (97, 41, 3), dtype=np.uint8)
    path = tmp_path / "person.png"
    Image.fromarray(pixels).save(path)
    return str(path), pixels


def test_each_interpolation_equals_its_library(image_file):
    path, pixels = image_file
    height, width = 64, 32
    pil = Image.fromarray(pixels)
    expected = {
        "pil_bilinear": np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR)),
        "pil_lanczos": np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS)),
        "opencv_bilinear": cv2.resize(pixels, (width, height)),
    }
    results = {}
    for name, reference in expected.items():
        results[name] = read_image(path, height, width, name)
        assert results[name].dtype == np.uint8 and results[name].shape == (height, width, 3)
        np.testing.assert_array_equal(results[name], reference, err_msg=name)
    # The three are different resamplings of the same image (PIL antialiases, OpenCV not).
    assert not np.array_equal(results["pil_bilinear"], results["opencv_bilinear"])
    assert not np.array_equal(results["pil_bilinear"], results["pil_lanczos"])
    # No resize when the file has the size already.
    np.testing.assert_array_equal(read_image(path, 97, 41, "pil_lanczos"), pixels)


def test_cache_keeps_interpolations_apart_and_errors_name_the_file(image_file, tmp_path):
    path, _ = image_file
    cache = ImageCache()
    first = cache.get(path, 64, 32, "pil_bilinear")
    second = cache.get(path, 64, 32, "opencv_bilinear")
    assert len(cache) == 2 and not np.array_equal(first, second)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(str(broken), 64, 32, "pil_bilinear")
    with pytest.raises(ValueError, match="--resize_interpolation"):
        read_image(path, 64, 32, "bicubic")


@pytest.mark.parametrize("flagfile, expected", [
    ("configs/msinet/market1501.flags", "pil_bilinear"),
    ("configs/cmnas/sysu.flags", "pil_lanczos"),
    ("configs/flipreid/market1501_resnet50.flags", "opencv_bilinear"),
])
def test_paper_flagfiles_resize_as_their_reference(flagfile, expected, monkeypatch):
    from reid_tf.cli.settings import evaluation_settings
    monkeypatch.chdir(ROOT)
    values = parse_flags(f"--flagfile={flagfile}")
    assert values.resize_interpolation == expected
    assert evaluation_settings(values).resize == expected
