"""``run_settings.json``: what a run folder needs to rebuild its inference model and extract
features as its evaluation did, without the command line that made it.

``solution.py`` writes it at the start of every run (:func:`save_run_settings`); the feature
extractor reads it (:func:`load_run_settings`). It holds the
:class:`~reid_tf.models.settings.ModelSettings`, the
:class:`~reid_tf.evaluation.settings.EvaluationSettings`, the number of training identities
(the classifier's width, so the weights file fits) and whether the data is visible-infrared.
"""
import dataclasses
import json
import os

from reid_tf.evaluation.settings import EvaluationSettings
from reid_tf.models.settings import ModelSettings
from reid_tf.runtime.errors import UsageError
from reid_tf.runtime.files import write_json

RUN_SETTINGS_FILE = "run_settings.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The settings of a run folder (module docstring)."""

    model: ModelSettings
    evaluation: EvaluationSettings
    num_classes: int
    cross_modality: bool = False
    dataset_name: str = ""


def _absolute_file_paths(model_settings):
    """The model settings as a dictionary whose file paths (``*_file_path`` fields naming an
    existing file, e.g. the genotype) are absolute, so that the run folder can be used from
    any working directory."""
    values = dataclasses.asdict(model_settings)
    for name, value in values.items():
        if name.endswith("_file_path") and value and os.path.isfile(value):
            values[name] = os.path.abspath(value)
    return values


def save_run_settings(folder, run_settings):
    """Write ``folder/run_settings.json`` (atomically); returns its path."""
    record = {"format_version": FORMAT_VERSION,
              "model": _absolute_file_paths(run_settings.model),
              "evaluation": dataclasses.asdict(run_settings.evaluation),
              "num_classes": int(run_settings.num_classes),
              "cross_modality": bool(run_settings.cross_modality),
              "dataset_name": run_settings.dataset_name}
    path = os.path.join(folder, RUN_SETTINGS_FILE)
    write_json(path, record, indent=2)
    return path


def _fields(cls, values, path):
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"{path}: unknown {cls.__name__} fields {unknown} (written by another "
                         "version of reid-tf?).")
    return cls(**values)


def load_run_settings(folder):
    """The :class:`RunSettings` of a run folder; a clear error when it has none."""
    path = os.path.join(os.path.expanduser(folder), RUN_SETTINGS_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"{path} not found: the run folder was not written by solution.py of "
                         "this version; give the model flags and the weights file instead.")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: cannot be read ({error}).") from None
    if record.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path}: format version {record.get('format_version')!r}, this "
                         f"reid-tf reads {FORMAT_VERSION}.")
    return RunSettings(model=_fields(ModelSettings, record["model"], path),
                       evaluation=_fields(EvaluationSettings, record["evaluation"], path),
                       num_classes=int(record["num_classes"]),
                       cross_modality=bool(record["cross_modality"]),
                       dataset_name=str(record.get("dataset_name", "")))
