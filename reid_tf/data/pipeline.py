"""tf.data input pipelines for training (one epoch in sampler order) and testing (table order).

Training: ``make_training_dataset`` turns the batches of a sampler
(:mod:`reid_tf.data.sampler`) into a ``tf.data.Dataset`` of ``(images, labels)``:
``images`` ``float32 (B, H, W, 3)`` normalised with the ImageNet mean/std, ``labels`` ``int32
(B,)`` contiguous training labels. Images are read (:func:`reid_tf.data.images.read_image`) and
augmented (:mod:`reid_tf.data.augmentation`) one batch per Python call, several batches in
parallel with a deterministic order; the
augmentation of element ``i`` of step ``s`` in epoch ``e`` depends only on
``(seed, e, s, i)``. A cross-modality sampler gives batches of ``2B`` images: the ``B`` visible
images then the ``B`` infrared images, with ``labels[:B] == labels[B:]``.

Testing: ``make_test_dataset`` yields normalised ``float32`` images in table order, the last
batch partial, optionally mirrored.

Errors while reading an image (missing or corrupt file) surface as a TensorFlow error whose
message contains the :class:`reid_tf.data.images.ImageReadError` text with the file path.
"""
import numpy as np
import pandas as pd
import tensorflow as tf

from reid_tf.data.augmentation import Augmenter, normalize_image
from reid_tf.data.images import ImageCache, check_image_size, read_image
from reid_tf.data.sampler import CrossModalitySampler

__all__ = [
    "make_label_map",
    "make_training_dataset",
    "make_test_dataset",
    "training_epoch_elements",
    "shared_image_cache",
    "clear_image_cache",
]

_SHARED_CACHE = ImageCache()


def shared_image_cache():
    """The process-wide :class:`ImageCache` used by ``cache_images=True``."""
    return _SHARED_CACHE


def clear_image_cache():
    """Empty the process-wide image cache (e.g. after the image files changed)."""
    _SHARED_CACHE.clear()


def _resolve_cache(cache_images):
    if cache_images is None or cache_images is False:
        return None
    if cache_images is True:
        return _SHARED_CACHE
    if isinstance(cache_images, ImageCache):
        return cache_images
    raise TypeError(f"cache_images must be True, False or an ImageCache, got "
                    f"{type(cache_images).__name__}.")


def _check_table(dataframe, columns, what):
    if not isinstance(dataframe, pd.DataFrame):
        raise TypeError(f"{what} needs a pandas DataFrame, got {type(dataframe).__name__}.")
    missing = [column for column in columns if column not in dataframe.columns]
    if missing:
        raise ValueError(f"{what}: the table lacks the column(s) {missing}.")


def make_label_map(train_dataframe):
    """Raw identity → contiguous label: sorted unique ``identity_ID`` values of the train table.

    The same labels as scikit-learn's ``LabelEncoder`` fitted on the column.
    """
    _check_table(train_dataframe, ["identity_ID"], "make_label_map")
    identities = np.unique(train_dataframe["identity_ID"].to_numpy())
    return {identity.item() if hasattr(identity, "item") else identity: label
            for label, identity in enumerate(identities)}


def _label_lookup(dataframe, label_map):
    """``pandas.Series`` identity → label, checked to cover every identity of ``dataframe``."""
    if not isinstance(label_map, dict) or not label_map:
        raise ValueError("label_map must be a non-empty dict raw identity -> label; build it "
                         "with make_label_map(train_dataframe).")
    lookup = pd.Series(label_map)
    if lookup.dtype.kind not in "iu":
        raise ValueError(f"label_map values must be integer labels, got dtype {lookup.dtype}.")
    identities = pd.unique(dataframe["identity_ID"].to_numpy())
    unknown = sorted(np.asarray(identities)[~pd.Index(identities).isin(lookup.index)].tolist())
    if unknown:
        raise ValueError(
            f"label_map has no label for the identities {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''} of the training table; build it with "
            f"make_label_map(train_dataframe) on the same training table.")
    return lookup


