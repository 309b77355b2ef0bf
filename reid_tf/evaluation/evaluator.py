"""Feature extraction and the evaluation of a model on a dataset's test protocol.

This is the engine side of evaluation; the metrics themselves (pure numpy) live in
:mod:`reid_tf.evaluation.metrics`, :mod:`~reid_tf.evaluation.distance` and
:mod:`~reid_tf.evaluation.reranking`.

* :class:`FeatureExtractor` runs an inference model over a DataFrame through the test
  ``tf.data`` pipeline (DataFrame order kept), optionally averaging with the mirrored images
  (flip test-time augmentation); models with a ``mode`` input (CM-NAS) get mode 1 for visible
  and mode 2 for infrared rows.
* :func:`evaluate` applies the dataset's protocol (``reid_tf.data.dataset_protocol``):
  ``standard`` (Market-1501 rules), ``vehicleid`` (no camera filtering, random trials),
  ``sysu_mm01`` (camera-3 queries never see camera-2 gallery images, distinct-identity CMC,
  10 gallery trials) and ``regdb`` (both search directions).
"""
import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf

from reid_tf.evaluation import protocols
from reid_tf.evaluation.chunked import FeatureDistances
from reid_tf.evaluation.distance import pairwise_distance
from reid_tf.evaluation.reranking_sparse import dense_re_ranking_bytes
from reid_tf.models.switchable_bn import MODE_BY_MODALITY
from reid_tf.runtime.files import write_json


class FeatureExtractor:
    """Callable ``extractor(dataframe) -> (N, D) float32 features`` in DataFrame order.

    ``inference_model`` is a Keras model (called with ``training=False``; a second input is
    the modality mode) or a function ``images -> features`` (e.g. a search network's
    ``embed``). ``num_parallel_calls``: parallel image decoding of the test pipeline;
    ``resize``: how images are resized (:func:`reid_tf.data.images.read_image`).
    """

    def __init__(self, inference_model, height, width, batch_size=64, flip=False,
                 feature_index=None, num_parallel_calls=None, resize="opencv_bilinear"):
        self.model = inference_model
        self.height = height
        self.width = width
        self.batch_size = batch_size
        self.flip = flip
        self.feature_index = feature_index
        self.num_parallel_calls = num_parallel_calls
        self.resize = resize
        self.is_keras_model = hasattr(inference_model, "inputs")
        self.uses_mode = self.is_keras_model and len(inference_model.inputs) > 1
        self._traced = {}

    def _predict(self, images, mode):
        """The traced forward for ``mode`` (a Python int: one trace per mode, in which every
        switchable BN takes its branch statically), over batches of any size: an unknown batch
        dimension traces once for full and partial batches alike (``benchmarks/NOTES.md`` §6)."""
        function = self._traced.get(mode)
        if function is None:
            spec = tf.TensorSpec((None, self.height, self.width, 3), tf.float32, name="images")
            function = tf.function(functools.partial(self._forward, mode=mode),
                                   input_signature=[spec])
            self._traced[mode] = function
        return function(images)

    def _forward(self, images, mode):
        inputs = [images, mode] if self.uses_mode else images
        outputs = (self.model(inputs, training=False) if self.is_keras_model
                   else self.model(inputs))
        if isinstance(outputs, (list, tuple)):
            if self.feature_index is not None:
                outputs = outputs[self.feature_index]
            else:
                outputs = tf.concat([tf.cast(output, tf.float32) for output in outputs], axis=-1)
        return tf.cast(outputs, tf.float32)

    def _run(self, dataframe, flip, mode):
        from reid_tf.data.pipeline import make_test_dataset
        dataset = make_test_dataset(dataframe, self.height, self.width, self.batch_size,
                                    flip=flip, num_parallel_calls=self.num_parallel_calls,
                                    resize=self.resize)
        # A Python int (see _predict): a mode tensor would make each switchable BN trace all
        # three branches, and the mixed one rejects an odd batch such as the last, partial one.
        mode = int(mode)
        chunks = [self._predict(images, mode).numpy() for images in dataset]
        if not chunks:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(chunks, axis=0)

    def extract_arrays(self, images, mode=0):
        """Features of RGB ``uint8`` images ``(N, height, width, 3)`` already at the model's
        size (normalised and batched as image files are, flip averaging included)."""
        from reid_tf.data.augmentation import normalize_image

        def run(flip):
            chunks = []
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                if flip:
                    batch = batch[:, :, ::-1]
                batch = np.stack([normalize_image(np.ascontiguousarray(image))
                                  for image in batch])
                chunks.append(self._predict(batch, int(mode)).numpy())
            return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0), np.float32)

        features = run(False)
        return 0.5 * (features + run(True)) if self.flip else features

    def _extract_group(self, dataframe, mode):
        features = self._run(dataframe, False, mode)
        if self.flip:
            features = 0.5 * (features + self._run(dataframe, True, mode))
        return features

    def __call__(self, dataframe):
        dataframe = dataframe.reset_index(drop=True)
        if not self.uses_mode:
            return self._extract_group(dataframe, 0)
        parts, positions = [], []
        for modality, mode in MODE_BY_MODALITY.items():
            rows = np.flatnonzero(dataframe["modality"].to_numpy() == modality)
            if len(rows):
                parts.append(self._extract_group(dataframe.iloc[rows], mode))
                positions.append(rows)
        features = np.concatenate(parts, axis=0)
        order = np.concatenate(positions)
        result = np.empty_like(features)
        result[order] = features
        return result


