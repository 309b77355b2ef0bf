"""Features of images from a trained model: :class:`FeatureExtractor`.

Built from a run folder (its ``run_settings.json`` and ``inference_model.h5``), from an ``.h5``
weights file plus the model and evaluation settings (the flags ``solution.py`` takes, through
``reid_tf.cli.settings``), or from an exported SavedModel. It extracts exactly as the evaluation
does (:class:`reid_tf.evaluation.evaluator.FeatureExtractor`: the same image reading, resizing,
normalisation, batch pipeline, flip test-time augmentation and per-modality mode) and returns
float32 features, L2-normalised when the evaluation normalises them.

Inputs: a table (``image_file_path`` and, for visible-infrared models, ``modality``), a list of
image paths, or an array of RGB ``uint8`` images ``(N, H, W, 3)`` (resized to the model's input
as image files are). Under a ``tf.distribute`` strategy every batch is cut into one part per
local replica (:class:`_ReplicaExtractor`); each worker of a multi-worker run extracts the share
of the input it is given.
"""
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from reid_tf.data.images import resize_array
from reid_tf.evaluation import evaluator as evaluation
from reid_tf.evaluation.distance import l2_normalize
from reid_tf.models.factory import build_models
from reid_tf.models.switchable_bn import MODE_BY_MODALITY
from reid_tf.retrieval.run_settings import load_run_settings
from reid_tf.runtime import distribute
from reid_tf.runtime.errors import UsageError

INFERENCE_WEIGHTS = "inference_model.h5"


class _ReplicaExtractor(evaluation.FeatureExtractor):
    """The evaluation's extractor with every batch cut into one part per local replica of a
    distribution strategy (padded to a multiple of the replica count; the padding rows are
    dropped again), the parts' features concatenated in replica order."""

    def __init__(self, strategy, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        self._replica_functions = {}

    def _predict(self, images, mode):
        function = self._replica_functions.get(mode)
        if function is None:
            def forward(part):
                return self._forward(part, mode)

            function = tf.function(lambda parts: self.strategy.run(forward, args=(parts,)))
            self._replica_functions[mode] = function
        images = np.asarray(images)
        count = images.shape[0]
        size = -(-count // self.replicas)
        padded = np.concatenate([images, np.zeros((size * self.replicas - count,)
                                                  + images.shape[1:], images.dtype)])
        parts = [padded[i * size:(i + 1) * size] for i in range(self.replicas)]
        values = self.strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group])
        results = self.strategy.experimental_local_results(function(values))
        return tf.concat(list(results), axis=0)[:count]


