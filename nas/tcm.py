"""TCM (Twins Contrastive Mechanism): the twins data split and the two cluster memories.

Follows ``/work/shared/spec/msinet.md`` §6.1 and §6.2.

* :func:`separate_trainval` splits the training table per identity (``q = P // 5``): identities
  ``[0, q)`` train only, ``[q, 3q)`` "twins" split by images (the first ``n // 2`` images in
  table order to train, the rest to valid), ``[3q, P)`` valid only. Train labels are the pids
  ``0..3q-1``, valid labels ``pid - q`` in ``0..P-q-1``.
* :class:`ClusterMemory` is the non-hard cluster memory: zero-initialised slots ``F (K, D)``,
  loss ``CE(x̂ Fᵀ / τ)`` with the gradient into ``x̂`` only, and the sequential momentum update
  ``F[y] ← m F[y] + (1 − m) x̂; F[y] ← F[y] / ‖F[y]‖`` run after the gradient.
* :class:`EndlessBatches` is the endless valid loader: the PK sampler's epochs one after the
  other (a fresh shuffle at every restart), resumable from a JSON state.
"""
import dataclasses
import json

import numpy as np
import pandas as pd
import tensorflow as tf

from reid_tf.data.pipeline import make_label_map, make_training_dataset

MEMORY_TEMPERATURE = 0.05
MEMORY_MOMENTUM = 0.2
NORMALIZE_EPSILON = 1e-12
LABEL_COLUMN = "label"