@dataclasses.dataclass
class EvaluationOptions:
    protocol: str = "standard"
    metric: str = "cosine"
    normalize: bool = False
    use_re_ranking: bool = False
    max_rank: int = 50
    trial_num: int = 10
    sysu_shot: int = 1
    seed: int = 0
    # Bytes the dense re-ranking may take; above, the bounded-memory one runs.
    rerank_memory_budget: int = protocols.DEFAULT_DENSE_BUDGET
    # Bytes of a query x gallery float32 matrix the report and rank list may keep; above, their
    # distances are computed from the features when needed (FeatureDistances).
    report_matrix_budget: int = 1 << 30


SUMMARY_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def summarize_result(result):
    summary = {key: float(result[key]) for key in SUMMARY_KEYS if key in result}
    summary["num_valid_queries"] = int(result["num_valid_queries"])
    if "per_trial" in result:
        summary["num_trials"] = int(result["num_trials"])
        summary["trials"] = [{key: float(trial[key]) for key in SUMMARY_KEYS}
                             for trial in result["per_trial"]]
        # mean and sample standard deviation over the trials (the mean is also at the top)
        summary["over_trials"] = protocols.trial_statistics(summary["trials"], SUMMARY_KEYS)
    return summary


def _arrays(dataframe):
    return (dataframe["identity_ID"].to_numpy(), dataframe["camera_ID"].to_numpy(),
            dataframe["image_file_path"].tolist())


def evaluate_features(query_df, gallery_df, query_features, gallery_features, options,
                      gallery_trials=None):
    """Metrics of extracted features under ``options.protocol``
    (:mod:`reid_tf.evaluation.protocols` does the work).

    ``gallery_trials`` (SYSU-MM01): list of gallery row-position arrays into ``gallery_df``, one
    per trial; the metrics are averaged over them. VehicleID trials are handled by the caller
    (each trial has its own query set). Returns ``(summary, details)``: ``summary`` holds
    ``rank1/5/10/20``, ``mAP``, ``mINP`` (fractions); ``details`` the CMC curve and what a rank
    list needs (the plain distances of the first trial, without re-ranking).
    """
    q_pids, q_cams, q_paths = _arrays(query_df)
    g_pids, g_cams, g_paths = _arrays(gallery_df)
    protocol = options.protocol
    trial = np.arange(len(gallery_df))
    if protocol == "sysu_mm01":
        trials = gallery_trials if gallery_trials is not None else [trial]
        trial = np.asarray(trials[0], dtype=np.int64)
        result = protocols.evaluate_sysu_mm01(
            query_features, q_pids, q_cams, gallery_features, g_pids, g_cams, trials,
            max_rank=options.max_rank, metric=options.metric, normalize=options.normalize,
            re_ranking=options.use_re_ranking,
            rerank_memory_budget=options.rerank_memory_budget)
    elif protocol == "regdb":
        result = protocols.evaluate_regdb(
            query_features, gallery_features, q_pids, g_pids, max_rank=options.max_rank,
            metric=options.metric, normalize=options.normalize,
            re_ranking=options.use_re_ranking,
            rerank_memory_budget=options.rerank_memory_budget)
    else:
        result = protocols.evaluate_standard(
            query_features, gallery_features, q_pids, g_pids, q_cams, g_cams,
            metric=options.metric, normalize=options.normalize,
            re_ranking=options.use_re_ranking, max_rank=options.max_rank,
            remove_same_camera=protocol == "standard",
            rerank_memory_budget=options.rerank_memory_budget)
    metric, normalize = options.metric, options.normalize
    summary = summarize_result(result)
    summary["num_query"] = int(len(query_df))
    summary["num_gallery"] = int(len(trial))
    ran = (result.get("per_trial") or [result])[0].get("re_ranking", "off")
    summary["re_ranking"] = ran
    if ran != "off":
        needed = dense_re_ranking_bytes(len(query_df), len(trial))
        print(f"k-reciprocal re-ranking: {ran} (the dense one needs about {needed / 2**30:.1f} "
              f"GiB; budget {options.rerank_memory_budget / 2**30:.1f} GiB)", flush=True)
    matrix_bytes = 4 * len(query_df) * len(trial)
    if matrix_bytes <= options.report_matrix_budget:
        distmat = pairwise_distance(query_features, gallery_features[trial], metric=metric,
                                    normalize=normalize)
        note = "full query x gallery matrix"
    else:
        distmat = FeatureDistances(query_features, gallery_features[trial], metric=metric,
                                   normalize=normalize)
        note = (f"computed from the features per query chunk (the {len(query_df)} x "
                f"{len(trial)} matrix, {matrix_bytes / 2**30:.1f} GiB, is over the "
                f"{options.report_matrix_budget / 2**30:.1f} GiB report budget)")
    details = {"cmc": np.asarray(result["cmc"]), "distmat": distmat, "distances_note": note,
               "q_pids": q_pids, "g_pids": g_pids[trial], "q_cams": q_cams,
               "g_cams": g_cams[trial], "q_paths": q_paths,
               "g_paths": [g_paths[i] for i in trial],
               "remove_same_camera": protocol == "standard"}
    return summary, details


