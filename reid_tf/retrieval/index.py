"""A gallery index: feature vectors with their metadata, searched for the ``k`` nearest
(:class:`GalleryIndex`).

Backends (``backend=``):

* ``builtin``: exact, brute force in bounded memory
  (:func:`reid_tf.evaluation.neighbors.nearest_neighbors`); needs nothing but numpy.
* ``faiss_flat``: exact, faiss ``IndexFlatL2`` (euclidean, sqeuclidean) or ``IndexFlatIP``
  (cosine on L2-normalised vectors, neg_dot).
* ``faiss_ivf``: faiss ``IndexIVFFlat`` (``nlist`` cells, ``nprobe`` searched): approximate
  neighbours, exact distances of the neighbours found. ``nprobe == nlist`` is exact search.
* ``faiss_ivfpq``: faiss ``IndexIVFPQ`` (``m`` sub-quantisers of ``nbits`` bits): approximate
  neighbours and approximate distances (from the codes), a fraction of the memory.
* ``auto``: ``faiss_flat`` when faiss imports, else ``builtin`` (:attr:`GalleryIndex.backend`
  and :attr:`GalleryIndex.backend_reason` say which and why).

Distances are the evaluation's (:mod:`reid_tf.evaluation.distance`) for every backend: faiss's
scores are converted (squared L2 -> its root for ``euclidean``; inner product ``s`` -> ``1 - s``
clipped to [0, 2] for ``cosine``, ``-s`` for ``neg_dot``), so ``builtin`` and ``faiss_flat``
give the same neighbours and distances (to float32 rounding). Order: ascending distance, ties
broken by the lower gallery index for every backend (faiss's results are re-sorted, and a
query whose ``k``-th and ``k+1``-th distances are equal is searched again with a larger ``k``
until the tie is inside the result, so the lowest indices of a tied group are kept, as
``builtin`` keeps them). Two distances that differ by less than float32 rounding can still be
ordered differently by the two exact backends, since they compute them differently.

An approximate backend can find fewer than ``k`` neighbours for a query (IVF with a small
``nprobe``): the missing places have index ``-1`` and distance ``inf``.

faiss is imported only when a faiss backend is used (``pip install reid-tf[faiss]``);
``use_gpu=True`` moves a faiss index onto every GPU (``faiss.index_cpu_to_all_gpus``, faiss
built with GPU support: ``faiss-gpu``).

On disk (:meth:`GalleryIndex.save`, :meth:`GalleryIndex.load`), no pickle::

    FOLDER/index.json      format, version, backend, metric, normalize, dimension, count,
                           parameters, the names of the two files below
    FOLDER/vectors.npy     builtin: the float32 (count, dimension) vectors
    FOLDER/index.faiss     faiss backends: faiss.write_index of the (CPU) index
    FOLDER/metadata.csv    one row per vector (gallery_row, path, identity, camera, ...)
"""
import json
import math
import os

import numpy as np
import pandas as pd

from reid_tf.evaluation.distance import METRICS, l2_normalize
from reid_tf.evaluation.neighbors import DEFAULT_MEMORY_BUDGET, nearest_neighbors
from reid_tf.runtime.errors import UsageError
from reid_tf.runtime.files import atomic_open, atomic_path, write_json

__all__ = ["GalleryIndex", "BACKENDS", "FAISS_BACKENDS", "faiss_available"]

FAISS_BACKENDS = ("faiss_flat", "faiss_ivf", "faiss_ivfpq")
BACKENDS = ("auto", "builtin") + FAISS_BACKENDS
FORMAT = "reid-tf gallery index"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "index.faiss"
METADATA_FILE = "metadata.csv"
ROW_COLUMN = "gallery_row"
# Metadata columns read back as text (a path "001" stays "001").
TEXT_COLUMNS = ("path", "modality", "split", "features_folder")
FAISS_HINT = "pip install reid-tf[faiss] (faiss-cpu; faiss-gpu on GPU machines)"


def _import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise UsageError(f"the faiss backends need faiss, which cannot be imported ({error}): "
                         f"{FAISS_HINT}, or use --index_backend=builtin.") from None
    return faiss


