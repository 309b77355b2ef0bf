"""Datasets, the embedded synthetic dataset, PK samplers, augmentation and tf.data pipelines.

``load_dataset(dataset_name, root_folder_path, **options)`` returns one row per image with the
columns ``image_file_path, identity_ID, camera_ID, modality, split``. Each dataset lives in its own
module and registers its loader with :func:`register_dataset`.
"""
from reid_tf.data.registry import (  # noqa: F401
    COLUMNS,
    DatasetError,
    dataset_names,
    dataset_protocol,
    load_dataset,
    register_dataset,
    validate_dataframe,
)

# Importing a dataset module registers its loader.
from reid_tf.data import (  # noqa: F401,E402
    market1501,
    dukemtmc_reid,
    msmt17,
    veri776,
    vehicleid,
    sysu_mm01,
    regdb,
    custom,
    synthetic,
)