class FeatureExtractor:
    """``extractor(images, modality=None) -> float32 (N, D)`` (see the module docstring).

    Args:
      model: a Keras inference model (a second input: the modality mode), or a function
        ``images -> features`` (a SavedModel signature).
      settings: the :class:`~reid_tf.evaluation.settings.EvaluationSettings` of the model.
      feature_index: the inference output used as the feature (None: all concatenated).
      cross_modality: the model was trained on visible-infrared data (the evaluation then
        normalises unless ``settings.normalize`` says otherwise).
      strategy: a ``tf.distribute`` strategy the model was built under (None: one device).
      description: a JSON-serialisable description of the model (recorded by the features
        folders this extractor writes).
    """

    def __init__(self, model, settings, feature_index=None, cross_modality=False, strategy=None,
                 description=None):
        self.settings = settings
        self.cross_modality = bool(cross_modality)
        self.normalize = bool(cross_modality if settings.normalize is None
                              else settings.normalize)
        # The distance to search these features with (the cross-modality protocols' normalised
        # dot product ranks as the cosine distance).
        self.metric = settings.metric or "cosine"
        self.description = dict(description or {})
        options = dict(height=settings.image_height, width=settings.image_width,
                       batch_size=settings.batch_size, flip=settings.flip,
                       feature_index=feature_index, num_parallel_calls=settings.workers,
                       resize=settings.resize)
        if strategy is not None and distribute.num_replicas(strategy) > 1:
            self._extractor = _ReplicaExtractor(strategy, model, **options)
        else:
            self._extractor = evaluation.FeatureExtractor(model, **options)
        self.uses_mode = self._extractor.uses_mode

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_weights(cls, weights_file, model_settings, settings, num_classes=1,
                     cross_modality=False, strategy=None):
        """The model of ``model_settings`` with the weights of ``weights_file``: an
        ``inference_model.h5`` (any ``num_classes``: the inference model has no classifier) or
        a ``training_model.h5`` (``num_classes`` must be the run's)."""
        weights_file = os.path.expanduser(weights_file)
        if not os.path.isfile(weights_file):
            raise FileNotFoundError(f"--weights_file_path: no such file {weights_file}.")
        models, feature_index, targets = build_models(model_settings, int(num_classes),
                                                      cross_modality=cross_modality,
                                                      strategy=strategy)
        errors = []
        for model in [models.inference_model] + list(targets):
            try:
                model.load_weights(weights_file)
                break
            except (ValueError, KeyError, OSError) as error:
                errors.append(f"{model.name}: {error}")
        else:
            raise UsageError(f"{weights_file} does not fit the model of these settings "
                             f"({model_settings.backbone_model_name}): " + " | ".join(errors))
        description = {"weights": os.path.abspath(weights_file),
                       "backbone_model_name": model_settings.backbone_model_name,
                       "image_size": [settings.image_height, settings.image_width],
                       "flip": bool(settings.flip)}
        return cls(models.inference_model, settings, feature_index, cross_modality, strategy,
                   description)

    @classmethod
    def from_run_folder(cls, folder, weights_file=INFERENCE_WEIGHTS, strategy=None):
        """The model of a ``solution.py`` run folder (its ``run_settings.json``) with its
        ``weights_file`` (default ``inference_model.h5``; a path relative to the folder)."""
        run = load_run_settings(folder)
        path = weights_file if os.path.isabs(weights_file) else os.path.join(folder, weights_file)
        return cls.from_weights(path, run.model, run.evaluation, run.num_classes,
                                run.cross_modality, strategy)

    @classmethod
    def from_savedmodel(cls, path, settings, cross_modality=False, columns=None):
        """An exported SavedModel (``reid_tf.export``): its ``serving_default`` signature, or
        for a model with a modality input its ``visible`` / ``infrared`` signatures.
        ``columns`` (a slice) keeps part of the exported feature (which concatenates every
        inference output; CM-NAS reports its second output alone)."""
        path = os.path.expanduser(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--savedmodel_path: no such SavedModel folder {path}.")
        loaded = tf.saved_model.load(path)
        signatures = loaded.signatures
        names = ("visible", "infrared") if "visible" in signatures else ("serving_default",)

        def features_of(name):
            signature = signatures[name]

            def run(images):
                features = signature(images=images)["features"]
                return features if columns is None else features[:, columns]
            return run

        functions = {name: features_of(name) for name in names}
        extractor = cls(functions[names[0]], settings, None, cross_modality,
                        description={"savedmodel": os.path.abspath(path)})
        if len(names) == 2:
            extractor._modality_functions = {"visible": functions["visible"],
                                             "infrared": functions["infrared"]}
            extractor.uses_mode = True
        extractor._savedmodel = loaded  # keeps the functions' variables alive
        return extractor

    # ------------------------------------------------------------------ extraction
    @property
    def feature_dim(self):
        return self.description.get("feature_dim")

    def _table(self, images, modality):
        if isinstance(images, pd.DataFrame):
            table = images.reset_index(drop=True)
            if "image_file_path" not in table.columns:
                raise UsageError("FeatureExtractor: the table needs an image_file_path column.")
        else:
            table = pd.DataFrame({"image_file_path": [os.fspath(path) for path in images]})
        if self.uses_mode and "modality" not in table.columns:
            if modality is None:
                raise UsageError("This model takes the modality (visible or infrared) of its "
                                 "images: give modality= or a table with a modality column.")
            table["modality"] = modality
        if "modality" in table.columns:
            unknown = sorted(set(table["modality"]) - set(MODE_BY_MODALITY))
            if unknown:
                raise UsageError(f"Unknown modality {unknown}; expected "
                                 f"{', '.join(MODE_BY_MODALITY)}.")
        return table

    def _from_paths(self, table):
        modality_functions = getattr(self, "_modality_functions", None)
        if modality_functions is None:
            return self._extractor(table)
        parts = np.zeros((len(table), 0), np.float32)
        for modality, function in modality_functions.items():
            rows = np.flatnonzero(table["modality"].to_numpy() == modality)
            if len(rows):
                self._extractor.model = function
                features = self._extractor(table.iloc[rows])
                if parts.shape[1] == 0:
                    parts = np.zeros((len(table), features.shape[1]), np.float32)
                parts[rows] = features
        return parts

    def _from_arrays(self, images, modality):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise UsageError(f"FeatureExtractor: an image array must be uint8 (N, H, W, 3) RGB, "
                             f"got {images.dtype} {images.shape}.")
        height, width = self.settings.image_height, self.settings.image_width
        resized = np.stack([resize_array(image, height, width, self.settings.resize)
                            for image in images]) if len(images) else \
            np.zeros((0, height, width, 3), np.uint8)
        mode = MODE_BY_MODALITY[modality] if self.uses_mode else 0
        if self.uses_mode and modality is None:
            raise UsageError("This model takes the modality of its images: give modality=.")
        return self._extractor.extract_arrays(resized, mode)

    def __call__(self, images, modality=None):
        """Features of ``images`` (a table, image paths or a uint8 image array), float32
        ``(N, D)`` in input order, L2-normalised when the evaluation normalises."""
        if isinstance(images, np.ndarray):
            features = self._from_arrays(images, modality)
        else:
            features = self._from_paths(self._table(images, modality))
        features = np.asarray(features, np.float32)
        if self.normalize and len(features):
            features = l2_normalize(features).astype(np.float32)
        self.description.setdefault("feature_dim", int(features.shape[1]) if features.ndim == 2
                                    else None)
        return features

