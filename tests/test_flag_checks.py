"""Every flag is honoured or refused before any work: refused combinations name the flag and the
reason; the distance, normalisation and re-ranking flags now apply to the cross-modality
protocols; usage errors of every command line are one line without a traceback."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags as absl_flags
from sklearn.metrics import average_precision_score

from helpers import parse_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("arguments, message", [
    (["--backbone_model_name=msinet", "--region_num=3"], "--region_num=3: shapes FlipReID"),
    (["--backbone_model_name=msinet", "--pooling_mode=Max"], "--pooling_mode"),
    (["--backbone_model_name=cmnas_resnet50", "--dataset_name=Synthetic_SYSU",
      "--min_value=-1"], "--min_value"),
    (["--backbone_model_name=msinet", "--kernel_regularization_factor=0.1"],
     "--kernel_regularization_factor"),
    (["--backbone_model_name=resnet50", "--sam_mode=pos"], "needs MSINet's score maps"),
    (["--backbone_model_name=msinet", "--sam_ratio=3"], "--sam_ratio"),
    (["--backbone_model_name=resnet50", "--genotype_file_path=x.json"], "--genotype_file_path"),
    (["--backbone_model_name=resnet50", "--cmnas_config_file_path=a.cfg"], "no switchable"),
    (["--backbone_model_name=msinet", "--dataset_name=Synthetic",
      "--cmnas_config_file_path=a.cfg"], "needs a visible-infrared dataset"),
    (["--backbone_model_name=msinet", "--backbone_weights_file_path=w.h5"],
     "--backbone_weights_file_path"),
    (["--dataset_name=Synthetic", "--sp_loss_weight=2"], "--sp_loss_weight"),
    (["--optimizer_name=adam", "--weight_decay=1e-4"], "--weight_decay"),
    (["--optimizer_name=torch_adam", "--momentum=0.5"], "--momentum"),
    (["--optimizer_name=sgd", "--adam_beta_1=0.5"], "--adam_beta_1"),
    (["--ema_reset_every_N_epochs=2"], "needs --ema_decay"),
    (["--augmentation_recipe=msinet", "--patch_replacement_probability=0.3"],
     "--patch_replacement_probability"),
    (["--augmentation_recipe=flipreid", "--color_jitter"], "--color_jitter"),
    (["--dataset_name=Synthetic_SYSU", "--testing_size=0.5"], "--testing_size=0.5"),
    (["--dataset_name=Synthetic_RegDB", "--testing_size=20"], "--testing_size=20"),
    (["--dataset_name=Synthetic", "--sysu_shot=10"], "--sysu_shot"),
    (["--dataset_name=Synthetic", "--regdb_trial_index=3"], "--regdb_trial_index"),
    (["--dataset_name=Synthetic", "--evaluation_trial_num=3"], "--evaluation_trial_num"),
    (["--target_root_folder_path=/data"], "--target_root_folder_path"),
    (["--target_dataset_name=Nope"], "--target_dataset_name"),
    (["--jit_compile", "--strategy=mirrored"], "--jit_compile"),
    (["--learning_rate_milestones=10,x"], "--learning_rate_milestones"),
    (["--learning_rate_base=0"], "--learning_rate_base"),
    (["--momentum=1.0", "--optimizer_name=sgd"], "--momentum"),
    (["--test_batch_size=-1"], "--test_batch_size"),
    (["--sysu_shot=0", "--dataset_name=Synthetic_SYSU"], "--sysu_shot"),
    (["--use_re_ranking", "--rerank_memory_budget=0"], "--rerank_memory_budget=0.0: must be > 0"),
    (["--use_re_ranking", "--rerank_memory_budget=inf"], "must be a finite number of GiB"),
    (["--rerank_memory_budget=2"], "--use_re_ranking is off"),
])
def test_refused_values_name_the_flag_and_reason(arguments, message):
    from reid_tf.flags import validate_flags
    with pytest.raises(absl_flags.ValidationError, match=message):
        validate_flags(parse_flags("--dataset_name=Synthetic", *arguments))


def test_honoured_combinations_pass():
    from reid_tf.flags import validate_flags
    for arguments in (["--dataset_name=Synthetic_SYSU", "--use_re_ranking",
                       "--distance_metric=euclidean", "--nofeature_normalization"],
                      ["--dataset_name=Synthetic", "--testing_size=0.5"],
                      ["--dataset_name=Synthetic_SYSU", "--sysu_shot=10"],
                      ["--backbone_model_name=msinet", "--sam_mode=pos", "--sam_ratio=2"]):
        validate_flags(parse_flags(*arguments))


def test_missing_files_are_named_before_any_work(tmp_path):
    from reid_tf.cli.validation import check_files
    for flag in ("--pretrained_model_file_path", "--backbone_weights_file_path"):
        with pytest.raises(FileNotFoundError, match=flag):
            check_files(parse_flags(f"{flag}={tmp_path / 'none.h5'}"))
    with pytest.raises(FileNotFoundError, match="--genotype_file_path"):
        check_files(parse_flags("--backbone_model_name=msinet",
                                f"--genotype_file_path={tmp_path / 'g.json'}"))
    check_files(parse_flags("--backbone_model_name=msinet", "--genotype_file_path=msmt"))


# ------------------------------------------------------------------------------ cross-modality
def _numpy_rank1_and_map(distances, q_pids, g_pids):
    """Rank-1 and mAP of a distance matrix without camera rules, by numpy and scikit-learn."""
    order = np.argsort(distances, axis=1, kind="stable")
    rank1 = np.mean(g_pids[order[:, 0]] == q_pids)
    aps = [average_precision_score(g_pids == q_pids[i], -distances[i])
           for i in range(len(q_pids))]
    return rank1, float(np.mean(aps))


def _case(seed=0):
    rng = np.random.default_rng(seed)
    identities = np.repeat(np.arange(6), 3)
    centres = rng.normal(size=(6, 8))
    gallery = centres[identities] + 0.9 * rng.normal(size=(18, 8))
    # Queries of very different norms: unnormalised euclidean ranks differently.
    query = (centres + 0.9 * rng.normal(size=(6, 8))) * rng.uniform(0.2, 5.0, (6, 1))
    return query.astype(np.float32), gallery.astype(np.float32), np.arange(6), identities


def test_regdb_honours_the_distance_and_normalisation():
    from reid_tf.evaluation.protocols import evaluate_regdb
    query, gallery, q_pids, g_pids = _case()
    default = evaluate_regdb(query, gallery, q_pids, g_pids)
    euclidean = evaluate_regdb(query, gallery, q_pids, g_pids, metric="euclidean",
                               normalize=False)
    unit_q = query / np.linalg.norm(query, axis=1, keepdims=True)
    unit_g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    expected_default = _numpy_rank1_and_map(-unit_q @ unit_g.T, q_pids, g_pids)
    raw = np.sqrt(((query[:, None] - gallery[None]) ** 2).sum(-1))
    expected_euclidean = _numpy_rank1_and_map(raw, q_pids, g_pids)
    np.testing.assert_allclose([default["rank1"], default["mAP"]], expected_default, atol=1e-6)
    np.testing.assert_allclose([euclidean["rank1"], euclidean["mAP"]], expected_euclidean,
                               atol=1e-6)
    assert expected_default != expected_euclidean  # the flag changes what is measured


def test_cross_modality_re_ranking_applies():
    from reid_tf.evaluation.distance import pairwise_distance
    from reid_tf.evaluation.metrics import sysu_mm01_cmc_map
    from reid_tf.evaluation.protocols import evaluate_sysu_mm01
    from reid_tf.evaluation.reranking import re_ranking
    query, gallery, q_pids, g_pids = _case(1)
    q_cams, g_cams = np.full(6, 3), np.tile([1, 2, 4], 6)
    trials = [np.arange(18)]
    plain = evaluate_sysu_mm01(query, q_pids, q_cams, gallery, g_pids, g_cams, trials)
    ranked = evaluate_sysu_mm01(query, q_pids, q_cams, gallery, g_pids, g_cams, trials,
                                re_ranking=True)
    unit_q = query / np.linalg.norm(query, axis=1, keepdims=True)
    unit_g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    cosine = 1.0 - unit_q @ unit_g.T  # the reference's ranking, as non-negative distances
    expected = re_ranking(cosine, 1.0 - unit_q @ unit_q.T, 1.0 - unit_g @ unit_g.T)
    reference = sysu_mm01_cmc_map(expected, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert ranked["mAP"] == pytest.approx(reference["mAP"], abs=1e-6)
    assert plain["mAP"] == pytest.approx(sysu_mm01_cmc_map(
        pairwise_distance(unit_q, unit_g, metric="neg_dot"), q_pids, g_pids, q_cams, g_cams,
        max_rank=20)["mAP"], abs=1e-6)
    assert ranked["mAP"] != pytest.approx(plain["mAP"], abs=1e-4)


def test_evaluation_settings_leave_the_cross_modality_default_to_the_protocol():
    from reid_tf.cli.settings import evaluation_settings
    default = evaluation_settings(parse_flags("--dataset_name=Synthetic_SYSU"))
    assert default.metric is None and default.normalize is None
    given = evaluation_settings(parse_flags("--dataset_name=Synthetic_SYSU",
                                            "--distance_metric=euclidean",
                                            "--nofeature_normalization", "--use_re_ranking"))
    assert (given.metric, given.normalize, given.use_re_ranking) == ("euclidean", False, True)


# ------------------------------------------------------------------------------ command lines
def _command(*arguments, timeout=120):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.time()
    completed = subprocess.run([sys.executable, *arguments], cwd=ROOT, env=environment,
                               capture_output=True, text=True, timeout=timeout)
    return completed, time.time() - started


@pytest.mark.parametrize("arguments, message", [
    (["solution.py", "--learning_rate_mode=exponential"], "--learning_rate_mode"),
    (["solution.py", "--epoch_num=abc"], "--epoch_num"),
    (["solution.py", "--no_such_flag"], "no_such_flag"),
    (["-m", "nas.search", "--search_milestones=1,x"], "--search_milestones"),
    (["-m", "nas.search", "--dataset_name=Nope", "--print_config_only"], "--dataset_name"),
    (["-m", "reid_tf.convert", "--architecture=msinet", "--source_file_path=/no/file.pth",
      "--output_file_path=/tmp/x.h5"], "/no/file.pth"),
    (["-m", "reid_tf.index", "--features_folders=/no/features", "--index_folder=/tmp/x"],
     "--features_folders: no such folder /no/features"),
    (["-m", "reid_tf.retrieve", "--index_folder=/no/index", "--query_features_folder=/x",
      "--results_csv=/tmp/x.csv"], "--index_folder: no such folder /no/index"),
])
def test_usage_errors_are_one_line_without_traceback(arguments, message):
    completed, seconds = _command(*arguments)
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in completed.stderr
    if arguments[0] == "solution.py":
        assert seconds < 5.0, f"{arguments}: {seconds:.1f} s"


def test_missing_dataset_folder_is_one_line_and_verbosity_shows_the_traceback(tmp_path):
    arguments = ["solution.py", "--dataset_name=Market1501",
                 f"--root_folder_path={tmp_path / 'nowhere'}",
                 f"--output_folder_path={tmp_path}"]
    completed, _ = _command(*arguments)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error: Market1501")
    assert "--root_folder_path" in completed.stderr
    debugging, _ = _command(*arguments, "--verbosity=1")
    assert debugging.returncode != 0 and "Traceback" in debugging.stderr
