"""Training augmentation recipes built with albumentations 2.x.

``build_augmentation(recipe, height, width, **options)`` returns an ``albumentations.Compose``
that takes an RGB ``uint8`` image of shape ``(height, width, 3)`` (what
:func:`reid_tf.data.images.read_image` returns) and ends with a ``float32`` image normalised with
the ImageNet mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)`` on the 0–1 scale:
every model of this project takes normalised images.

Recipes:

* ``"flipreid"`` (flipreid.md §4.6): pad to ``H + int(0.05 H)`` × ``W + int(0.05 W)`` (centred,
  ImageNet mean colour, ``(124, 117, 104)`` on uint8), random crop ``H × W``, horizontal flip,
  random grayscale patch replacement, random erasing with the ImageNet mean (``(123, 116, 103)``
  on uint8), then normalisation.
* ``"msinet"`` (msinet.md §9.2): horizontal flip, zero padding of 10 px, random crop, optional
  colour jitter (``color_jitter=True``, cross-domain runs), normalisation, random erasing of the
  normalised image with ``(0.4914, 0.4822, 0.4465)`` (p 0.5 by default, 0 by default with
  colour jitter; 0 switches it off).
* ``"cmnas"`` (cmnas.md §7.3): zero padding of 10 px, random crop, horizontal flip,
  normalisation, random erasing of the normalised image with ``(0.485, 0.456, 0.406)`` (p 0.5).
* ``"none"``: normalisation only.

Reproducibility: :func:`augment_image` (and the thread-safe :class:`Augmenter` used by the tf.data
pipelines) gives the Compose fresh random generators derived from a per-element seed (e.g.
``(seed, epoch, step, position)``) before each call, so the result for one element never depends
on which thread ran it or on what was augmented before. (``Compose(seed=...)`` is not used: it
seeds every transform with the *same* seed, which correlates their draws.)
"""
import copy
import dataclasses
import random
import threading

import albumentations as A
import cv2
import numpy as np

from reid_tf.data.images import check_image_size
from reid_tf.runtime.choices import AUGMENTATION_RECIPES

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_MEAN_COLOUR",
    "RECIPES",
    "AugmentationSettings",
    "RandomErasingUint8",
    "RandomGrayscalePatchReplacement",
    "RandomErasingNormalized",
    "sample_rectangle_flipreid",
    "sample_rectangle_inclusive",
    "build_augmentation",
    "element_random_state",
    "augment_image",
    "Augmenter",
    "normalize_image",
    "denormalize_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# flipreid.md: the "ImageNet mean colour" on a 0–255 scale, RGB.
IMAGENET_MEAN_COLOUR = (123.68, 116.779, 103.939)
# msinet.md §9.2: the erasing fill of the normalised tensor (CIFAR means, as in the reference).
MSINET_ERASING_FILL = (0.4914, 0.4822, 0.4465)
# cmnas.md §7.3: the erasing fill of the normalised tensor (the raw ImageNet means).
CMNAS_ERASING_FILL = (0.485, 0.456, 0.406)

RECIPES = AUGMENTATION_RECIPES

_ERASING_AREA_RANGE = (0.02, 0.4)
_ERASING_MIN_ASPECT = 0.3
_ERASING_ATTEMPTS = 100


def _probability(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"Augmentation option {name} must be a probability in [0, 1], "
                         f"got {value!r}.")
    return float(value)


def _check_rectangle_options(area_range, min_aspect_ratio, max_attempts):
    low, high = area_range
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"area_range must satisfy 0 < low <= high < 1, got {area_range!r}.")
    if not 0.0 < min_aspect_ratio <= 1.0:
        raise ValueError(f"min_aspect_ratio must be in (0, 1], got {min_aspect_ratio!r}.")
    if int(max_attempts) < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}.")
    return (float(low), float(high)), float(min_aspect_ratio), int(max_attempts)