def _nonnegative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def training_epoch_elements(dataframe, sampler, label_map, epoch_index=0, start_step=0):
    """The per-image work list of one epoch, in training order.

    Returns a dict of equally long numpy arrays: ``row`` (row position in ``dataframe``),
    ``label`` (``int32``), ``step`` (step index in the epoch) and ``position`` (index in the
    batch), plus ``batch_size`` (images per batch) and ``num_steps`` (batches yielded).
    """
    _check_table(dataframe, ["image_file_path", "identity_ID"], "make_training_dataset")
    epoch_index = _nonnegative_int("epoch_index", epoch_index)
    start_step = _nonnegative_int("start_step", start_step)
    batches = sampler.epoch_batches(epoch_index)
    if start_step > len(batches):
        raise ValueError(f"start_step={start_step} is past the end of epoch {epoch_index}, "
                         f"which has {len(batches)} steps.")
    batches = batches[start_step:]
    cross_modality = isinstance(sampler, CrossModalitySampler)
    rows = []
    for batch in batches:
        if cross_modality:
            visible, infrared = batch
            rows.append(np.concatenate([visible, infrared]))
        else:
            rows.append(np.asarray(batch))
    batch_size = sampler.batch_size * (2 if cross_modality else 1)
    num_steps = len(rows)
    rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    out_of_range = rows[(rows < 0) | (rows >= len(dataframe))]
    if len(out_of_range):
        raise ValueError(
            f"The sampler yields row {int(out_of_range[0])}, but the training table has "
            f"{len(dataframe)} rows; build the sampler on this table (row positions, e.g. "
            f"with from_dataframe).")
    lookup = _label_lookup(dataframe, label_map)
    identities = dataframe["identity_ID"].to_numpy()[rows]
    return {
        "row": rows,
        "label": lookup.reindex(identities).to_numpy().astype(np.int32),
        "step": np.repeat(np.arange(start_step, start_step + num_steps, dtype=np.int64),
                          batch_size),
        "position": np.tile(np.arange(batch_size, dtype=np.int64), num_steps),
        "batch_size": batch_size,
        "num_steps": num_steps,
    }


def _load_function(height, width, cache, resize):
    """``path -> uint8 (height, width, 3)`` image, through ``cache`` when one is given."""
    def load(path):
        if cache is None:
            return read_image(path, height, width, resize)
        return cache.get(path, height, width, resize)

    return load


def make_training_dataset(dataframe, sampler, height, width, augmentation, label_map, seed,
                          epoch_index=0, start_step=0, num_parallel_calls=None,
                          cache_images=False, prefetch=2, resize="opencv_bilinear"):
    """One training epoch as a ``tf.data.Dataset`` of ``(images, labels)``.

    Args:
        dataframe: the training table (columns ``image_file_path``, ``identity_ID``); the
            sampler's indices are row positions in it.
        sampler: a :class:`~reid_tf.data.sampler.PKSampler` or
            :class:`~reid_tf.data.sampler.CrossModalitySampler` built on the same rows.
        height, width: image size.
        augmentation: an albumentations ``Compose`` from
            :func:`~reid_tf.data.augmentation.build_augmentation`, a recipe name, or ``None``
            (normalisation only). It must return normalised ``float32`` images.
        label_map: raw identity → label (:func:`make_label_map`).
        seed: non-negative int; element ``i`` of step ``s`` of epoch ``e`` is augmented with the
            seed ``(seed, e, s, i)``.
        epoch_index: which epoch of the sampler to produce.
        start_step: skip the first ``start_step`` batches (resuming mid-epoch: the remaining
            batches, their augmentation included, are exactly those of an uninterrupted run).
        num_parallel_calls: batches read and augmented in parallel (default
            ``tf.data.AUTOTUNE``); each batch is one Python call that reads and augments its
            images in order.
        cache_images: ``True`` keeps decoded, resized ``uint8`` images in the process-wide
            cache (:func:`shared_image_cache`) so later epochs only augment; an
            :class:`~reid_tf.data.images.ImageCache` uses that cache; ``False`` reads every time.
        prefetch: batches to prefetch (``tf.data.AUTOTUNE`` allowed, 0 for none).
        resize: how images are resized (:func:`reid_tf.data.images.read_image`).

    Returns:
        ``tf.data.Dataset`` yielding ``float32 (B, H, W, 3)`` images and ``int32 (B,)`` labels
        (``2B`` for a cross-modality sampler: visible first, then infrared), one element per
        remaining batch of the epoch in sampler order.
    """
    height, width = check_image_size(height, width)
    seed = _nonnegative_int("seed", seed)
    epoch_index = _nonnegative_int("epoch_index", epoch_index)
    elements = training_epoch_elements(dataframe, sampler, label_map, epoch_index, start_step)
    paths = dataframe["image_file_path"].astype(str).tolist()
    load = _load_function(height, width, _resolve_cache(cache_images), resize)
    augmenter = Augmenter(augmentation, height, width)

    batch_size = elements["batch_size"]

    def load_and_augment_batch(rows, steps, positions):
        # One Python call per batch (not per image): the per-call cost of tf.py_function
        # (GIL hand-over, tensor conversion, scheduling) is paid once per batch. Every image
        # keeps its own seed (seed, epoch, step, position), so the result is the same as
        # augmenting the images one by one, whichever thread runs the batch.
        images = np.empty((len(rows), height, width, 3), np.float32)
        for index, (row, step, position) in enumerate(zip(rows.numpy().tolist(),
                                                          steps.numpy().tolist(),
                                                          positions.numpy().tolist())):
            images[index] = augmenter(load(paths[row]), (seed, epoch_index, step, position))
        return images

    def map_batch(rows, steps, positions, labels):
        images = tf.py_function(load_and_augment_batch, [rows, steps, positions],
                                Tout=tf.float32)
        images.set_shape((batch_size, height, width, 3))
        return images, labels

    dataset = tf.data.Dataset.from_tensor_slices(
        (elements["row"], elements["step"], elements["position"], elements["label"]))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(map_batch, num_parallel_calls=_parallel_calls(num_parallel_calls),
                          deterministic=True)
    return _prefetch(dataset, prefetch)


