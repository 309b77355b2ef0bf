"""Evaluate a model on one dataset's test protocol and write the outputs.

:class:`DatasetEvaluator` is what ``solution.py`` calls after training (and every N epochs),
on the target dataset of a cross-domain run, and what the search calls on its supernet. It
holds the query and gallery tables, resolves the protocol's options from
:class:`~reid_tf.evaluation.settings.EvaluationSettings` (the cross-modality protocols always
L2-normalise and rank to 20), extracts the features once per call
(:class:`~reid_tf.evaluation.evaluator.FeatureExtractor`) and computes the metrics:
SYSU-MM01 over its gallery trials, VehicleID over query/gallery trials re-drawn by the loader,
RegDB in both search directions. Outputs (``evaluation.json``, CMC curve, rank list,
``test.npz``) go through :func:`~reid_tf.evaluation.evaluator.write_evaluation_outputs`.
"""
import time

import numpy as np
import pandas as pd

from reid_tf.data import dataset_protocol, load_dataset
from reid_tf.evaluation import protocols
from reid_tf.evaluation.evaluator import (SUMMARY_KEYS, EvaluationOptions, FeatureExtractor,
                                          evaluate_features, select_test_subset,
                                          summarize_result, write_evaluation_outputs)
from reid_tf.runtime.choices import CROSS_MODALITY_PROTOCOLS