def sample_rectangle_flipreid(generator, height, width, area_range=_ERASING_AREA_RANGE,
                              min_aspect_ratio=_ERASING_MIN_ASPECT,
                              max_attempts=_ERASING_ATTEMPTS):
    """FlipReID patch sampling (flipreid.md §4.6 #4/#5) with a ``numpy.random.Generator``.

    Per attempt: area ``U(low, high)·H·W``, aspect ``U(r, 1/r)``, ``h = round(sqrt(area·aspect))``,
    ``w = round(sqrt(area/aspect))``; accepted only if ``w < W`` and ``h < H``; the top-left
    corner is ``y ~ randint[0, H−h)``, ``x ~ randint[0, W−w)`` (exclusive). Returns
    ``(top, left, h, w)`` or ``None`` after ``max_attempts`` rejections.
    """
    image_area = height * width
    for _ in range(max_attempts):
        target_area = generator.uniform(area_range[0], area_range[1]) * image_area
        aspect_ratio = generator.uniform(min_aspect_ratio, 1.0 / min_aspect_ratio)
        patch_height = int(np.round(np.sqrt(target_area * aspect_ratio)))
        patch_width = int(np.round(np.sqrt(target_area / aspect_ratio)))
        if patch_width < width and patch_height < height:
            top = int(generator.integers(0, height - patch_height))
            left = int(generator.integers(0, width - patch_width))
            return top, left, patch_height, patch_width
    return None


def sample_rectangle_inclusive(py_random, height, width, area_range=_ERASING_AREA_RANGE,
                               min_aspect_ratio=_ERASING_MIN_ASPECT,
                               max_attempts=_ERASING_ATTEMPTS):
    """MSINet / CM-NAS random-erasing sampling with a ``random.Random`` (msinet.md §9.2).

    Same area/aspect/size rules as :func:`sample_rectangle_flipreid`, but the top-left corner is
    ``top ∈ [0, H−h]``, ``left ∈ [0, W−w]`` with both bounds inclusive (``random.randint``).
    Returns ``(top, left, h, w)`` or ``None``.
    """
    image_area = height * width
    for _ in range(max_attempts):
        target_area = py_random.uniform(area_range[0], area_range[1]) * image_area
        aspect_ratio = py_random.uniform(min_aspect_ratio, 1.0 / min_aspect_ratio)
        patch_height = int(round(np.sqrt(target_area * aspect_ratio)))
        patch_width = int(round(np.sqrt(target_area / aspect_ratio)))
        if patch_width < width and patch_height < height:
            top = py_random.randint(0, height - patch_height)
            left = py_random.randint(0, width - patch_width)
            return top, left, patch_height, patch_width
    return None


class _RectangleTransform(A.ImageOnlyTransform):
    """Shared parameter handling of the rectangle transforms below."""

    def __init__(self, area_range=_ERASING_AREA_RANGE, min_aspect_ratio=_ERASING_MIN_ASPECT,
                 max_attempts=_ERASING_ATTEMPTS, p=0.5):
        super().__init__(p=_probability("p", p))
        self.area_range, self.min_aspect_ratio, self.max_attempts = _check_rectangle_options(
            area_range, min_aspect_ratio, max_attempts)

    def get_transform_init_args_names(self):
        return ("area_range", "min_aspect_ratio", "max_attempts")

    def get_params_dependent_on_data(self, params, data):
        height, width = params["shape"][:2]
        return {"rectangle": self._sample(height, width)}

    def _sample(self, height, width):
        return sample_rectangle_flipreid(self.random_generator, height, width, self.area_range,
                                         self.min_aspect_ratio, self.max_attempts)


class RandomGrayscalePatchReplacement(_RectangleTransform):
    """Replace one random rectangle by its grey version (flipreid.md §4.6 #4).

    The patch is converted with ``cv2.COLOR_RGB2GRAY`` (0.299 R + 0.587 G + 0.114 B) and written
    into all three channels of a copy of the image. Expects an RGB ``uint8`` image.
    """

    def apply(self, img, rectangle=None, **params):
        if rectangle is None:
            return img
        top, left, height, width = rectangle
        image = img.copy()
        patch = np.ascontiguousarray(image[top:top + height, left:left + width])
        grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
        image[top:top + height, left:left + width] = grey[..., None]
        return image


