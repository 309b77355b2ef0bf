"""Mean ± standard deviation over trials (VehicleID splits, SYSU-MM01 gallery draws, RegDB's
two directions), on trials whose metrics are known by hand."""
import numpy as np
import pytest

from reid_tf.evaluation import protocols
from reid_tf.evaluation.dataset_evaluator import format_metrics, print_metrics
from reid_tf.evaluation.evaluator import summarize_result

# Four 1-D features; identities 0, 0, 1, 1.
FEATURES = np.array([[0.0], [5.0], [4.0], [20.0]])
PIDS = np.array([0, 0, 1, 1])
# Trial A: query 0 (at 0) against 1 (at 5, same id) and 2 (at 4... farther? no: |0-4| = 4 <
# |0-5| = 5, so the other identity comes first) -> rank-1 0, AP 1/2.
# Trial B: query 2 (at 4) against 3 (at 20, same id) and 0 (at 0) -> 0 first: rank-1 0, AP 1/2.
# Trial C: query 3 (at 20) against 2 (at 4, same id) and 0 (at 0) -> 2 first: rank-1 1, AP 1.
TRIALS = [([0], [1, 2]), ([2], [3, 0]), ([3], [2, 0])]
RANK1 = [0.0, 0.0, 1.0]
AP = [0.5, 0.5, 1.0]


def test_vehicleid_trials_mean_and_sample_std():
    result = protocols.evaluate_vehicleid(FEATURES, PIDS, TRIALS, metric="euclidean")
    assert [trial["rank1"] for trial in result["per_trial"]] == RANK1
    assert [trial["mAP"] for trial in result["per_trial"]] == pytest.approx(AP)
    assert result["rank1"] == pytest.approx(1 / 3)
    assert result["std"]["rank1"] == pytest.approx(np.std(RANK1, ddof=1))  # 0.57735
    assert result["std"]["rank1"] == pytest.approx(np.sqrt(1 / 3))
    assert result["mAP"] == pytest.approx(2 / 3)
    assert result["std"]["mAP"] == pytest.approx(np.sqrt(1 / 12))  # by hand: s^2 = 1/12
    summary = summarize_result(result)
    assert summary["over_trials"]["std"] == pytest.approx(result["std"])
    assert summary["over_trials"]["mean"]["mAP"] == pytest.approx(2 / 3)
    assert summary["num_trials"] == 3


def test_trial_statistics_of_two_directions():
    statistics = protocols.trial_statistics([{"rank1": 0.6, "mAP": 0.5},
                                             {"rank1": 0.8, "mAP": 0.3}])
    assert statistics["num_trials"] == 2
    assert statistics["mean"] == pytest.approx({"rank1": 0.7, "mAP": 0.4})
    # two values a, b: sample std |a - b| / sqrt(2)
    assert statistics["std"] == pytest.approx({"rank1": 0.2 / np.sqrt(2),
                                               "mAP": 0.2 / np.sqrt(2)})
    assert protocols.trial_statistics([{"mAP": 0.5}])["std"] == {"mAP": 0.0}


def test_printed_table_shows_mean_and_std(capsys):
    result = protocols.evaluate_vehicleid(FEATURES, PIDS, TRIALS, metric="euclidean")
    print_metrics(summarize_result(result), "VehicleID evaluation")
    line = capsys.readouterr().out.strip()
    assert line.startswith("[VehicleID evaluation] rank1 33.33% ± 57.74, ")
    assert "mAP 66.67% ± 28.87" in line and line.endswith("(mean ± std over 3 trials)")
    assert format_metrics({"rank1": 0.5}) == "rank1 50.00%"