class DatasetEvaluator:
    """Evaluates an inference model on one dataset's test protocol and writes the outputs.

    Args:
      settings: :class:`~reid_tf.evaluation.settings.EvaluationSettings`.
      dataset_name, root_folder_path: the dataset (``root_folder_path`` is used again by the
        VehicleID trials, which the loader draws).
      dataframe: the dataset table (its ``query`` and ``gallery`` rows are evaluated).
      output_folder: where the outputs are written.
      feature_index: the inference output that gives the reported metrics (``None``: all
        outputs concatenated).
      testing_size: FlipReID's test subset (standard protocol; 1 = everything).
      secondary_features: ``{entry name: output index}`` evaluated on the same extraction and
        stored in the summary under its name (CM-NAS: ``{"pre_bnneck": 0}``).
      loader_options: the loader options of ``dataset_name`` (VehicleID trials reload it).
      run_flags: the run's flags (name -> value) shown in ``report.html``.
    """

    def __init__(self, settings, dataset_name, root_folder_path, dataframe, output_folder,
                 feature_index=None, testing_size=1.0, secondary_features=None,
                 loader_options=None, run_flags=None):
        self.settings = settings
        self.dataset_name = dataset_name
        self.root_folder_path = root_folder_path
        self.protocol = dataset_protocol(dataset_name)
        self.output_folder = output_folder
        self.feature_index = feature_index
        self.secondary_features = dict(secondary_features or {})
        self.loader_options = dict(loader_options or {})
        self.run_flags = dict(run_flags) if run_flags is not None else None
        if self.secondary_features and feature_index is None:
            raise ValueError("DatasetEvaluator: secondary_features need a feature_index for the "
                             "main entry.")
        query = dataframe[dataframe["split"] == "query"].reset_index(drop=True)
        gallery = dataframe[dataframe["split"] == "gallery"].reset_index(drop=True)
        if self.protocol == "standard" and testing_size not in (0, 1):
            query, gallery = select_test_subset(query, gallery, testing_size)
        self.query, self.gallery = query, gallery
        if len(query) == 0 or len(gallery) == 0:
            raise ValueError(f"{dataset_name}: the dataset has no query or gallery images to "
                             "evaluate on (set --testing_size 0 to train without evaluation).")
        cross_modality = self.protocol in CROSS_MODALITY_PROTOCOLS
        self.options = EvaluationOptions(
            protocol=self.protocol,
            metric=settings.metric or ("neg_dot" if cross_modality else "cosine"),
            normalize=bool(cross_modality if settings.normalize is None else settings.normalize),
            use_re_ranking=bool(settings.use_re_ranking),
            rerank_memory_budget=int(settings.rerank_memory_budget),
            max_rank=20 if cross_modality else 50, trial_num=settings.trial_num,
            sysu_shot=settings.sysu_shot, seed=settings.seed)

    def _extractor(self, inference_model):
        settings = self.settings
        # With secondary features every output is extracted in one pass (concatenated) and
        # cut into the outputs' columns afterwards.
        return FeatureExtractor(inference_model, settings.image_height, settings.image_width,
                                batch_size=settings.batch_size, flip=settings.flip,
                                feature_index=None if self.secondary_features
                                else self.feature_index,
                                num_parallel_calls=settings.workers, resize=settings.resize)

    @staticmethod
    def _output_columns(inference_model):
        """Column slices of each inference output inside the concatenated features."""
        widths = [int(output.shape[-1]) for output in inference_model.outputs]
        bounds = np.cumsum([0] + widths)
        return [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(widths))]

    def _metrics(self, query_features, gallery_features):
        """``(summary, details)`` of one feature type under the dataset's protocol."""
        if self.protocol == "sysu_mm01":
            from reid_tf.data.sysu_mm01 import sample_gallery
            trials = [sample_gallery(self.gallery, trial, shot=self.settings.sysu_shot)
                      for trial in range(self.options.trial_num)]
            return evaluate_features(self.query, self.gallery, query_features,
                                     gallery_features, self.options, trials)
        if self.protocol == "vehicleid":
            return self._vehicleid(query_features, gallery_features)
        summary, details = evaluate_features(self.query, self.gallery, query_features,
                                             gallery_features, self.options)
        if self.protocol == "regdb":
            # The other search direction on the same two test sets.
            reverse, _ = evaluate_features(self.gallery, self.query, gallery_features,
                                           query_features, self.options)
            summary["reverse_direction"] = reverse
            # CM-NAS reports the mean of the two directions; their spread beside it.
            summary["both_directions"] = protocols.trial_statistics([summary, reverse],
                                                                    SUMMARY_KEYS)
        return summary, details

    def __call__(self, inference_model, tag="evaluation", write=True):
        """Evaluate ``inference_model`` (a Keras model, or a function ``images -> features``)
        and return the summary (metrics as fractions)."""
        started = time.time()
        extract = self._extractor(inference_model)
        query_features = extract(self.query)
        gallery_features = extract(self.gallery)
        seconds = time.time() - started
        print(f"Speed of feature extraction: "
              f"{(len(self.query) + len(self.gallery)) / max(seconds, 1e-9):.1f} images per second.")
        secondary = {}
        if self.secondary_features:
            columns = self._output_columns(inference_model)
            for name, index in self.secondary_features.items():
                secondary[name], _ = self._metrics(query_features[:, columns[index]],
                                                   gallery_features[:, columns[index]])
            query_features = query_features[:, columns[self.feature_index]]
            gallery_features = gallery_features[:, columns[self.feature_index]]
        summary, details = self._metrics(query_features, gallery_features)
        summary.update(secondary)
        summary["dataset_name"] = self.dataset_name
        summary["protocol"] = self.protocol
        if write:
            write_evaluation_outputs(summary, details, self.output_folder, tag=tag,
                                     query_features=query_features,
                                     gallery_features=gallery_features,
                                     save_data_to_disk=self.settings.save_data_to_disk,
                                     run_flags=self.run_flags)
        print_metrics(summary, f"{self.dataset_name} {tag}")
        return summary

    def _vehicleid(self, query_features, gallery_features):
        """VehicleID: every trial splits the same test images into query and gallery anew
        (reid_tf.data.vehicleid); features are extracted once and indexed by path."""
        features = np.concatenate([query_features, gallery_features])
        frame = pd.concat([self.query, self.gallery], ignore_index=True)
        index = {path: i for i, path in enumerate(frame["image_file_path"])}
        trials = []
        for trial in range(max(1, self.options.trial_num)):
            options = dict(self.loader_options, trial_index=trial, seed=self.settings.seed)
            split = load_dataset(self.dataset_name, self.root_folder_path, **options)
            trials.append(tuple(
                np.asarray([index[path] for path in split.loc[split["split"] == part,
                                                              "image_file_path"]])
                for part in ("query", "gallery")))
        result = protocols.evaluate_vehicleid(features, frame["identity_ID"].to_numpy(), trials,
                                              metric=self.options.metric,
                                              normalize=self.options.normalize,
                                              max_rank=self.options.max_rank)
        summary, details = evaluate_features(self.query, self.gallery, query_features,
                                             gallery_features, self.options)
        summary.update(summarize_result(result))
        details["cmc"] = np.asarray(result["cmc"])
        return summary, details


def format_metrics(values, std=None):
    """``rank1 55.00%, ...`` (``rank1 55.00% ± 1.20, ...`` with the standard deviations)."""
    parts = []
    for key in SUMMARY_KEYS:
        if key in values:
            text = f"{key} {100 * values[key]:.2f}%"
            if std and key in std:
                text += f" ± {100 * std[key]:.2f}"
            parts.append(text)
    return ", ".join(parts)


def print_metrics(summary, title):
    """One line of the summary's metrics (and of its reverse direction and secondary
    features)."""
    over_trials = summary.get("over_trials")
    print(f"[{title}] {format_metrics(summary, over_trials and over_trials['std'])}"
          + (f" (mean ± std over {over_trials['num_trials']} trials)" if over_trials else ""),
          flush=True)
    reverse = summary.get("reverse_direction")
    if reverse:
        print(f"[{title}, reverse direction] {format_metrics(reverse)}", flush=True)
    both = summary.get("both_directions")
    if both:
        print(f"[{title}, both directions] {format_metrics(both['mean'], both['std'])} "
              "(mean ± std over the 2 directions)", flush=True)
    for name, entry in summary.items():
        if isinstance(entry, dict) and name != "reverse_direction" and "rank1" in entry:
            print_metrics(entry, f"{title}, {name.replace('_', '-')} features")
