"""Identity-balanced ("PK") batch samplers: pure numpy, deterministic from a seed, resumable.

A sampler turns the identity of every training row into batches of **row indices**: ``P``
identities × ``K`` images, contiguous per identity (``[id1 × K, id2 × K, ...]``), no identity twice
in a batch.

* :class:`PKSampler` with ``policy="flipreid"`` (flipreid.md §4.5) or ``policy="msinet"``
  (msinet.md §9.3);
* :class:`CrossModalitySampler` (cmnas.md §7.4): identity-aligned visible and infrared batches.

The batches form one endless stream, made of *blocks* (a FlipReID round, an MSINet epoch, a
CM-NAS epoch) drawn one after the other from one ``numpy.random.Generator`` seeded with ``seed``.
An epoch is ``steps_per_epoch`` consecutive batches of that stream (leftover batches of a block
carry over into the next epoch) or, for the MSINet and CM-NAS policies without
``steps_per_epoch``, exactly one block.

Random access and resuming
--------------------------
``sampler.epoch_batches(epoch_index)`` returns the list of batches of that epoch; it is a pure
function of the constructor arguments and ``epoch_index`` (the sampler remembers the stream
position at every epoch start it has passed, so walking forward is cheap).

``sampler.get_state(epoch_index)`` returns a small JSON-serialisable dict: the generator state at
the start of the block that holds the first batch of ``epoch_index`` and the offset of that batch
in the block. ``sampler.set_state(state)`` on a sampler built with the same identities, ``P``,
``K``, ``steps_per_epoch`` and policy makes ``epoch_batches(state["epoch_index"])`` (and every
later epoch) identical to the saved run without replaying the earlier epochs.

A trainer that checkpoints after ``done_steps`` batches of epoch ``e`` saves
``sampler.get_state(e)`` (the *epoch-start* state) with ``done_steps``; to resume it builds the
sampler again, calls ``set_state(saved)``, regenerates the epoch with ``epoch_batches(e)`` and
skips the first ``done_steps`` batches (``make_training_dataset(..., epoch_index=e,
start_step=done_steps)`` does the skipping).

Row indices
-----------
``identities`` is the identity of each training row. For a plain sequence or array the yielded
indices are positions ``0..n-1`` in it; for a ``pandas.Series`` they are its index labels, so a
Series taken from a DataFrame with the default ``RangeIndex`` (e.g. the ``visible`` rows of a
cross-modality training table) yields positions in that DataFrame. ``from_dataframe`` builds a
sampler from a training table directly.
"""
import copy
import hashlib

import numpy as np
import pandas as pd

from reid_tf.data.left_out import report_left_out
from reid_tf.runtime.choices import SAMPLER_POLICIES

__all__ = ["PKSampler", "CrossModalitySampler", "SAMPLER_POLICIES"]
# flipreid.md §2.1: the reference's --steps_per_epoch default.
FLIPREID_DEFAULT_STEPS_PER_EPOCH = 200
_STATE_VERSION = 1


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"Sampler argument {name} must be a positive integer, got {value!r}.")
    return int(value)


def _seed_value(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Sampler argument seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _rows_and_identities(identities, name):
    """Row labels and identities of a sequence/array/Series of per-row identities."""
    if hasattr(identities, "index") and hasattr(identities, "to_numpy"):
        rows = np.asarray(identities.index.to_numpy())
        values = np.asarray(identities.to_numpy())
        if rows.dtype.kind not in "iu":
            raise ValueError(
                f"The index of the Series given as {name} must hold integer row numbers "
                f"(got dtype {rows.dtype}); pass .reset_index(drop=True) or a plain array."
            )
        rows = rows.astype(np.int64)
    else:
        values = np.asarray(identities)
        rows = np.arange(len(values), dtype=np.int64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one identity per row), "
                         f"got shape {values.shape}.")
    if len(values) == 0:
        raise ValueError(f"{name} is empty: there are no training rows to sample.")
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"The row labels of {name} are not unique.")
    return rows, values


