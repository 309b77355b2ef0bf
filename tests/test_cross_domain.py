"""MSINet cross-domain training with the paper's flagfile (``market1501_to_msmt17.flags``):
started from a pretrained MSINet of another class count without SAM (copied by name and shape,
the rest listed), SAM loss weighted by ``--sam_ratio`` during training, metrics of the second
domain computed on the second domain's images."""
import json
import os

import numpy as np
import pytest

from dataset_trees import write_market1501, write_msmt17
from helpers import run_solution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _average_precision(distances, query_id, query_camera, gallery_ids, gallery_cameras):
    """Market-1501 AP of one query, written out: same-camera same-identity images removed."""
    keep = ~((gallery_ids == query_id) & (gallery_cameras == query_camera))
    order = np.argsort(distances[keep], kind="stable")
    matches = (gallery_ids[keep] == query_id)[order]
    hits = np.flatnonzero(matches)
    return float(np.mean([(index + 1) / (position + 1) for index, position in enumerate(hits)]))


def test_market1501_to_msmt17_flagfile_from_another_class_count(tmp_path):
    import reid_tf  # noqa: F401
    from reid_tf.models.msinet import build_msinet_models
    # The pretrained network: MSINet for 9 classes without SAM (the run has 2 and SAM).
    source = build_msinet_models(os.path.join(ROOT, "configs/genotypes/msmt.json"), 9,
                                 input_shape=(64, 32, 3), sam=False)
    pretrained = str(tmp_path / "msinet_9_classes.h5")
    source.training_model.save_weights(pretrained)
    write_market1501(str(tmp_path / "data"))
    write_msmt17(str(tmp_path / "data"))

    results = run_solution(
        f"--flagfile={ROOT}/configs/msinet/market1501_to_msmt17.flags",
        f"--root_folder_path={tmp_path / 'data'}", f"--output_folder_path={tmp_path / 'out'}",
        f"--pretrained_model_file_path={pretrained}", "--image_height=64", "--image_width=32",
        "--identity_num_per_batch=2", "--image_num_per_identity=2", "--steps_per_epoch=1",
        "--epoch_num=1", "--evaluate_testing_every_N_epochs=1", "--test_batch_size=8",
        "--save_data_to_disk", "--workers=1")

    # Loaded by name and shape: every weight but the classifiers and SAM's two convolutions.
    sam_model = build_msinet_models(os.path.join(ROOT, "configs/genotypes/msmt.json"), 2,
                                    input_shape=(64, 32, 3), sam=True).training_model
    source_shapes = {weight.name: tuple(weight.shape) for weight in source.training_model.weights}
    expected_missing = sorted(weight.name for weight in sam_model.weights
                              if source_shapes.get(weight.name) != tuple(weight.shape))
    summary = results["pretrained"]
    assert summary["match"] == "by_name_and_shape"
    assert sorted(summary["not_loaded"]) == expected_missing
    assert {"sam_query_conv/kernel:0", "sam_key_conv/kernel:0"} <= set(expected_missing)
    assert any(name.startswith("classifier/") for name in expected_missing)
    assert summary["loaded"] == len(sam_model.weights) - len(expected_missing)

    run_folder = tmp_path / "out" / "Market1501_msinet"
    header, row = [line.split(",") for line in
                   (run_folder / "history.csv").read_text().splitlines()[:2]]
    terms = {name: float(value) for name, value in zip(header, row) if name.startswith("loss")}
    assert terms["loss_sam"] > 0
    # The SAM term is part of the optimised total.
    parts = [terms[name] for name in ("loss_triplet", "loss_classification", "loss_sam")]
    assert terms["loss"] == pytest.approx(sum(parts), rel=1e-5)

    # The SAM weight applies: the objective of these flags is --sam_ratio (2.0) times the loss.
    import tensorflow as tf
    from reid_tf.cli import settings as cli_settings
    from reid_tf.flags import FLAGS
    from reid_tf.losses.objective import Objective
    from reid_tf.losses.sam import spatial_alignment_loss
    config = cli_settings.objective_config(FLAGS, False)
    scores = tf.constant(np.random.default_rng(0).uniform(0, 1, (5, 4, 6)), tf.float32)
    labels = tf.constant([0, 0, 1, 1])
    outputs = {"embeddings": [tf.ones((4, 3))], "sam_scores": scores}
    assert config.sam_mode == "pos_neg" and config.sam_ratio == 2.0
    assert float(Objective(config)(outputs, labels)["sam"]) == pytest.approx(
        2.0 * float(spatial_alignment_loss(scores, labels, "pos_neg")), rel=1e-6)

    # The target metrics come from MSMT17's test images (1 query of identity 0 on camera 15;
    # gallery: identity 0 on camera 2, identity 4 on camera 7), not Market-1501's.
    target = json.loads((run_folder / "target" / "evaluation.json").read_text())
    assert target["dataset_name"] == "MSMT17" and target["num_query"] == 1
    data = np.load(run_folder / "target" / "test.npz")
    np.testing.assert_array_equal(data["query_identity_ID_array"], [0])
    np.testing.assert_array_equal(sorted(data["gallery_identity_ID_array"]), [0, 4])
    query, gallery = data["query_image_features_array"], data["gallery_image_features_array"]
    query = query / np.linalg.norm(query, axis=1, keepdims=True)  # --feature_normalization
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    distances = ((query[:, None] - gallery[None]) ** 2).sum(-1)  # --distance_metric sqeuclidean
    expected_map = _average_precision(distances[0], 0, data["query_camera_ID_array"][0],
                                      data["gallery_identity_ID_array"],
                                      data["gallery_camera_ID_array"])
    assert target["mAP"] == pytest.approx(expected_map, abs=1e-6)
    assert results["target"]["mAP"] == pytest.approx(target["mAP"])
    source_record = json.loads((run_folder / "evaluation.json").read_text())
    assert source_record["dataset_name"] == "Market1501" and source_record["num_query"] == 2
    # Market-1501's junk identity -1 (one train, one gallery image) is left out, said aloud.
    recorded = json.loads((run_folder / "results.json").read_text())
    assert [(r["source"], r["identities"], r["images"]) for r in recorded["left_out"]] == [
        ("Market1501", 1, 2)]
    assert recorded["pretrained"]["not_loaded"] == summary["not_loaded"]