# --------------------------------------------------------------------------------------------
# The twins split (§6.1)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TwinsSplit:
    """The result of :func:`separate_trainval`.

    Attributes:
      train, valid: the two tables (dataset columns plus ``pid``, the contiguous training label
        of the whole set, and ``label``, the label inside the subset), each in table order.
      train_label_map, valid_label_map: raw ``identity_ID`` → subset label, for the pipeline.
      num_train_classes: ``3q`` (the train memory's slots).
      num_valid_classes: ``P − q`` (the valid memory's slots).
      q: ``P // 5``.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    train_label_map: dict
    valid_label_map: dict
    num_train_classes: int
    num_valid_classes: int
    q: int


def separate_trainval(train_dataframe, label_map=None, source="training set"):
    """Split a training table into the TCM train and valid subsets (msinet.md §6.1).

    Args:
      train_dataframe: the training rows (columns ``identity_ID`` and the dataset columns), in
        dataset order (the loaders sort file names, so "the first half" is reproducible).
      label_map: raw identity → contiguous pid ``0..P-1``; default
        :func:`reid_tf.data.pipeline.make_label_map` (sorted unique identities).
      source: what to name in error messages (e.g. the dataset name).

    Returns:
      :class:`TwinsSplit`. Identities with ``pid < q`` go to train with all their images,
      identities with ``pid >= 3q`` to valid with all their images (label ``pid - q``), and for
      ``q <= pid < 3q`` the first ``n // 2`` images of the identity go to train (label ``pid``)
      and the remaining ``n - n // 2`` to valid (label ``pid - q``).

    Raises:
      ValueError: fewer than 5 identities (``q = 0``), or a label map that does not give the
        identities the contiguous labels ``0..P-1``.
    """
    if not isinstance(train_dataframe, pd.DataFrame) or "identity_ID" not in train_dataframe:
        raise ValueError(f"{source}: separate_trainval needs a DataFrame with an identity_ID "
                         "column.")
    table = train_dataframe.reset_index(drop=True)
    if label_map is None:
        label_map = make_label_map(table)
    identities = table["identity_ID"].to_numpy()
    try:
        pids = np.asarray([label_map[identity.item() if hasattr(identity, "item") else identity]
                           for identity in identities], dtype=np.int64)
    except KeyError as error:
        raise ValueError(f"{source}: label_map has no label for identity {error.args[0]!r}.") \
            from None
    num_pids = len(np.unique(pids))
    if len(pids) == 0 or pids.min() != 0 or pids.max() != num_pids - 1:
        raise ValueError(f"{source}: the training labels must be the contiguous pids "
                         f"0..{num_pids - 1}, got the range {pids.min() if len(pids) else None}.."
                         f"{pids.max() if len(pids) else None}.")
    q = num_pids // 5
    if q < 1:
        raise ValueError(f"{source}: the twins split needs at least 5 training identities "
                         f"(q = P // 5 >= 1), got P = {num_pids}.")
    # Position of every row among the rows of its identity, in table order.
    rank_in_identity = table.groupby(pids, sort=False).cumcount().to_numpy()
    count_of_identity = np.bincount(pids, minlength=num_pids)[pids]
    to_train = (pids < q) | ((pids < 3 * q) & (rank_in_identity < count_of_identity // 2))
    to_valid = (pids >= 3 * q) | ((pids >= q) & (rank_in_identity >= count_of_identity // 2))
    train = table[to_train].copy()
    train["pid"] = pids[to_train]
    train[LABEL_COLUMN] = pids[to_train]
    valid = table[to_valid].copy()
    valid["pid"] = pids[to_valid]
    valid[LABEL_COLUMN] = pids[to_valid] - q
    train_label_map = _subset_label_map(train)
    valid_label_map = _subset_label_map(valid)
    return TwinsSplit(train=train.reset_index(drop=True), valid=valid.reset_index(drop=True),
                      train_label_map=train_label_map, valid_label_map=valid_label_map,
                      num_train_classes=3 * q, num_valid_classes=num_pids - q, q=q)


def _subset_label_map(subset):
    pairs = subset[["identity_ID", LABEL_COLUMN]].drop_duplicates()
    return {(identity.item() if hasattr(identity, "item") else identity): int(label)
            for identity, label in zip(pairs["identity_ID"].to_numpy(),
                                       pairs[LABEL_COLUMN].to_numpy())}


# --------------------------------------------------------------------------------------------
# ClusterMemory (§6.2)
# --------------------------------------------------------------------------------------------
def l2_normalize_rows(features):
    """``x / max(‖x‖₂, 1e-12)`` row-wise (PyTorch ``F.normalize(x, dim=1)``)."""
    norms = tf.norm(features, axis=1, keepdims=True)
    return features / tf.maximum(norms, NORMALIZE_EPSILON)


class ClusterMemory(tf.Module):
    """Memory of ``num_slots`` class centres (non-hard variant), as a checkpointable module.

    ``loss(x, y)`` returns ``(loss, x̂)``; call ``update(x̂, y)`` after taking the gradient of
    the loss (the reference updates the memory in the backward pass, with the slots as they
    were in the forward pass).

    Under a ``tf.distribute`` strategy (built inside its scope) every replica holds its own copy
    of the slots (an on-read variable; checkpoints store the first replica's copy): the loss
    reads the replica's copy, and ``update`` — called on every replica with the same
    all-gathered features and labels in global batch order — applies the same sequential
    update to each copy, so the copies stay identical.
    """

    def __init__(self, num_features, num_slots, temperature=MEMORY_TEMPERATURE,
                 momentum=MEMORY_MOMENTUM, name="cluster_memory"):
        super().__init__(name=name)
        for argument, value in (("num_features", num_features), ("num_slots", num_slots)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ClusterMemory {name}: {argument} must be a positive integer, "
                                 f"got {value!r}.")
        if not temperature > 0:
            raise ValueError(f"ClusterMemory {name}: temperature must be > 0, got {temperature}.")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"ClusterMemory {name}: momentum must be in [0, 1], got {momentum}.")
        self.num_features = int(num_features)
        self.num_slots = int(num_slots)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.features = tf.Variable(tf.zeros((self.num_slots, self.num_features), tf.float32),
                                    trainable=False, name="features",
                                    synchronization=tf.VariableSynchronization.ON_READ,
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def loss(self, features, labels):
        """Mean cross-entropy of ``x̂ Fᵀ / τ``; returns ``(loss, x̂)``.

        The slots are read as a constant (``tf.stop_gradient``): the gradient flows into the
        features only. On a fresh (zero) memory every logit is 0 and the loss is ``ln K``.
        """
        features = tf.cast(features, tf.float32)
        normalized = l2_normalize_rows(features)
        logits = tf.matmul(normalized, tf.stop_gradient(self.features.read_value()),
                           transpose_b=True) / self.temperature
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=logits)
        return tf.reduce_mean(losses), normalized

    def __call__(self, features, labels):
        return self.loss(features, labels)

    def update(self, normalized_features, labels):
        """Sequential momentum update, sample by sample in batch order (not vectorised).

        ``F[y_i] ← m F[y_i] + (1 − m) x̂_i`` then ``F[y_i] ← F[y_i] / ‖F[y_i]‖₂`` for
        ``i = 0..B−1``; ``normalized_features`` are used as constants. The loop runs on the
        slots as a tensor and the result is assigned once (on-read variables have no scatter
        updates); each sample sees the slots updated by the samples before it.
        """
        normalized = tf.stop_gradient(tf.cast(normalized_features, tf.float32))
        labels = tf.cast(labels, tf.int32)
        momentum = tf.constant(self.momentum, tf.float32)

        def body(index, slots):
            label = labels[index]
            row = momentum * tf.gather(slots, label) + (1.0 - momentum) * normalized[index]
            row = row / tf.norm(row)
            slots = tf.tensor_scatter_nd_update(slots, tf.reshape(label, (1, 1)),
                                                row[tf.newaxis])
            return index + 1, slots

        _, slots = tf.while_loop(lambda index, _: index < tf.shape(normalized)[0], body,
                                 (tf.constant(0, tf.int32), tf.convert_to_tensor(self.features)))
        self.features.assign(slots)
        return self.features


# --------------------------------------------------------------------------------------------
# The endless valid loader
# --------------------------------------------------------------------------------------------
class EndlessBatches:
    """Batches of one PK sampler's epochs, one epoch after the other, without end.

    When an epoch is exhausted the next one starts with a fresh sampler shuffle (the sampler's
    next epoch). The state (the sampler state at the start of the current epoch, the epoch
    index and the number of batches already taken from it) is a JSON text: restoring it makes
    the following batches, their augmentation included, those of the uninterrupted stream.
    """

    def __init__(self, dataframe, sampler, height, width, augmentation, label_map, seed,
                 workers=None, cache_images=False, resize="opencv_bilinear"):
        self.dataframe = dataframe.reset_index(drop=True)
        self.sampler = sampler
        self.height, self.width = height, width
        self.augmentation = augmentation
        self.label_map = label_map
        self.seed = seed
        self.workers = workers
        self.cache_images = cache_images
        self.resize = resize
        self.epoch = 0
        self.offset = 0
        self._iterator = None

    def _open(self):
        if self.offset >= self.sampler.num_batches(self.epoch):
            self.epoch += 1
            self.offset = 0
        dataset = make_training_dataset(
            self.dataframe, self.sampler, self.height, self.width, self.augmentation,
            self.label_map, self.seed, epoch_index=self.epoch, start_step=self.offset,
            num_parallel_calls=self.workers, cache_images=self.cache_images, resize=self.resize)
        self._iterator = iter(dataset)

    def next(self):
        """The next ``(images, labels)`` batch."""
        for _ in range(2):
            if self._iterator is None:
                self._open()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.offset = self.sampler.num_batches(self.epoch)
                continue
            self.offset += 1
            return batch
        raise RuntimeError("The valid sampler produced an empty epoch; it needs at least P "
                           "identities (lower --identity_num_per_batch).")

    __next__ = next

    def __iter__(self):
        return self

    def get_state(self):
        """JSON text of the stream position (see the class docstring)."""
        return json.dumps({"sampler": self.sampler.get_state(self.epoch), "epoch": self.epoch,
                           "offset": self.offset})

    def set_state(self, text):
        """Continue from a state of :meth:`get_state` (same sampler arguments and table)."""
        state = json.loads(text)
        self.sampler.set_state(state["sampler"])
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        self._iterator = None
