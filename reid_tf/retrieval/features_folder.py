"""A features folder: feature vectors and their metadata on disk, written in committed chunks.

Layout::

    FOLDER/manifest.json               what the features are: dimension, metric, normalised,
                                       the model's description, number of workers
    FOLDER/worker_WWW.json             worker WWW's committed chunks, and whether it finished
    FOLDER/features_WWW_CCCCC.npy      float32 (rows, dimension)
    FOLDER/metadata_WWW_CCCCC.csv      one row per feature: path, identity, camera, modality,
                                       split where known, and ``input_row`` (the row of the
                                       extracted table)

A chunk is committed when its worker file lists it: both chunk files are written to temporary
names and renamed first, the worker file (also renamed into place) last, so a run killed at
any moment leaves only whole chunks listed and a resumed run continues after the last one.
Under a multi-worker strategy each worker writes its own files into the same folder
(:func:`worker_share` gives its rows) and the readers take all of them.

:class:`FeaturesWriter` writes; :class:`FeaturesFolder` reads (``load()`` gives the features in
``input_row`` order with their metadata).
"""
import json
import os

import numpy as np
import pandas as pd

from reid_tf.runtime.errors import UsageError
from reid_tf.runtime.files import atomic_open, atomic_path, write_json

MANIFEST_FILE = "manifest.json"
WORKER_FILE = "worker_{worker:03d}.json"
FEATURES_FILE = "features_{worker:03d}_{chunk:05d}.npy"
METADATA_FILE = "metadata_{worker:03d}_{chunk:05d}.csv"
FORMAT = "reid-tf features"
FORMAT_VERSION = 1

__all__ = ["FeaturesFolder", "FeaturesWriter", "worker_share", "load_features"]


def worker_share(num_rows, worker, num_workers):
    """``(start, stop)``: the contiguous rows of ``num_rows`` that ``worker`` of
    ``num_workers`` handles (shares differ in size by at most one row)."""
    return num_rows * worker // num_workers, num_rows * (worker + 1) // num_workers


def _write_json(path, content):
    write_json(path, content, indent=2, sort_keys=True)


def _read_json(path, what):
    try:
        with open(path) as stream:
            return json.load(stream)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: not a features folder written by "
                         "python -m reid_tf.extract.") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read the {what} ({error}).") from None


class FeaturesWriter:
    """Writes one worker's chunks into ``folder`` (see the module docstring); continues the
    chunks already committed there (``chunks``) when the folder exists and matches."""

    def __init__(self, folder, dimension, worker=0, num_workers=1, metric="euclidean",
                 normalized=False, model=None):
        self.folder = folder
        self.worker = int(worker)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "dimension": int(dimension),
                    "metric": metric, "normalized": bool(normalized), "model": model or {},
                    "num_workers": int(num_workers)}
        manifest_path = os.path.join(folder, MANIFEST_FILE)
        if os.path.isfile(manifest_path):
            existing = _read_json(manifest_path, "features manifest")
            for key in ("dimension", "metric", "normalized", "num_workers", "model"):
                if existing.get(key) != manifest[key]:
                    raise UsageError(
                        f"{folder} holds features with {key}={existing.get(key)!r}, not "
                        f"{manifest[key]!r}: extract into another folder (or delete this one).")
        else:
            os.makedirs(folder, exist_ok=True)
            _write_json(manifest_path, manifest)
        self._worker_path = os.path.join(folder, WORKER_FILE.format(worker=self.worker))
        self.chunks = []
        if os.path.isfile(self._worker_path):
            self.chunks = _read_json(self._worker_path, "worker's chunk list")["chunks"]
        self.dimension = int(dimension)

    def write_chunk(self, features, metadata):
        """Commit one chunk: ``features`` (rows, dimension) and a table of as many rows."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.dimension:
            raise ValueError(f"features of shape {features.shape} do not have "
                             f"{self.dimension} columns.")
        if len(metadata) != len(features):
            raise ValueError(f"{len(metadata)} metadata rows for {len(features)} features.")
        number = len(self.chunks)
        names = {"features": FEATURES_FILE.format(worker=self.worker, chunk=number),
                 "metadata": METADATA_FILE.format(worker=self.worker, chunk=number)}
        with atomic_open(os.path.join(self.folder, names["features"]), "wb") as stream:
            np.save(stream, features)
        with atomic_path(os.path.join(self.folder, names["metadata"])) as temporary:
            pd.DataFrame(metadata).to_csv(temporary, index=False)
        self.chunks = self.chunks + [dict(names, rows=int(len(features)))]
        self._save(finished=False)

    def finish(self):
        """Mark this worker's share complete."""
        self._save(finished=True)

    def _save(self, finished):
        _write_json(self._worker_path, {"chunks": self.chunks, "finished": finished})


