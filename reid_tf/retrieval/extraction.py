"""Extracting a table of images into a features folder, chunk by chunk, resumable, with the
unreadable images reported by path (:func:`extract_to_folder`)."""
import dataclasses
import os
import sys
import time

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from reid_tf.data.images import ImageReadError, read_image
from reid_tf.retrieval.features_folder import FeaturesFolder, FeaturesWriter, worker_share
from reid_tf.runtime import distribute
from reid_tf.runtime.files import atomic_path

UNREADABLE_FILE = "unreadable_{worker:03d}.csv"
# Table columns kept beside the features (renamed as the gallery index names them).
METADATA = {"image_file_path": "path", "identity_ID": "identity", "camera_ID": "camera",
            "modality": "modality", "split": "split"}


@dataclasses.dataclass
class ExtractionReport:
    """What an extraction did: rows of this worker's share, rows handled before this call
    (resumed), rows written now, the unreadable images ``[(path, reason)]`` and seconds."""

    folder: str
    worker: int
    share: int
    resumed_rows: int
    written_rows: int
    unreadable: list
    seconds: float

    def summary(self):
        lines = [f"Features of {self.written_rows} images written to {self.folder} (worker "
                 f"{self.worker}: {self.share} images, {self.resumed_rows} already done) in "
                 f"{self.seconds:.1f} s."]
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} images could not be read and were left out "
                         f"(listed in {UNREADABLE_FILE.format(worker=self.worker)}):")
            lines.extend(f"  {path}: {reason}" for path, reason in self.unreadable)
        return "\n".join(lines)


def _metadata(table):
    columns = [column for column in METADATA if column in table.columns] + ["input_row"]
    return table[columns].rename(columns=METADATA).reset_index(drop=True)


def _readable(table, settings):
    """``(readable rows, [(path, reason)])`` of a chunk whose extraction failed: every image is
    read once to find the ones that cannot be (the others are extracted again)."""
    keep, unreadable = [], []
    for position, path in enumerate(table["image_file_path"]):
        try:
            read_image(path, settings.image_height, settings.image_width, settings.resize)
            keep.append(position)
        except ImageReadError as error:
            unreadable.append((str(path), str(error)))
    return table.iloc[keep].reset_index(drop=True), unreadable


def _committed_rows(writer):
    """The ``input_row`` of every row this worker has committed."""
    rows = [pd.read_csv(os.path.join(writer.folder, chunk["metadata"]),
                        usecols=["input_row"])["input_row"].to_numpy()
            for chunk in writer.chunks]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _save_unreadable(folder, worker, unreadable):
    path = os.path.join(folder, UNREADABLE_FILE.format(worker=worker))
    with atomic_path(path) as temporary:
        pd.DataFrame(unreadable, columns=["path", "reason"]).to_csv(temporary, index=False)


def _resume(writer, share, start, settings):
    """``(position, unreadable, readable)``: where this worker's share continues, the
    unreadable images before it, and rows before it to extract again. Every share row up to
    the last committed one was either written or found unreadable (chunks are consumed in
    order), so the rows missing below it were unreadable; they are read again for their
    reason (one that has become readable since is extracted now)."""
    empty = share.iloc[:0]
    if writer is None:
        return 0, [], empty
    committed = _committed_rows(writer) - start
    if len(committed) == 0:
        return 0, [], empty
    last = int(committed.max())
    missing = np.setdiff1d(np.arange(last + 1), committed)
    readable, unreadable = _readable(share.iloc[missing].reset_index(drop=True), settings)
    return last + 1, unreadable, readable


def extract_to_folder(extractor, table, folder, chunk_size=1024, strategy=None, verbose=1):
    """Extract ``table``'s images (this worker's contiguous share under a multi-worker
    strategy) into the features folder ``folder``, ``chunk_size`` images a committed chunk,
    resuming after the chunks already there. Returns an :class:`ExtractionReport`."""
    started = time.time()
    strategy = strategy or tf.distribute.get_strategy()
    worker, workers = distribute.worker_position(strategy)
    start, stop = worker_share(len(table), worker, workers)
    share = table.iloc[start:stop].reset_index(drop=True)
    folder = os.path.expanduser(folder)
    writer = None
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        writer = _writer(folder, FeaturesFolder(folder).dimension, extractor, worker, workers)
    share = share.assign(input_row=np.arange(start, stop))
    position, unreadable, again = _resume(writer, share, start, extractor.settings)
    resumed = position
    if len(again):
        writer.write_chunk(extractor(again), _metadata(again))
    progress = keras.utils.Progbar(len(share), verbose=(1 if sys.stdout.isatty() else 2)
                                   if verbose else 0)
    written = 0
    while position < len(share):
        chunk = share.iloc[position:position + chunk_size].reset_index(drop=True)
        try:
            features = extractor(chunk)
        except (tf.errors.OpError, ImageReadError):
            chunk, bad = _readable(chunk, extractor.settings)
            unreadable.extend(bad)
            features = extractor(chunk) if len(chunk) else np.zeros((0, 0), np.float32)
        if len(chunk):
            if writer is None:
                writer = _writer(folder, features.shape[1], extractor, worker, workers)
            writer.write_chunk(features, _metadata(chunk))
            written += len(chunk)
        if unreadable:
            os.makedirs(folder, exist_ok=True)
            _save_unreadable(folder, worker, unreadable)
        position = min(position + chunk_size, len(share))
        progress.update(position)
    if writer is None and len(share) == 0 and not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)
    if writer is not None:
        writer.finish()
    return ExtractionReport(folder, worker, len(share), resumed, written, unreadable,
                            time.time() - started)


def _writer(folder, dimension, extractor, worker, workers):
    model = {key: value for key, value in extractor.description.items() if key != "feature_dim"}
    return FeaturesWriter(folder, int(dimension), worker=worker, num_workers=workers,
                          metric=extractor.metric, normalized=extractor.normalize, model=model)