class RandomErasingUint8(_RectangleTransform):
    """Fill one random rectangle with a constant colour (flipreid.md §4.6 #5).

    ``fill`` defaults to the ImageNet mean colour; assigned into a ``uint8`` image it is truncated
    to ``(123, 116, 103)`` as numpy does in the reference.
    """

    def __init__(self, fill=IMAGENET_MEAN_COLOUR, area_range=_ERASING_AREA_RANGE,
                 min_aspect_ratio=_ERASING_MIN_ASPECT, max_attempts=_ERASING_ATTEMPTS, p=0.5):
        super().__init__(area_range, min_aspect_ratio, max_attempts, p)
        self.fill_colour = tuple(float(value) for value in fill)

    def get_transform_init_args_names(self):
        return ("fill_colour",) + super().get_transform_init_args_names()

    def apply(self, img, rectangle=None, **params):
        if rectangle is None:
            return img
        top, left, height, width = rectangle
        image = img.copy()
        image[top:top + height, left:left + width] = np.asarray(self.fill_colour).astype(
            image.dtype)
        return image


class RandomErasingNormalized(_RectangleTransform):
    """Random erasing of an already-normalised float image (msinet.md §9.2, cmnas.md §7.3).

    Channel ``c`` of the accepted rectangle is set to ``fill[c]``; the corner bounds are inclusive
    and the draws come from the transform's ``random.Random`` as in the reference.
    """

    def __init__(self, fill=MSINET_ERASING_FILL, area_range=_ERASING_AREA_RANGE,
                 min_aspect_ratio=_ERASING_MIN_ASPECT, max_attempts=_ERASING_ATTEMPTS, p=0.5):
        super().__init__(area_range, min_aspect_ratio, max_attempts, p)
        self.fill_colour = tuple(float(value) for value in fill)

    def get_transform_init_args_names(self):
        return ("fill_colour",) + super().get_transform_init_args_names()

    def _sample(self, height, width):
        return sample_rectangle_inclusive(self.py_random, height, width, self.area_range,
                                          self.min_aspect_ratio, self.max_attempts)

    def apply(self, img, rectangle=None, **params):
        if rectangle is None:
            return img
        top, left, height, width = rectangle
        image = img.copy()
        image[top:top + height, left:left + width] = np.asarray(self.fill_colour,
                                                                dtype=image.dtype)
        return image


def _normalize():
    return A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0, p=1.0)


_RECIPE_OPTIONS = {
    "flipreid": {"horizontal_flip_probability": 0.5, "patch_replacement_probability": 0.8,
                 "random_erasing_probability": 0.8, "padding_ratio": 0.05, "padding_length": 0,
                 "normalize": True},
    "msinet": {"horizontal_flip_probability": 0.5, "random_erasing_probability": None,
               "color_jitter": False, "padding": 10},
    "cmnas": {"horizontal_flip_probability": 0.5, "random_erasing_probability": 0.5,
              "padding": 10},
    "none": {},
}


@dataclasses.dataclass(frozen=True)
class AugmentationSettings:
    """A training augmentation: a recipe, the image size and the recipe's options
    (:func:`build_augmentation`, which :meth:`build` calls)."""

    recipe: str = "flipreid"
    height: int = 384
    width: int = 128
    options: dict = dataclasses.field(default_factory=dict)

    def build(self):
        return build_augmentation(self.recipe, self.height, self.width, **self.options)


