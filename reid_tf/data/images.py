"""Reading image files for training and evaluation (flipreid.md §4.4).

Every image is decoded in colour (greyscale files are expanded to three channels) and resized to
``(height, width)`` the way a reference does (``resize``, :data:`RESIZE_INTERPOLATIONS`):

* ``opencv_bilinear`` (default, FlipReID): ``cv2.imread`` + ``cv2.resize`` (bilinear, no
  antialiasing), BGR→RGB;
* ``pil_bilinear`` (MSINet: torchvision ``Resize`` on a PIL image): Pillow ``convert("RGB")`` +
  ``resize(..., BILINEAR)``, whose filter widens when downscaling (antialiasing);
* ``pil_lanczos`` (CM-NAS: ``Image.ANTIALIAS``): Pillow ``resize(..., LANCZOS)``.

The result is a ``uint8`` RGB array of shape ``(height, width, 3)``; the aspect ratio is not
preserved.

A file that is missing, unreadable or not a decodable image raises :class:`ImageReadError`, whose
message names the file. The tf.data pipelines (:mod:`reid_tf.data.pipeline`) call this function
inside ``tf.py_function``; TensorFlow copies the Python error text into the error it raises, so
the path also appears in the message seen by the user.
"""
import os
import threading

import cv2
import numpy as np

from reid_tf.data.registry import DatasetError
from reid_tf.runtime.choices import RESIZE_INTERPOLATIONS

__all__ = ["ImageReadError", "ImageCache", "read_image", "resize_array", "check_image_size"]


class ImageReadError(DatasetError):
    """Raised when an image file is missing, unreadable or cannot be decoded."""


def check_image_size(height, width):
    """Return ``(height, width)`` as positive Python ints or raise a ``ValueError`` naming them."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"Image {name} must be a positive integer, got {value!r}.")
    return int(height), int(width)


def _check_resize(resize):
    if resize not in RESIZE_INTERPOLATIONS:
        raise ValueError(f"--resize_interpolation={resize!r}: expected one of "
                         f"{', '.join(RESIZE_INTERPOLATIONS)}.")


def resize_array(image, height, width, resize="opencv_bilinear"):
    """An RGB ``uint8`` ``(h, w, 3)`` array resized to ``(height, width)`` as
    :func:`read_image` resizes a decoded file (the same OpenCV or Pillow filter)."""
    _check_resize(resize)
    image = np.asarray(image)
    if image.shape[0] == height and image.shape[1] == width:
        return np.ascontiguousarray(image, dtype=np.uint8)
    if resize == "opencv_bilinear":
        return np.ascontiguousarray(cv2.resize(image, (width, height)), dtype=np.uint8)
    from PIL import Image
    method = Image.Resampling.BILINEAR if resize == "pil_bilinear" else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(image).resize((width, height), method), dtype=np.uint8)


def _read_pil(path, height, width, resize):
    from PIL import Image
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"Cannot read image file {path!r}: Pillow could not decode it "
                             f"({error}).") from None
    return resize_array(pixels, height, width, resize)


def read_image(path, height, width, resize="opencv_bilinear"):
    """Read ``path`` as an RGB ``uint8`` array of shape ``(height, width, 3)``.

    ``opencv_bilinear``: the file is decoded by ``cv2.imread(path, cv2.IMREAD_COLOR)`` (so
    greyscale and palette files become three identical channels and EXIF orientation is applied
    as OpenCV does), resized with ``cv2.resize(image, (width, height))`` (bilinear) and
    converted from BGR to RGB. ``pil_bilinear`` / ``pil_lanczos``: decoded by Pillow and resized
    with its bilinear / Lanczos filter (module docstring).

    Raises:
        ImageReadError: the file does not exist, is a folder, cannot be opened, or OpenCV cannot
            decode it; the message contains the path.
        ValueError: ``height`` or ``width`` is not a positive integer, or ``resize`` unknown.
    """
    height, width = check_image_size(height, width)
    _check_resize(resize)
    if isinstance(path, bytes):
        path = path.decode("utf-8")
    path = str(os.fspath(path))
    if not os.path.exists(path):
        raise ImageReadError(f"Cannot read image file {path!r}: the file does not exist.")
    if os.path.isdir(path):
        raise ImageReadError(f"Cannot read image file {path!r}: it is a folder, not a file.")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"Cannot read image file {path!r}: permission denied.")
    if resize != "opencv_bilinear":
        return _read_pil(path, height, width, resize)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageReadError(
            f"Cannot read image file {path!r}: OpenCV could not decode it (the file is corrupt, "
            f"empty or not in an image format OpenCV reads)."
        )
    if image.shape[0] != height or image.shape[1] != width:
        image = cv2.resize(image, (width, height))
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image, dtype=np.uint8)


class ImageCache:
    """A thread-safe in-memory cache of decoded, resized ``uint8`` images.

    Keys are ``(path, height, width, resize)``; values are the arrays returned by :func:`read_image`
    (marked read-only, so a transform that writes in place fails loudly instead of corrupting the
    cache). Use it for small datasets so that later epochs only augment: every image costs
    ``height * width * 3`` bytes (96 KiB at 256 × 128). The cache does not notice files that
    change on disk; call :meth:`clear` after rewriting images.
    """

    def __init__(self):
        self._images = {}
        self._lock = threading.Lock()

    def get(self, path, height, width, resize="opencv_bilinear"):
        """The image of ``path`` at ``(height, width)``, read with :func:`read_image` on a miss."""
        if isinstance(path, bytes):
            path = path.decode("utf-8")
        key = (str(os.fspath(path)), int(height), int(width), resize)
        image = self._images.get(key)
        if image is None:
            image = read_image(key[0], height, width, resize)
            image.setflags(write=False)
            with self._lock:
                image = self._images.setdefault(key, image)
        return image

    def clear(self):
        """Forget every cached image."""
        with self._lock:
            self._images.clear()

    def __len__(self):
        return len(self._images)

    @property
    def nbytes(self):
        """Total size in bytes of the cached arrays."""
        return sum(image.nbytes for image in list(self._images.values()))