class FeaturesFolder:
    """Reads a features folder (module docstring)."""

    def __init__(self, folder):
        self.folder = os.path.expanduser(folder)
        manifest = _read_json(os.path.join(self.folder, MANIFEST_FILE), "features manifest")
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise UsageError(f"{self.folder}: not a features folder of format {FORMAT!r} "
                             f"version {FORMAT_VERSION}.")
        self.dimension = int(manifest["dimension"])
        self.metric = manifest["metric"]
        self.normalized = bool(manifest["normalized"])
        self.model = manifest["model"]
        self.num_workers = int(manifest["num_workers"])
        self.workers = []
        for worker in range(self.num_workers):
            path = os.path.join(self.folder, WORKER_FILE.format(worker=worker))
            self.workers.append(_read_json(path, "worker's chunk list")
                                if os.path.isfile(path) else {"chunks": [], "finished": False})

    @property
    def complete(self):
        """Whether every worker finished its share."""
        return all(worker["finished"] for worker in self.workers)

    def __len__(self):
        return sum(chunk["rows"] for worker in self.workers for chunk in worker["chunks"])

    def load(self, allow_incomplete=False):
        """``(features, metadata)``: float32 (N, dimension) and a table of N rows, in the order
        of the extracted table (``input_row``). An unfinished extraction is refused (it names
        the workers to resume) unless ``allow_incomplete``."""
        if not self.complete and not allow_incomplete:
            unfinished = [number for number, worker in enumerate(self.workers)
                          if not worker["finished"]]
            raise UsageError(f"{self.folder}: the extraction of worker(s) {unfinished} has not "
                             "finished; run the same extraction command again to resume it.")
        features, tables = [], []
        for worker in self.workers:
            for chunk in worker["chunks"]:
                path = os.path.join(self.folder, chunk["features"])
                try:
                    values = np.load(path, allow_pickle=False)
                    table = pd.read_csv(os.path.join(self.folder, chunk["metadata"]))
                except (OSError, ValueError) as error:
                    raise UsageError(f"{path}: cannot read this chunk ({error}).") from None
                if values.shape != (chunk["rows"], self.dimension) or len(table) != chunk["rows"]:
                    raise UsageError(f"{path}: expected {chunk['rows']} rows of "
                                     f"{self.dimension} values, found {values.shape}.")
                features.append(values)
                tables.append(table)
        if not features:
            return np.zeros((0, self.dimension), np.float32), pd.DataFrame()
        features = np.concatenate(features).astype(np.float32, copy=False)
        metadata = pd.concat(tables, ignore_index=True)
        if "input_row" in metadata.columns:
            order = np.argsort(metadata["input_row"].to_numpy(), kind="stable")
            features = features[order]
            metadata = metadata.iloc[order].reset_index(drop=True)
        return features, metadata


def load_features(folders, allow_incomplete=False):
    """``(features, metadata, folders)`` of one or several features folders, concatenated in
    the order given (each folder's ``input_row`` order); the folders must agree on dimension,
    metric and normalisation. ``metadata`` gains a ``features_folder`` column."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    opened = [FeaturesFolder(folder) for folder in folders]
    if not opened:
        raise UsageError("No features folder given.")
    first = opened[0]
    for other in opened[1:]:
        for key in ("dimension", "metric", "normalized"):
            if getattr(other, key) != getattr(first, key):
                raise UsageError(f"{other.folder} has {key}={getattr(other, key)!r} but "
                                 f"{first.folder} has {getattr(first, key)!r}: they cannot "
                                 "share one index.")
    features, tables = [], []
    for folder in opened:
        values, table = folder.load(allow_incomplete=allow_incomplete)
        features.append(values)
        tables.append(table.assign(features_folder=folder.folder))
    return (np.concatenate(features), pd.concat(tables, ignore_index=True), opened)