def select_test_subset(query_df, gallery_df, testing_size):
    """FlipReID's ``testing_size`` subset (flipreid.md §4.3): a fraction in (0, 1) or a number
    (> 1) of test identities drawn from query ∪ gallery with ``GroupShuffleSplit(random_state=0)``
    and split back by origin. ``1`` keeps everything."""
    if testing_size == 1:
        return query_df, gallery_df
    import pandas as pd
    from sklearn.model_selection import GroupShuffleSplit
    size = int(testing_size) if testing_size > 1 else float(testing_size)
    combined = pd.concat([query_df, gallery_df], ignore_index=True)
    splitter = GroupShuffleSplit(n_splits=1, test_size=size, random_state=0)
    _, keep = next(splitter.split(np.arange(len(combined)), groups=combined["identity_ID"]))
    keep = np.sort(keep)
    number_of_queries = len(query_df)
    query_rows = keep[keep < number_of_queries]
    gallery_rows = keep[keep >= number_of_queries]
    return (combined.iloc[query_rows].reset_index(drop=True),
            combined.iloc[gallery_rows].reset_index(drop=True))


def write_evaluation_outputs(summary, details, output_folder, tag=None, query_features=None,
                             gallery_features=None, save_data_to_disk=False, draw=True,
                             run_flags=None):
    """``evaluation.json`` (+ the CMC curve PNG, a rank-list PNG, ``report.html`` with the
    ``run_flags`` (a name -> value mapping) and, on request, ``test.npz`` and the report's
    ``report_data.npz``)."""
    from reid_tf import visualization
    os.makedirs(output_folder, exist_ok=True)
    record = dict(summary)
    if tag:
        record["tag"] = tag
    record["cmc"] = [float(value) for value in details["cmc"]]
    write_json(os.path.join(output_folder, "evaluation.json"), record, indent=2)
    if draw:
        visualization.plot_cmc_curve(details["cmc"], os.path.join(output_folder, "cmc_curve.png"),
                                     title=f"CMC ({tag})" if tag else "CMC")
        visualization.draw_rank_list(details["distmat"], details["q_paths"], details["g_paths"],
                                     details["q_pids"], details["g_pids"], details["q_cams"],
                                     details["g_cams"],
                                     os.path.join(output_folder, "rank_list.png"),
                                     remove_same_camera=details["remove_same_camera"])
        from reid_tf.evaluation.report import write_report
        write_report(output_folder, summary, details, flags=run_flags, tag=tag,
                     save_data=save_data_to_disk)
    if save_data_to_disk and query_features is not None:
        np.savez(os.path.join(output_folder, "test.npz"),
                 query_image_features_array=query_features,
                 gallery_image_features_array=gallery_features,
                 query_identity_ID_array=details["q_pids"],
                 gallery_identity_ID_array=details["g_pids"],
                 query_camera_ID_array=details["q_cams"],
                 gallery_camera_ID_array=details["g_cams"])
    return record