def make_test_dataset(dataframe, height, width, batch_size, flip=False, num_parallel_calls=None,
                      cache_images=False, prefetch=2, resize="opencv_bilinear"):
    """Normalised ``float32 (b, H, W, 3)`` image batches of ``dataframe`` in row order.

    ``ceil(N / batch_size)`` batches, the last one partial. ``flip=True`` mirrors every image
    horizontally (as ``cv2.flip(image, 1)``) before normalisation. No augmentation, no labels.
    ``cache_images`` and ``resize`` as in :func:`make_training_dataset`.
    """
    _check_table(dataframe, ["image_file_path"], "make_test_dataset")
    height, width = check_image_size(height, width)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    paths = dataframe["image_file_path"].astype(str).tolist()
    load = _load_function(height, width, _resolve_cache(cache_images), resize)
    flip = bool(flip)

    def load_and_normalize_batch(rows):
        # One Python call per batch, as in make_training_dataset.
        rows = rows.numpy().tolist()
        images = np.empty((len(rows), height, width, 3), np.float32)
        for index, row in enumerate(rows):
            image = load(paths[row])
            if flip:
                image = image[:, ::-1]
            images[index] = normalize_image(np.ascontiguousarray(image))
        return images

    def map_batch(rows):
        images = tf.py_function(load_and_normalize_batch, [rows], Tout=tf.float32)
        images.set_shape((None, height, width, 3))
        return images

    dataset = tf.data.Dataset.range(len(paths))
    dataset = dataset.batch(int(batch_size), drop_remainder=False)
    dataset = dataset.map(map_batch, num_parallel_calls=_parallel_calls(num_parallel_calls),
                          deterministic=True)
    return _prefetch(dataset, prefetch)


def _parallel_calls(num_parallel_calls):
    if num_parallel_calls is None:
        return tf.data.AUTOTUNE
    if num_parallel_calls == tf.data.AUTOTUNE:
        return num_parallel_calls
    if isinstance(num_parallel_calls, bool) or not isinstance(num_parallel_calls,
                                                              (int, np.integer)) \
            or num_parallel_calls <= 0:
        raise ValueError(f"num_parallel_calls must be a positive integer or "
                         f"tf.data.AUTOTUNE, got {num_parallel_calls!r}.")
    return int(num_parallel_calls)


def _prefetch(dataset, prefetch):
    if prefetch is None or prefetch == 0:
        return dataset
    if prefetch != tf.data.AUTOTUNE and (isinstance(prefetch, bool)
                                         or not isinstance(prefetch, (int, np.integer))
                                         or prefetch < 0):
        raise ValueError(f"prefetch must be a non-negative integer or tf.data.AUTOTUNE, "
                         f"got {prefetch!r}.")
    return dataset.prefetch(prefetch)