def _groups_in_first_appearance_order(rows, values):
    """Row arrays of every identity, identities ordered by their first row."""
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    by_identity = np.argsort(inverse, kind="stable")  # rows grouped by identity, in row order
    counts = np.bincount(inverse, minlength=len(unique))
    groups = np.split(rows[by_identity], np.cumsum(counts)[:-1])
    return [groups[group_index] for group_index in np.argsort(first, kind="stable")]


def _fingerprint(*arrays):
    """A short, stable checksum of the rows/identities (guards set_state against misuse)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        if array.dtype.kind in "iub":
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        else:
            digest.update("\x1f".join(map(str, array.tolist())).encode("utf-8"))
        digest.update(b"|")
    return digest.hexdigest()[:16]


def _epoch_value(epoch_index):
    if isinstance(epoch_index, bool) or not isinstance(epoch_index, (int, np.integer)) \
            or epoch_index < 0:
        raise ValueError(f"epoch_index must be a non-negative integer, got {epoch_index!r}.")
    return int(epoch_index)


def _generator_from_state(state):
    generator = np.random.Generator(np.random.PCG64())
    generator.bit_generator.state = copy.deepcopy(state)
    return generator


def _plain_state(state):
    """A bit-generator state with numpy scalars replaced by Python values (JSON-safe)."""
    if isinstance(state, dict):
        return {key: _plain_state(value) for key, value in state.items()}
    if isinstance(state, np.generic):
        return state.item()
    return state


class _BatchStream:
    """Common machinery: an endless stream of blocks of batches cut into epochs."""

    policy = None

    def __init__(self, steps_per_epoch, seed):
        self.steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)
        self.seed = _seed_value(seed)
        initial = np.random.Generator(np.random.PCG64(self.seed)).bit_generator.state
        # epoch index -> (state of the generator at the start of the block holding the epoch's
        # first batch, offset of that batch in the block)
        self._epoch_starts = {0: (_plain_state(initial), 0)}
        self._last_epoch = None  # (epoch index, batches) of the latest call, reused once asked again

    # Subclasses implement _make_block(generator) -> non-empty list of batches and _config().
    def _make_block(self, generator):
        raise NotImplementedError

    def _config(self):
        raise NotImplementedError

    @property
    def batch_size(self):
        """Number of row indices in one batch (``P * K``; per modality for cross-modality)."""
        return self.P * self.K

    def epoch_batches(self, epoch_index):
        """The batches of epoch ``epoch_index`` (0-based), as a list in training order.

        Deterministic: the same arguments and ``epoch_index`` always give the same batches,
        whatever was asked before. The index arrays are read-only.
        """
        epoch_index = _epoch_value(epoch_index)
        if self._last_epoch is not None and self._last_epoch[0] == epoch_index:
            return list(self._last_epoch[1])
        known = max(index for index in self._epoch_starts if index <= epoch_index)
        position = self._epoch_starts[known]
        for index in range(known, epoch_index + 1):
            batches, position = self._walk(position)
            self._epoch_starts[index + 1] = position
        for batch in batches:  # shared with the cache: keep them immutable
            for array in (batch if isinstance(batch, tuple) else (batch,)):
                array.setflags(write=False)
        self._last_epoch = (epoch_index, batches)
        return list(batches)

    def num_batches(self, epoch_index):
        """Number of batches of epoch ``epoch_index``."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return len(self.epoch_batches(epoch_index))

    def _walk(self, position):
        """The batches of one epoch from ``position`` and the position after them."""
        block_state, offset = position
        generator = _generator_from_state(block_state)
        block = self._make_block(generator)
        if self.steps_per_epoch is None:  # one epoch = the rest of one block
            return list(block[offset:]), (_plain_state(generator.bit_generator.state), 0)
        batches = []
        while True:
            needed = self.steps_per_epoch - len(batches)
            taken = block[offset:offset + needed]
            batches.extend(taken)
            offset += len(taken)
            if offset >= len(block):
                block_state = _plain_state(generator.bit_generator.state)
                offset = 0
                if len(batches) < self.steps_per_epoch:
                    block = self._make_block(generator)
                    continue
            return batches, (block_state, offset)

    def get_state(self, epoch_index):
        """JSON-serialisable state at the start of epoch ``epoch_index`` (see the module doc)."""
        epoch_index = _epoch_value(epoch_index)
        if epoch_index not in self._epoch_starts:
            self.epoch_batches(epoch_index - 1)
        block_state, offset = self._epoch_starts[epoch_index]
        return {
            "version": _STATE_VERSION,
            "policy": self.policy,
            "config": self._config(),
            "epoch_index": epoch_index,
            "block_generator_state": copy.deepcopy(block_state),
            "block_offset": int(offset),
        }

    def set_state(self, state):
        """Restore a state from :meth:`get_state` (taken with the same sampler arguments)."""
        if not isinstance(state, dict) or "block_generator_state" not in state:
            raise ValueError(f"Not a sampler state (expected the dict of get_state()): {state!r}.")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"Unsupported sampler state version {state.get('version')!r}.")
        if state.get("policy") != self.policy:
            raise ValueError(f"The sampler state was saved by policy {state.get('policy')!r}, "
                             f"this sampler uses {self.policy!r}.")
        config = self._config()
        saved = state.get("config")
        if saved != config:
            differing = sorted(key for key in set(config) | set(saved or {})
                               if (saved or {}).get(key) != config.get(key))
            raise ValueError(
                f"The sampler state was saved with other sampler arguments or training rows "
                f"(differing: {', '.join(differing)}); rebuild the sampler as in the saved run."
            )
        epoch_index = _epoch_value(state.get("epoch_index"))
        generator_state = copy.deepcopy(state["block_generator_state"])
        try:
            _generator_from_state(generator_state)
            offset = int(state["block_offset"])
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"Corrupt sampler state: {error}") from None
        self._epoch_starts = {index: value for index, value in self._epoch_starts.items()
                              if index < epoch_index or index == 0}
        self._epoch_starts[epoch_index] = (generator_state, offset)
        self._last_epoch = None


