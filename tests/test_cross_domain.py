"""MSINet cross-domain training: SAM loss during training, metrics on a second domain."""
import json

import pytest

from helpers import run_solution


def test_cross_domain_run_with_sam_writes_target_metrics(tmp_path):
    cache = tmp_path / "cache"
    options = f"cache_folder_path={cache},num_train_identities=16,num_test_identities=8"
    results = run_solution(
        f"--output_folder_path={tmp_path}", "--dataset_name=Synthetic",
        f"--dataset_options={options}", "--target_dataset_name=Synthetic_Target",
        "--backbone_model_name=msinet", "--image_height=64", "--image_width=32",
        "--identity_num_per_batch=4", "--image_num_per_identity=4", "--steps_per_epoch=2",
        "--epoch_num=1", "--freeze_backbone_for_N_epochs=0", "--optimizer_name=sgd",
        "--learning_rate_mode=warmup_multistep", "--learning_rate_base=0.065",
        "--learning_rate_lower_bound=0", "--weight_decay=5e-4", "--triplet_margin=0.3",
        "--triplet_feature_normalization", "--label_smoothing=0.1", "--sam_mode=pos_neg",
        "--sam_ratio=2.0", "--augmentation_recipe=msinet", "--sampler_policy=msinet",
        "--evaluate_testing_every_N_epochs=1", "--workers=2")
    run_folder = tmp_path / "Synthetic_msinet"
    history = (run_folder / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    assert "loss_sam" in header
    sam_value = float(history[1].split(",")[header.index("loss_sam")])
    assert sam_value > 0
    target = json.loads((run_folder / "target" / "evaluation.json").read_text())
    assert target["dataset_name"] == "Synthetic_Target"
    assert 0.0 <= target["mAP"] <= 1.0 and target["num_query"] > 0
    assert results["target"]["mAP"] == pytest.approx(target["mAP"])
    assert json.loads((run_folder / "evaluation.json").read_text())["dataset_name"] == "Synthetic"
