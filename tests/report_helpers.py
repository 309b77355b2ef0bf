"""Small evaluations for the report tests: image files, features and ``evaluate_features``."""
import os

import numpy as np


def _write_images(frame, colours):
    import cv2
    for path, identity, camera in zip(frame["image_file_path"], frame["identity_ID"],
                                      frame["camera_ID"]):
        image = np.zeros((48, 24, 3), np.uint8)
        image[:] = colours[identity]
        image[16:32, 6:18] = 255 - colours[identity]
        image[:4, :] = 40 * camera
        cv2.imwrite(path, image)


def _frame(folder, split, identities, per_identity, cameras, modalities=None):
    import pandas as pd
    rows = []
    for identity in identities:
        for number in range(per_identity):
            camera = cameras[(identity + number) % len(cameras)]
            modality = modalities[camera] if modalities else "visible"
            rows.append((os.path.join(folder, f"{split}_{identity}_{number}.png"), identity,
                         camera, modality, split))
    return pd.DataFrame(rows, columns=["image_file_path", "identity_ID", "camera_ID",
                                       "modality", "split"])


def _features(frame, centres, rng, noise):
    size = (len(frame), centres.shape[1])
    return (centres[frame["identity_ID"].to_numpy()] + rng.normal(scale=noise, size=size)
            ).astype(np.float32)


def standard_evaluation(folder, num_identities=30, seed=0, noise=0.9):
    """``(summary, details)`` of a Market-1501-rule evaluation: 2 queries and 5 gallery
    images per identity over 3 query and 4 gallery cameras (the summary as
    ``DatasetEvaluator`` makes it)."""
    from reid_tf.evaluation.evaluator import EvaluationOptions, evaluate_features
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    identities = range(num_identities)
    query = _frame(folder, "query", identities, 2, (1, 2, 3))
    gallery = _frame(folder, "gallery", identities, 5, (1, 2, 3, 4))
    colours = rng.integers(0, 256, (num_identities, 3))
    _write_images(query, colours)
    _write_images(gallery, colours)
    centres = rng.normal(size=(num_identities, 16))
    summary, details = evaluate_features(query, gallery, _features(query, centres, rng, noise),
                                         _features(gallery, centres, rng, noise),
                                         EvaluationOptions(protocol="standard"))
    summary.update(dataset_name="TinyMarket", protocol="standard")
    return summary, details


def sysu_evaluation(folder, num_identities=12, seed=1, num_trials=3):
    """``(summary, details)`` of a SYSU-MM01 evaluation with ``num_trials`` gallery draws:
    infrared queries (cameras 3, 6), visible gallery (cameras 1, 2, 4, 5)."""
    from reid_tf.evaluation.evaluator import EvaluationOptions, evaluate_features
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    modalities = {1: "visible", 2: "visible", 4: "visible", 5: "visible", 3: "infrared",
                  6: "infrared"}
    identities = range(num_identities)
    query = _frame(folder, "query", identities, 2, (3, 6), modalities)
    gallery = _frame(folder, "gallery", identities, 4, (1, 2, 4, 5), modalities)
    colours = rng.integers(0, 256, (num_identities, 3))
    _write_images(query, colours)
    _write_images(gallery, colours)
    centres = rng.normal(size=(num_identities, 16))
    trials = []
    for _ in range(num_trials):  # one image per identity and gallery camera pair of cameras
        rows = [rng.choice(np.flatnonzero(gallery["identity_ID"].to_numpy() == identity), 2,
                           replace=False) for identity in identities]
        trials.append(np.sort(np.concatenate(rows)))
    options = EvaluationOptions(protocol="sysu_mm01", max_rank=20)
    summary, details = evaluate_features(query, gallery, _features(query, centres, rng, 1.0),
                                         _features(gallery, centres, rng, 1.0), options,
                                         gallery_trials=trials)
    summary.update(dataset_name="TinySYSU", protocol="sysu_mm01")
    return summary, details