class PKSampler(_BatchStream):
    """P identities × K images per batch, from one training table.

    Args:
        identities: identity of every training row (sequence, array or pandas Series; see the
            module doc for the row indices this yields).
        P: identities per batch. K: images per identity.
        steps_per_epoch: batches per epoch. ``flipreid`` policy: defaults to 200 (the
            reference flag default). ``msinet`` policy: ``None`` means one epoch = one pass of
            the msinet.md §9.3 procedure; an integer cuts that endless stream into epochs of
            that many batches.
        seed: seed of the ``numpy.random.Generator`` (PCG64) behind every draw.
        policy: ``"flipreid"`` (flipreid.md §4.5: rounds carry over across epochs, identities
            with fewer than K images are never sampled, no image repeats within a round) or
            ``"msinet"`` (msinet.md §9.3: identities with fewer than K images are first drawn
            with replacement up to K, the remainder of each identity is dropped, the last
            incomplete batch is dropped).

    ``epoch_batches(e)`` returns a list of ``int64`` arrays of length ``P * K``.
    """

    def __init__(self, identities, P, K, steps_per_epoch=None, seed=0, policy="flipreid"):
        if policy not in SAMPLER_POLICIES:
            raise ValueError(f"Unknown sampler policy {policy!r}; expected one of "
                             f"{SAMPLER_POLICIES}.")
        self.policy = policy
        self.P = _positive_int("P (identities per batch)", P)
        self.K = _positive_int("K (images per identity)", K)
        if policy == "flipreid" and steps_per_epoch is None:
            steps_per_epoch = FLIPREID_DEFAULT_STEPS_PER_EPOCH
        super().__init__(steps_per_epoch, seed)
        self._rows, self._values = _rows_and_identities(identities, "identities")
        self._groups = _groups_in_first_appearance_order(self._rows, self._values)
        self._fingerprint = _fingerprint(self._rows, self._values)
        self.left_out = None  # the report_left_out record of what is never sampled
        if policy == "flipreid":
            self._eligible = [group for group in self._groups if len(group) >= self.K]
            short = [group for group in self._groups if len(group) < self.K]
            if short:
                self.left_out = report_left_out(
                    "PK sampler (flipreid policy)", len(short), sum(len(g) for g in short),
                    f"identities with fewer than K={self.K} images are never sampled, as in "
                    "the reference",
                    "--image_num_per_identity lowers K; --sampler_policy=msinet draws them "
                    "with replacement")
            if len(self._eligible) < self.P:
                raise ValueError(
                    f"PKSampler (flipreid policy): only {len(self._eligible)} identities have at "
                    f"least K={self.K} images, fewer than P={self.P}; lower P "
                    f"(--identity_num_per_batch) or K (--image_num_per_identity)."
                )
        elif len(self._groups) < self.P:
            raise ValueError(
                f"PKSampler (msinet policy): the training rows hold {len(self._groups)} "
                f"identities, fewer than P={self.P} identities per batch; lower P."
            )

    @classmethod
    def from_dataframe(cls, dataframe, P, K, steps_per_epoch=None, seed=0, policy="flipreid"):
        """A sampler over the rows of a training table (indices are row positions)."""
        if "identity_ID" not in getattr(dataframe, "columns", ()):
            raise ValueError("PKSampler.from_dataframe needs a table with an identity_ID column.")
        return cls(dataframe["identity_ID"].to_numpy(), P, K, steps_per_epoch=steps_per_epoch,
                   seed=seed, policy=policy)

    @property
    def identities(self):
        """Identity of every row, as given."""
        return self._values

    def _config(self):
        return {"P": self.P, "K": self.K, "steps_per_epoch": self.steps_per_epoch,
                "rows": int(len(self._rows)), "fingerprint": self._fingerprint}

    def _make_block(self, generator):
        if self.policy == "flipreid":
            return self._flipreid_round(generator)
        return self._msinet_epoch(generator)

    def _flipreid_round(self, generator):
        """One round of flipreid.md §4.5 step 2–3 (every identity in first-appearance order)."""
        K, P = self.K, self.P
        chunks = {}
        for group_index, rows in enumerate(self._eligible):
            rows = rows.copy()
            generator.shuffle(rows)
            count = len(rows) // K
            chunks[group_index] = list(rows[:count * K].reshape(count, K))
        batches = []
        while len(chunks) >= P:
            available = list(chunks.keys())
            chosen = generator.choice(len(available), size=P, replace=False)
            parts = []
            for position in chosen:
                key = available[position]
                parts.append(chunks[key].pop(-1))
                if not chunks[key]:
                    del chunks[key]
            batches.append(np.concatenate(parts).astype(np.int64))
        return batches

    def _msinet_epoch(self, generator):
        """One epoch of msinet.md §9.3."""
        K, P = self.K, self.P
        chunks = []
        for rows in self._groups:
            if len(rows) < K:
                rows = generator.choice(rows, size=K, replace=True)
            else:
                rows = rows.copy()
            generator.shuffle(rows)
            count = len(rows) // K
            chunks.append(list(rows[:count * K].reshape(count, K)))
        next_chunk = [0] * len(chunks)
        available = list(range(len(chunks)))
        batches = []
        while len(available) >= P:
            chosen = [available[position]
                      for position in generator.choice(len(available), size=P, replace=False)]
            parts = []
            for group_index in chosen:
                parts.append(chunks[group_index][next_chunk[group_index]])
                next_chunk[group_index] += 1
                if next_chunk[group_index] == len(chunks[group_index]):
                    available.remove(group_index)
            batches.append(np.concatenate(parts).astype(np.int64))
        return batches