def faiss_available():
    """Whether faiss imports (the ``auto`` backend's choice)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < (0 if allow_zero else 1):
        raise UsageError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                         f"integer, got {value!r}.")
    return int(value)


def _as_vectors(features, name="features"):
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (items, dimensions) array, got shape "
                         f"{features.shape}.")
    if not (np.issubdtype(features.dtype, np.floating)
            or np.issubdtype(features.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {features.dtype}.")
    return np.ascontiguousarray(features, dtype=np.float32)


def _as_metadata(metadata, count):
    if metadata is None:
        return pd.DataFrame(index=pd.RangeIndex(count))
    table = pd.DataFrame(metadata).reset_index(drop=True)
    if len(table) != count:
        raise ValueError(f"{len(table)} metadata rows for {count} feature vectors.")
    if ROW_COLUMN in table.columns:
        table = table.drop(columns=[ROW_COLUMN])
    return table


def default_nlist(count):
    """IVF cells for ``count`` vectors when none are given: ``4·√count``, with at least 39
    training vectors per cell (faiss's advice), at least 1."""
    return max(1, min(4 * int(math.sqrt(count)), count // 39))


def default_pq_m(dimension):
    """PQ sub-quantisers when none are given: the largest divisor of ``dimension`` that is at
    most ``dimension / 8`` (64 bytes a vector for 512 dimensions at 8 bits)."""
    limit = max(1, dimension // 8)
    return max(m for m in range(1, limit + 1) if dimension % m == 0)


class GalleryIndex:
    """Gallery vectors and their metadata, searched for the nearest (module docstring).

    Args:
      backend: one of :data:`BACKENDS`.
      metric: one of :data:`reid_tf.evaluation.distance.METRICS`.
      normalize: L2-normalise the vectors added and the queries searched.
      nlist: IVF cells (``faiss_ivf``, ``faiss_ivfpq``); 0: :func:`default_nlist` of the
        vectors given to :meth:`build`.
      nprobe: IVF cells searched (at most ``nlist``).
      m, nbits: PQ sub-quantisers (a divisor of the dimension; 0: :func:`default_pq_m`) and
        bits per code (``faiss_ivfpq``).
      use_gpu: put a faiss index on every GPU.
      memory_budget: bytes of distances one query chunk of the builtin backend may hold.
    """

    def __init__(self, backend="auto", metric="euclidean", normalize=False, nlist=0, nprobe=8,
                 m=0, nbits=8, use_gpu=False, memory_budget=DEFAULT_MEMORY_BUDGET):
        if backend not in BACKENDS:
            raise UsageError(f"index backend {backend!r} is not one of {', '.join(BACKENDS)}.")
        if metric not in METRICS:
            raise UsageError(f"distance metric {metric!r} is not one of {', '.join(METRICS)}.")
        self.requested_backend = backend
        if backend == "auto":
            if faiss_available():
                backend, reason = "faiss_flat", "auto: faiss imports"
            else:
                backend, reason = "builtin", "auto: faiss is not installed"
        else:
            reason = "requested"
        if backend in FAISS_BACKENDS:
            _import_faiss()
        elif use_gpu:
            raise UsageError("use_gpu needs a faiss backend; the builtin backend runs on the CPU.")
        self.backend = backend
        self.backend_reason = reason
        self.metric = metric
        self.normalize = bool(normalize)
        self.parameters = {}
        if backend in ("faiss_ivf", "faiss_ivfpq"):
            self.parameters["nlist"] = _positive_int("nlist", nlist, allow_zero=True)
            self.parameters["nprobe"] = _positive_int("nprobe", nprobe)
        if backend == "faiss_ivfpq":
            self.parameters["m"] = _positive_int("m", m, allow_zero=True)
            self.parameters["nbits"] = _positive_int("nbits", nbits)
        self.use_gpu = bool(use_gpu)
        if self.use_gpu:
            self._check_gpu()
        self.memory_budget = memory_budget
        self.dimension = None
        self._vectors = None      # builtin
        self._faiss = None        # faiss backends
        self._metadata = pd.DataFrame()

    # ------------------------------------------------------------------ contents
    def __len__(self):
        if self._faiss is not None:
            return int(self._faiss.ntotal)
        return 0 if self._vectors is None else int(self._vectors.shape[0])

    @property
    def metadata(self):
        """The metadata table, one row per vector in index order."""
        return self._metadata

    @property
    def vectors(self):
        """The builtin backend's stored (normalised where ``normalize``) vectors."""
        return self._vectors

    def metadata_of(self, indices):
        """The metadata rows of ``indices`` (any shape, flattened in C order); an index ``-1``
        (no neighbour found) gives a row of missing values."""
        flat = np.asarray(indices, dtype=np.int64).ravel()
        if flat.size and (flat.max() >= len(self) or flat.min() < -1):
            raise IndexError(f"gallery index out of range 0..{len(self) - 1}: "
                             f"{flat[(flat >= len(self)) | (flat < -1)][:5].tolist()}")
        return self._metadata.reindex(flat).reset_index(drop=True)

    def _prepare(self, features, name):
        vectors = _as_vectors(features, name)
        if self.dimension is not None and vectors.shape[1] != self.dimension:
            raise ValueError(f"{name} have {vectors.shape[1]} dimensions; the index holds "
                             f"{self.dimension}.")
        if self.normalize or (self.metric == "cosine" and self.backend in FAISS_BACKENDS):
            # faiss ranks cosine by the inner product of unit vectors (a zero vector stays zero:
            # cosine 0 with everything, as the evaluation's distance has it).
            vectors = np.ascontiguousarray(l2_normalize(vectors), dtype=np.float32)
        return vectors

    # ------------------------------------------------------------------ building
    def build(self, features, metadata=None):
        """Replace the contents with ``features`` (N, D) and their ``metadata`` (a table of N
        rows; None: none). IVF backends train their cells (and codebooks) on these vectors."""
        vectors = _as_vectors(features)
        if len(vectors) == 0:
            raise UsageError("cannot build a gallery index from no feature vectors.")
        table = _as_metadata(metadata, len(vectors))
        self.dimension = int(vectors.shape[1])
        self._vectors, self._faiss = None, None
        vectors = self._prepare(vectors, "features")
        if self.backend == "builtin":
            self._vectors = vectors
        else:
            self._faiss = self._new_faiss_index(vectors)
            self._faiss.add(vectors)
        self._metadata = table
        return self

    def add(self, features, metadata=None):
        """Append ``features`` and their ``metadata`` (an empty index is built instead)."""
        if self.dimension is None:
            return self.build(features, metadata)
        vectors = self._prepare(features, "features")
        table = _as_metadata(metadata, len(vectors))
        if self.backend == "builtin":
            self._vectors = np.concatenate([self._vectors, vectors])
        else:
            self._faiss.add(vectors)
        self._metadata = pd.concat([self._metadata, table], ignore_index=True)
        return self

    def _faiss_metric(self, faiss):
        if self.metric in ("euclidean", "sqeuclidean"):
            return faiss.METRIC_L2
        return faiss.METRIC_INNER_PRODUCT

    def _new_faiss_index(self, vectors):
        faiss = _import_faiss()
        dimension, count = self.dimension, len(vectors)
        metric = self._faiss_metric(faiss)
        if self.backend == "faiss_flat":
            index = faiss.IndexFlatL2(dimension) if metric == faiss.METRIC_L2 \
                else faiss.IndexFlatIP(dimension)
        else:
            nlist = self.parameters["nlist"] or default_nlist(count)
            self.parameters["nlist"] = nlist
            self.parameters["nprobe"] = min(self.parameters["nprobe"], nlist)
            needed, why = nlist, f"nlist={nlist} cells"
            quantizer = faiss.IndexFlatL2(dimension) if metric == faiss.METRIC_L2 \
                else faiss.IndexFlatIP(dimension)
            if self.backend == "faiss_ivf":
                index = faiss.IndexIVFFlat(quantizer, dimension, nlist, metric)
            else:
                m = self.parameters["m"] or default_pq_m(dimension)
                nbits = self.parameters["nbits"]
                if dimension % m:
                    raise UsageError(f"PQ m={m} does not divide the feature dimension "
                                     f"{dimension}.")
                if nbits > 16:
                    raise UsageError(f"PQ nbits={nbits}: at most 16 bits per code.")
                self.parameters["m"] = m
                if 2 ** nbits > needed:
                    needed, why = 2 ** nbits, f"nbits={nbits} (2^{nbits} codes per sub-quantiser)"
                index = faiss.IndexIVFPQ(quantizer, dimension, nlist, m, nbits, metric)
            if count < needed:
                raise UsageError(f"the {self.backend} index cannot be trained with {why} on "
                                 f"{count} vectors: it needs at least {needed} (lower nlist"
                                 f"{'/nbits' if self.backend == 'faiss_ivfpq' else ''} or use "
                                 "an exact backend).")
            index.train(vectors)
            index.nprobe = self.parameters["nprobe"]  # (faiss's wrapper keeps the quantizer)
        if self.use_gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        return index

    def _check_gpu(self):
        faiss = _import_faiss()
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if not hasattr(faiss, "index_cpu_to_all_gpus") or not hasattr(
                faiss, "StandardGpuResources") or gpus < 1:
            raise UsageError(f"use_gpu: this faiss ({getattr(faiss, '__version__', '?')}) has no "
                             f"GPU support or sees no GPU (faiss.get_num_gpus() = {gpus}); install "
                             "faiss-gpu on a GPU machine, or leave the index on the CPU.")

    # ------------------------------------------------------------------ search
    def set_nprobe(self, nprobe):
        """IVF cells searched from now on (at most ``nlist``)."""
        if "nprobe" not in self.parameters:
            raise UsageError(f"nprobe applies to the IVF backends, not {self.backend}.")
        nprobe = min(_positive_int("nprobe", nprobe), self.parameters["nlist"])
        self.parameters["nprobe"] = nprobe
        if self._faiss is not None:
            faiss = _import_faiss()
            if self.use_gpu:
                faiss.GpuParameterSpace().set_index_parameter(self._faiss, "nprobe", nprobe)
            else:
                faiss.extract_index_ivf(self._faiss).nprobe = nprobe

    def search(self, queries, k):
        """``(distances, indices)`` of the ``k`` nearest gallery vectors of every query row:
        float32 and int64 ``(Q, min(k, len(self)))``, ascending distance, ties by the lower
        index; ``-1`` / ``inf`` where an approximate backend found fewer than ``k``."""
        k = _positive_int("k", k)
        if len(self) == 0:
            raise UsageError("the gallery index is empty: build it first.")
        queries = self._prepare(queries, "queries")
        k = min(k, len(self))
        if self.backend == "builtin":
            return nearest_neighbors(queries, self._vectors, k, metric=self.metric,
                                     normalize=False, memory_budget=self.memory_budget)
        return self._faiss_search(queries, k)

    def _converted(self, scores, indices):
        """faiss scores -> the evaluation's distances (float32), ``inf`` where nothing found."""
        scores = scores.astype(np.float32, copy=False)
        if self.metric == "euclidean":
            distances = np.sqrt(np.maximum(scores, 0))
        elif self.metric == "sqeuclidean":
            distances = np.maximum(scores, 0)
        elif self.metric == "cosine":
            distances = np.clip(1 - scores, 0, 2)
        else:
            distances = -scores
        distances = distances.astype(np.float32, copy=False)
        distances[indices < 0] = np.inf
        return distances

    def _sorted_search(self, queries, wanted):
        """faiss's ``wanted`` results converted and sorted: ascending distance, ties by the
        lower index, missing results (-1, inf) last."""
        scores, found = self._faiss.search(np.ascontiguousarray(queries), wanted)
        found = found.astype(np.int64, copy=False)
        values = self._converted(scores, found)
        keys = np.where(found < 0, np.iinfo(np.int64).max, found)
        by_index = np.argsort(keys, axis=1, kind="stable")
        values = np.take_along_axis(values, by_index, axis=1)
        found = np.take_along_axis(found, by_index, axis=1)
        by_value = np.argsort(values, axis=1, kind="stable")
        return (np.take_along_axis(values, by_value, axis=1),
                np.take_along_axis(found, by_value, axis=1))

    def _faiss_search(self, queries, k):
        count = len(self)
        distances = np.empty((len(queries), k), np.float32)
        indices = np.empty((len(queries), k), np.int64)
        rows = np.arange(len(queries))
        wanted = min(k + 1, count)
        while len(rows):
            values, found = self._sorted_search(queries[rows], wanted)
            if k < wanted < count:
                # a tie across the k-th place: the tied group may go on past what faiss
                # returned, and the lowest indices of it must be kept; search further
                tied = (values[:, k - 1] == values[:, k]) & (found[:, k] >= 0)
            else:  # no place beyond k, or the whole gallery returned
                tied = np.zeros(len(rows), bool)
            done = ~tied
            distances[rows[done]] = values[done, :k]
            indices[rows[done]] = found[done, :k]
            rows = rows[tied]
            wanted = min(2 * wanted, count)
        return distances, indices

    # ------------------------------------------------------------------ disk
    def description(self):
        """What :meth:`save` writes to ``index.json``."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "backend": self.backend,
                "metric": self.metric, "normalize": self.normalize,
                "dimension": self.dimension, "count": len(self),
                "parameters": dict(self.parameters),
                "files": {"vectors": VECTORS_FILE if self.backend == "builtin" else FAISS_FILE,
                          "metadata": METADATA_FILE}}

    def save(self, folder):
        """Write the index into ``folder`` (module docstring); returns the folder."""
        if len(self) == 0:
            raise UsageError("the gallery index is empty: nothing to save.")
        folder = os.path.expanduser(folder)
        os.makedirs(folder, exist_ok=True)
        description = self.description()
        vectors_path = os.path.join(folder, description["files"]["vectors"])
        if self.backend == "builtin":
            with atomic_open(vectors_path, "wb") as stream:
                np.save(stream, self._vectors, allow_pickle=False)
        else:
            faiss = _import_faiss()
            index = faiss.index_gpu_to_cpu(self._faiss) if self.use_gpu else self._faiss
            with atomic_path(vectors_path) as temporary:
                faiss.write_index(index, temporary)
        metadata_path = os.path.join(folder, METADATA_FILE)
        table = self._metadata.copy()
        table.insert(0, ROW_COLUMN, np.arange(len(table)))
        with atomic_path(metadata_path) as temporary:
            table.to_csv(temporary, index=False)
        write_json(os.path.join(folder, INDEX_FILE), description, indent=2, sort_keys=True)
        return folder

    @classmethod
    def load(cls, folder, use_gpu=False, memory_budget=DEFAULT_MEMORY_BUDGET):
        """The index saved in ``folder``; every file is checked against ``index.json`` (a
        :class:`~reid_tf.runtime.errors.UsageError` names the file that does not fit)."""
        folder = os.path.expanduser(folder)
        index_path = os.path.join(folder, INDEX_FILE)
        try:
            with open(index_path) as stream:
                description = json.load(stream)
        except FileNotFoundError:
            raise UsageError(f"{index_path} does not exist: not a gallery index saved by "
                             "python -m reid_tf.index.") from None
        except (OSError, ValueError) as error:
            raise UsageError(f"{index_path}: cannot read the index description "
                             f"({error}).") from None
        if not isinstance(description, dict) or description.get("format") != FORMAT \
                or description.get("version") != FORMAT_VERSION:
            raise UsageError(f"{index_path}: not a gallery index of format {FORMAT!r} version "
                             f"{FORMAT_VERSION}.")
        try:
            backend = description["backend"]
            metric = description["metric"]
            normalize = description["normalize"]
            dimension = int(description["dimension"])
            count = int(description["count"])
            parameters = dict(description["parameters"])
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"{index_path}: incomplete index description ({error!r}).") from None
        if backend not in BACKENDS[1:] or metric not in METRICS \
                or not isinstance(normalize, bool):
            raise UsageError(f"{index_path}: backend {backend!r}, metric {metric!r}, normalize "
                             f"{normalize!r} are not ones this version writes.")
        index = cls(backend, metric, normalize, use_gpu=use_gpu, memory_budget=memory_budget)
        index.parameters.update(parameters)
        index.dimension = dimension
        if backend == "builtin":
            path = os.path.join(folder, VECTORS_FILE)
            try:
                vectors = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise UsageError(f"{path}: cannot read the index vectors ({error}).") from None
            if vectors.dtype != np.float32 or vectors.shape != (count, dimension):
                raise UsageError(f"{path}: expected float32 ({count}, {dimension}) as "
                                 f"{INDEX_FILE} says, found {vectors.dtype} {vectors.shape}.")
            index._vectors = vectors
        else:
            faiss = _import_faiss()
            path = os.path.join(folder, FAISS_FILE)
            if not os.path.isfile(path):
                raise UsageError(f"{path} does not exist: the index is incomplete.")
            try:
                loaded = faiss.read_index(path)
            except RuntimeError as error:
                message = " ".join(str(error).split())[:300]
                raise UsageError(f"{path}: cannot read the faiss index ({message}).") from None
            if loaded.d != dimension or loaded.ntotal != count:
                raise UsageError(f"{path}: holds {loaded.ntotal} vectors of {loaded.d} "
                                 f"dimensions, {INDEX_FILE} says {count} of {dimension}.")
            if "nprobe" in parameters:
                faiss.extract_index_ivf(loaded).nprobe = int(parameters["nprobe"])
            index._faiss = faiss.index_cpu_to_all_gpus(loaded) if use_gpu else loaded
        path = os.path.join(folder, METADATA_FILE)
        try:
            header = pd.read_csv(path, nrows=0).columns
            table = pd.read_csv(path, dtype={column: str for column in TEXT_COLUMNS
                                             if column in header})
        except (OSError, ValueError) as error:
            raise UsageError(f"{path}: cannot read the index metadata ({error}).") from None
        if ROW_COLUMN not in table.columns or len(table) != count or not np.array_equal(
                table[ROW_COLUMN].to_numpy(), np.arange(count)):
            raise UsageError(f"{path}: expected {count} rows numbered 0..{count - 1} in its "
                             f"{ROW_COLUMN} column, as {INDEX_FILE} says.")
        index._metadata = table.drop(columns=[ROW_COLUMN])
        return index