def build_augmentation(recipe, height, width, **options):
    """The albumentations ``Compose`` of a training recipe (see the module doc).

    Args:
        recipe: ``"flipreid"``, ``"msinet"``, ``"cmnas"`` or ``"none"``.
        height, width: the training image size (input and output size).
        **options: per recipe (defaults in brackets):
            ``flipreid``: ``horizontal_flip_probability`` (0.5),
            ``patch_replacement_probability`` (0.8), ``random_erasing_probability`` (0.8),
            ``padding_ratio`` (0.05), ``padding_length`` (0), ``normalize`` (True; False keeps
            the reference's ``uint8`` output, for inspection only);
            ``msinet``: ``horizontal_flip_probability`` (0.5), ``color_jitter`` (False; True
            for cross-domain runs), ``random_erasing_probability`` (0.5 without colour
            jitter, 0 with it, as the reference does for single/cross-domain runs),
            ``padding`` (10);
            ``cmnas``: ``horizontal_flip_probability`` (0.5), ``random_erasing_probability``
            (0.5), ``padding`` (10);
            ``none``: no options.

    Returns:
        ``albumentations.Compose`` mapping ``image=uint8 (H, W, 3)`` to a normalised ``float32``
        ``(H, W, 3)`` image (its attributes ``reid_recipe`` and ``reid_image_size`` record the
        recipe and size). Apply it with :func:`augment_image` or :class:`Augmenter` for seeded,
        reproducible results.
    """
    if recipe not in _RECIPE_OPTIONS:
        raise ValueError(f"Unknown augmentation recipe {recipe!r}; expected one of {RECIPES}.")
    height, width = check_image_size(height, width)
    unknown = sorted(set(options) - set(_RECIPE_OPTIONS[recipe]))
    if unknown:
        allowed = ", ".join(sorted(_RECIPE_OPTIONS[recipe])) or "none"
        raise ValueError(f"Augmentation recipe {recipe!r} has no option(s) {unknown}; "
                         f"its options are: {allowed}.")
    settings = dict(_RECIPE_OPTIONS[recipe], **options)
    if recipe == "msinet" and settings["random_erasing_probability"] is None:
        # msinet.md §9.2: single-domain runs erase (p 0.5), cross-domain runs jitter instead.
        settings["random_erasing_probability"] = 0.0 if settings["color_jitter"] else 0.5
    for name in ("horizontal_flip_probability", "patch_replacement_probability",
                 "random_erasing_probability"):
        if name in settings:
            settings[name] = _probability(name, settings[name])
    for name in ("padding", "padding_length"):
        if name in settings and (isinstance(settings[name], bool)
                                 or not isinstance(settings[name], (int, np.integer))
                                 or settings[name] < 0):
            raise ValueError(f"Augmentation option {name} must be a non-negative integer, "
                             f"got {settings[name]!r}.")

    transforms = []
    if recipe == "flipreid":
        ratio = float(settings["padding_ratio"])
        if ratio < 0:
            raise ValueError(f"Augmentation option padding_ratio must be >= 0, got {ratio!r}.")
        length = int(settings["padding_length"])
        if length > 0 or ratio > 0:
            transforms.append(A.PadIfNeeded(
                min_height=height + int(max(length, height * ratio)),
                min_width=width + int(max(length, width * ratio)),
                position="center", border_mode=cv2.BORDER_CONSTANT, fill=IMAGENET_MEAN_COLOUR,
                p=1.0))
            transforms.append(A.RandomCrop(height=height, width=width, p=1.0))
        transforms.append(A.HorizontalFlip(p=settings["horizontal_flip_probability"]))
        transforms.append(RandomGrayscalePatchReplacement(
            p=settings["patch_replacement_probability"]))
        transforms.append(RandomErasingUint8(fill=IMAGENET_MEAN_COLOUR,
                                             p=settings["random_erasing_probability"]))
        if settings["normalize"]:
            transforms.append(_normalize())
    elif recipe == "msinet":
        transforms.append(A.HorizontalFlip(p=settings["horizontal_flip_probability"]))
        transforms.extend(_zero_pad_and_crop(height, width, settings["padding"]))
        if settings["color_jitter"]:
            transforms.append(A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.3,
                                            hue=0.0, p=1.0))
        transforms.append(_normalize())
        if settings["random_erasing_probability"] > 0:
            transforms.append(RandomErasingNormalized(
                fill=MSINET_ERASING_FILL, p=settings["random_erasing_probability"]))
    elif recipe == "cmnas":
        transforms.extend(_zero_pad_and_crop(height, width, settings["padding"]))
        transforms.append(A.HorizontalFlip(p=settings["horizontal_flip_probability"]))
        transforms.append(_normalize())
        if settings["random_erasing_probability"] > 0:
            transforms.append(RandomErasingNormalized(
                fill=CMNAS_ERASING_FILL, p=settings["random_erasing_probability"]))
    else:
        transforms.append(_normalize())
    compose = A.Compose(transforms, p=1.0)
    compose.reid_recipe = recipe
    compose.reid_image_size = (height, width)
    return compose