class CrossModalitySampler(_BatchStream):
    """Identity-aligned visible/infrared batches (cmnas.md §7.4).

    Per batch, ``P`` distinct identities are drawn uniformly without replacement from the
    training identities (sorted), then for each identity ``K`` visible and ``K`` infrared rows
    with replacement. An epoch has ``floor(N_max / (P*K)) + 1`` batches, ``N_max`` being the larger
    of the two modality row counts, unless ``steps_per_epoch`` is given.

    ``epoch_batches(e)`` returns a list of pairs ``(visible_rows, infrared_rows)`` of ``int64``
    arrays of length ``P * K`` with the same identity at every position.

    Every identity must have rows in both modalities (a ``ValueError`` lists those that do not).
    """

    policy = "cmnas"

    def __init__(self, visible_identities, infrared_identities, P, K, steps_per_epoch=None,
                 seed=0):
        self.P = _positive_int("P (identities per batch)", P)
        self.K = _positive_int("K (images per identity and modality)", K)
        super().__init__(steps_per_epoch, seed)
        self._visible_rows, self._visible_values = _rows_and_identities(
            visible_identities, "visible_identities")
        self._infrared_rows, self._infrared_values = _rows_and_identities(
            infrared_identities, "infrared_identities")
        visible_ids = np.unique(self._visible_values)
        infrared_ids = np.unique(self._infrared_values)
        only_visible = np.setdiff1d(visible_ids, infrared_ids)
        only_infrared = np.setdiff1d(infrared_ids, visible_ids)
        if len(only_visible) or len(only_infrared):
            raise ValueError(
                "CrossModalitySampler: every training identity needs visible and infrared "
                f"images; only visible: {only_visible[:10].tolist()}"
                f"{' ...' if len(only_visible) > 10 else ''} ({len(only_visible)}), only "
                f"infrared: {only_infrared[:10].tolist()}"
                f"{' ...' if len(only_infrared) > 10 else ''} ({len(only_infrared)})."
            )
        self._identity_array = visible_ids
        if len(visible_ids) < self.P:
            raise ValueError(
                f"CrossModalitySampler: the training rows hold {len(visible_ids)} identities, "
                f"fewer than P={self.P} identities per batch; lower P."
            )
        self._visible_groups = [self._visible_rows[self._visible_values == identity]
                                for identity in visible_ids]
        self._infrared_groups = [self._infrared_rows[self._infrared_values == identity]
                                 for identity in visible_ids]
        n_max = max(len(self._visible_rows), len(self._infrared_rows))
        self.batches_per_block = n_max // (self.P * self.K) + 1
        self._fingerprint = _fingerprint(self._visible_rows, self._visible_values,
                                         self._infrared_rows, self._infrared_values)

    @classmethod
    def from_dataframe(cls, dataframe, P, K, steps_per_epoch=None, seed=0):
        """A sampler over a training table with a ``modality`` column (indices = row positions)."""
        for column in ("identity_ID", "modality"):
            if column not in getattr(dataframe, "columns", ()):
                raise ValueError(f"CrossModalitySampler.from_dataframe needs a table with a "
                                 f"{column} column.")
        positions = np.arange(len(dataframe), dtype=np.int64)
        modality = dataframe["modality"].to_numpy()
        identity = dataframe["identity_ID"].to_numpy()
        visible = pd.Series(identity[modality == "visible"], index=positions[modality == "visible"])
        infrared = pd.Series(identity[modality == "infrared"],
                             index=positions[modality == "infrared"])
        return cls(visible, infrared, P, K, steps_per_epoch=steps_per_epoch, seed=seed)

    @property
    def identities(self):
        """The sorted training identities."""
        return self._identity_array

    def _config(self):
        return {"P": self.P, "K": self.K, "steps_per_epoch": self.steps_per_epoch,
                "visible_rows": int(len(self._visible_rows)),
                "infrared_rows": int(len(self._infrared_rows)),
                "fingerprint": self._fingerprint}

    def _make_block(self, generator):
        P, K = self.P, self.K
        batches = []
        for _ in range(self.batches_per_block):
            chosen = generator.choice(len(self._identity_array), size=P, replace=False)
            visible_parts, infrared_parts = [], []
            for group_index in chosen:
                visible_parts.append(generator.choice(self._visible_groups[group_index], size=K,
                                                      replace=True))
                infrared_parts.append(generator.choice(self._infrared_groups[group_index],
                                                       size=K, replace=True))
            batches.append((np.concatenate(visible_parts).astype(np.int64),
                            np.concatenate(infrared_parts).astype(np.int64)))
        return batches
