"""Registry of dataset loaders: one module per dataset registers one loader function.

A loader is a function ``loader(root_folder_path, **options) -> pandas.DataFrame`` that returns
one row per image with the columns of :data:`COLUMNS`. Register it with
``@register_dataset("Name")``; ``load_dataset("Name", root)`` then finds it. To add a dataset of
your own, write one module with one registered function and import it (or list it in
``reid_tf/data/__init__.py``).
"""
import os

import pandas as pd

# The evaluation protocols a dataset can declare.
from reid_tf.runtime.choices import CROSS_MODALITY_PROTOCOLS, PROTOCOLS  # noqa: F401
from reid_tf.runtime.errors import UsageError

COLUMNS = ["image_file_path", "identity_ID", "camera_ID", "modality", "split"]
SPLITS = ("train", "query", "gallery")
MODALITIES = ("visible", "infrared")

_LOADERS = {}
_PROTOCOLS = {}


class DatasetError(UsageError):
    """Raised for a dataset that is missing, laid out wrongly or holds unparsable files."""


def register_dataset(name, protocol="standard"):
    """Decorator registering ``loader(root_folder_path, **options)`` under ``name``.

    ``protocol`` names the evaluation protocol of the dataset (one of :data:`PROTOCOLS`).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {protocol!r}; expected one of {PROTOCOLS}.")

    def decorator(loader):
        if name in _LOADERS and _LOADERS[name] is not loader:
            raise ValueError(f"A dataset named {name!r} is already registered.")
        _LOADERS[name] = loader
        _PROTOCOLS[name] = protocol
        return loader

    return decorator


def dataset_names():
    """Names accepted by :func:`load_dataset` (and by the ``--dataset_name`` flag)."""
    return sorted(_LOADERS)


def get_loader(dataset_name):
    try:
        return _LOADERS[dataset_name]
    except KeyError:
        raise DatasetError(
            f"Unknown dataset_name {dataset_name!r} (flag --dataset_name); "
            f"known datasets: {', '.join(dataset_names())}."
        ) from None


def dataset_protocol(dataset_name):
    """The evaluation protocol registered for ``dataset_name``."""
    get_loader(dataset_name)
    return _PROTOCOLS[dataset_name]


def load_dataset(dataset_name, root_folder_path, **options):
    """Load a dataset as a DataFrame with the columns of :data:`COLUMNS`.

    ``root_folder_path`` is the folder that holds the dataset folders (flag
    ``--root_folder_path``). ``options`` are dataset specific (e.g. ``trial_index``).
    """
    loader = get_loader(dataset_name)
    dataframe = loader(os.path.expanduser(str(root_folder_path)), **options)
    return validate_dataframe(dataframe, dataset_name)


def validate_dataframe(dataframe, dataset_name="dataset"):
    """Check the columns and values of a loaded dataset and return it with canonical dtypes."""
    missing = [column for column in COLUMNS if column not in dataframe.columns]
    if missing:
        raise DatasetError(f"{dataset_name}: the loaded table lacks the columns {missing}.")
    dataframe = dataframe[COLUMNS].reset_index(drop=True)
    bad_split = sorted(set(dataframe["split"]) - set(SPLITS))
    if bad_split:
        raise DatasetError(f"{dataset_name}: unknown split values {bad_split}; expected {SPLITS}.")
    bad_modality = sorted(set(dataframe["modality"]) - set(MODALITIES))
    if bad_modality:
        raise DatasetError(
            f"{dataset_name}: unknown modality values {bad_modality}; expected {MODALITIES}."
        )
    dataframe = dataframe.astype(
        {"image_file_path": str, "identity_ID": "int64", "camera_ID": "int64",
         "modality": str, "split": str}
    )
    return dataframe


def make_dataframe(rows):
    """Build a dataset table from an iterable of 5-tuples in :data:`COLUMNS` order."""
    return pd.DataFrame(list(rows), columns=COLUMNS)