def _zero_pad_and_crop(height, width, padding):
    if padding == 0:
        return []
    return [A.Pad(padding=int(padding), fill=0, border_mode=cv2.BORDER_CONSTANT, p=1.0),
            A.RandomCrop(height=height, width=width, p=1.0)]


def element_random_state(seed):
    """``(numpy Generator, random.Random)`` derived from ``seed``: an int or a tuple of ints.

    Uses ``numpy.random.SeedSequence(seed)`` with two spawn keys, so the two generators are
    independent and a tuple like ``(seed, epoch, step, position)`` gives well-mixed streams.
    """
    entropy = [int(value) for value in np.atleast_1d(np.asarray(seed, dtype=object))]
    if any(value < 0 for value in entropy):
        raise ValueError(f"Augmentation seeds must be non-negative integers, got {seed!r}.")
    generator = np.random.Generator(np.random.PCG64(
        np.random.SeedSequence(entropy, spawn_key=(0,))))
    words = np.random.SeedSequence(entropy, spawn_key=(1,)).generate_state(4, np.uint32)
    py_random = random.Random(int.from_bytes(words.tobytes(), "little"))
    return generator, py_random


def augment_image(augmentation, image, seed):
    """Apply ``augmentation`` to ``image`` with random generators derived from ``seed``.

    The result is a pure function of ``(augmentation, image, seed)``. Not thread-safe for one
    Compose object shared between threads: use :class:`Augmenter` there.
    """
    generator, py_random = element_random_state(seed)
    augmentation.set_random_state(generator, py_random)
    return augmentation(image=image)["image"]


class Augmenter:
    """Thread-safe, seeded application of an albumentations ``Compose``.

    Each thread gets its own deep copy of the Compose (albumentations transforms keep per-call
    state), and every call reseeds it from the per-element seed, so results do not depend on
    thread scheduling. ``augmentation=None`` or a recipe name builds the recipe with defaults
    (``height``/``width`` needed then).
    """

    def __init__(self, augmentation=None, height=None, width=None):
        if augmentation is None:
            augmentation = "none"
        if isinstance(augmentation, str):
            if height is None or width is None:
                raise ValueError("Augmenter: give height and width with a recipe name.")
            augmentation = build_augmentation(augmentation, height, width)
        if not callable(augmentation) or not hasattr(augmentation, "set_random_state"):
            raise TypeError(f"Augmenter needs an albumentations Compose (see "
                            f"build_augmentation), got {type(augmentation).__name__}.")
        self.augmentation = augmentation
        self._local = threading.local()
        self._lock = threading.Lock()

    def _thread_compose(self):
        compose = getattr(self._local, "compose", None)
        if compose is None:
            with self._lock:
                compose = copy.deepcopy(self.augmentation)
            self._local.compose = compose
        return compose

    def __call__(self, image, seed):
        """Augment one ``uint8`` image with the per-element ``seed`` (int or tuple of ints)."""
        result = augment_image(self._thread_compose(), image, seed)
        if result.dtype != np.float32:
            raise ValueError(
                f"The augmentation returned a {result.dtype} image; training pipelines need a "
                f"normalised float32 image (build it with build_augmentation(..., normalize=True)"
                f" or end it with albumentations.Normalize).")
        return result


_NORMALIZE = _normalize()  # stateless: Normalize.apply only reads its constants


def normalize_image(image):
    """ImageNet-normalise an RGB ``uint8`` image to ``float32`` (no augmentation).

    Uses the same ``albumentations.Normalize`` as the recipes, so the numbers are identical.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise TypeError(f"normalize_image expects a uint8 (H, W, 3) image, got dtype "
                        f"{image.dtype} and shape {image.shape}.")
    return np.asarray(_NORMALIZE.apply(image), dtype=np.float32)


def denormalize_image(image):
    """Invert :func:`normalize_image`: a ``float32`` image on the 0–255 scale (not clipped)."""
    image = np.asarray(image, dtype=np.float32)
    return image * (np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0) \
        + np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
