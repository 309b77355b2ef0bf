"""CM-NAS trained and evaluated end to end through ``reid_tf.cli.train.run`` (cmnas.md §6-9).

Two tiny runs (synthetic SYSU-MM01 and RegDB layouts, 64x32 images, P = 2, K = 2, one or two
steps) go through the real flag parsing, data pipeline, model factory, trainer and evaluator;
the trainer is only wrapped to keep a handle on it and on the initial weights. What the runs
write is then checked against numbers computed here: the first Adam step per parameter group,
the EMA shadow after one step, the never-selected BN copies, and the SYSU-MM01 / RegDB metrics
recomputed in numpy from features extracted with the trained model.
"""
import reid_tf  # noqa: F401  (selects tf-keras)

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from reid_tf.cli import train as run_module
from reid_tf.cli.settings import evaluation_settings
from reid_tf.data import load_dataset
from reid_tf.data.pipeline import make_test_dataset
from reid_tf.evaluation.dataset_evaluator import DatasetEvaluator
from reid_tf.flags import define_flags, validate_flags
from reid_tf.models import cmnas
from reid_tf.training import trainer as trainer_module
from reid_tf.training.schedules import LearningRateSchedule, parse_milestones

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHT, WIDTH = 64, 32
# Stem and layer1 split, the rest shared: every layer has unselected BN sets.
CONFIG = os.path.join(REPO, "configs", "cmnas", "split_stem_layer1.cfg")
SIZES = {
    "Synthetic_SYSU": dict(num_train_identities=6, num_val_identities=2, num_test_identities=4,
                           images_per_camera=2, image_size=(HEIGHT, WIDTH)),
    "Synthetic_RegDB": dict(num_identities=8, images_per_identity=3, image_size=(HEIGHT, WIDTH)),
}
BASE_LR = 0.01
WARMUP_FACTOR = 0.01


def reference_sysu_gallery_trials(pool, trials=range(10), cameras=(1, 2, 4, 5)):
    """The CM-NAS reference's single-shot gallery draw, written independently of the loader:
    ``random.seed(trial)``, then for every identity (ascending) and camera (in order) with
    images, ``random.choice`` over the path-sorted files. Returns row positions into ``pool``."""
    import random
    state = random.getstate()
    try:
        result = []
        for trial in trials:
            random.seed(trial)
            chosen = []
            for identity in sorted(set(pool["identity_ID"])):
                for camera in cameras:
                    rows = pool.index[(pool["identity_ID"] == identity)
                                      & (pool["camera_ID"] == camera)]
                    if len(rows):
                        files = sorted(rows, key=lambda row: pool.at[row, "image_file_path"])
                        chosen.append(random.choice(files))
            result.append(np.asarray(chosen, dtype=np.int64))
        return result
    finally:
        random.setstate(state)

def cmnas_arguments(dataset_name, output_folder, **overrides):
    """The flags of configs/cmnas/{sysu,regdb}.flags, shrunk to a tiny run."""
    values = {
        "dataset_name": dataset_name, "backbone_model_name": "cmnas_resnet50",
        "cmnas_config_file_path": CONFIG, "image_height": HEIGHT, "image_width": WIDTH,
        "identity_num_per_batch": 2, "image_num_per_identity": 2, "steps_per_epoch": 1,
        "epoch_num": 1, "freeze_backbone_for_N_epochs": 0, "optimizer_name": "torch_adam",
        "adam_beta_1": 0.5, "adam_beta_2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 5e-4,
        "backbone_learning_rate_multiplier": 0.1, "learning_rate_mode": "warmup_multistep",
        "learning_rate_base": BASE_LR, "learning_rate_warmup_epochs": 10,
        "learning_rate_warmup_factor": WARMUP_FACTOR, "learning_rate_milestones": "40,70",
        "learning_rate_lower_bound": 0, "label_smoothing": 0, "triplet_margin": 0.4,
        "sp_loss_weight": 5.0, "cmmd_loss_weight": 0.05, "augmentation_recipe": "cmnas",
        "random_erasing_probability": 0.5, "ema_decay": 0.968, "ema_reset_every_N_epochs": 1,
        "evaluate_testing_every_N_epochs": 1, "test_batch_size": 16, "workers": 1,
        "output_folder_path": str(output_folder), "export_formats": "h5",
    }
    values.update(overrides)
    return [f"--{name}={value}" for name, value in values.items()]


def parse_flags(arguments):
    if "backbone_model_name" not in flags.FLAGS:
        define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["solution.py"] + list(arguments))
    return flags.FLAGS


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic_cache"))


@pytest.fixture(scope="module", autouse=True)
def without_graph_optimizer():
    """Grappler takes seconds on the large training graph and changes no result: skip it in
    this module (restored afterwards)."""
    previous = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer",
                                                                   False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": previous})


def load_tiny(dataset_name, cache_folder, **options):
    return load_dataset(dataset_name, "", cache_folder_path=cache_folder,
                        **SIZES[dataset_name], **options)


def run_recorded(monkeypatch, cache_folder, arguments):
    """``run(FLAGS)`` on the tiny dataset; returns (results, trainer, initial values by id)."""
    original_load = run_module.load_dataset

    def load_tiny_dataset(name, root_folder_path, **options):
        return original_load(name, root_folder_path, cache_folder_path=cache_folder,
                             **SIZES[name], **options)

    recorded = {}

    class RecordingTrainer(trainer_module.Trainer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            recorded["trainer"] = self
            recorded["initial"] = {id(v): v.numpy().copy()
                                   for v in self.training_model.weights}

    monkeypatch.setattr(run_module, "load_dataset", load_tiny_dataset)
    monkeypatch.setattr(trainer_module, "Trainer", RecordingTrainer)
    results = run_module.run(parse_flags(arguments))
    return results, recorded["trainer"], recorded["initial"]


def extract(inference_model, frame):
    """``[global_feat, feat]`` of ``frame``'s rows: mode 1 for visible, 2 for infrared images."""
    features = [np.zeros((len(frame), 2048), np.float32) for _ in range(2)]
    for modality, mode in (("visible", 1), ("infrared", 2)):
        rows = np.flatnonzero(frame["modality"].to_numpy() == modality)
        if not len(rows):
            continue
        chunks = [inference_model([images, mode], training=False)
                  for images in make_test_dataset(frame.iloc[rows], HEIGHT, WIDTH, 16)]
        for index in range(2):
            features[index][rows] = np.concatenate([chunk[index].numpy() for chunk in chunks])
    return features


def rank1_and_map(query, gallery, q_pids, g_pids, q_cams=None, g_cams=None):
    """Rank-1 and mAP with cosine similarity; with cameras, SYSU's rule (camera-3 queries
    never see camera-2 gallery images). Queries without a true match are skipped."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    similarity = query @ gallery.T
    hits, precisions = [], []
    for i in range(len(query)):
        keep = np.ones(len(gallery), bool)
        if q_cams is not None and q_cams[i] == 3:
            keep = g_cams != 2
        order = np.flatnonzero(keep)[np.argsort(-similarity[i, keep], kind="stable")]
        relevant = g_pids[order] == q_pids[i]
        if not relevant.any():
            continue
        hits.append(float(relevant[0]))
        positions = np.flatnonzero(relevant) + 1
        precisions.append(np.mean(np.arange(1, len(positions) + 1) / positions))
    return np.mean(hits), np.mean(precisions)


# ------------------------------------------------------------------------------ SYSU-MM01
def test_sysu_run_writes_metrics_of_post_and_pre_bnneck_features(tmp_path, monkeypatch,
                                                                  cache_folder):
    arguments = cmnas_arguments("Synthetic_SYSU", tmp_path, epoch_num=2, steps_per_epoch=1,
                                evaluate_testing_every_N_epochs=2)
    results, trainer, _ = run_recorded(monkeypatch, cache_folder, arguments)
    run_folder = tmp_path / "Synthetic_SYSU_cmnas_resnet50"
    record = json.loads((run_folder / "evaluation.json").read_text())
    assert record["protocol"] == "sysu_mm01" and record["tag"] == "training_B_epoch2"
    assert record["num_trials"] == 10 and len(record["trials"]) == 10
    for key in ("rank1", "mAP", "mINP"):  # mean ± sample std over the 10 gallery draws
        values = [trial[key] for trial in record["trials"]]
        assert record[key] == pytest.approx(np.mean(values))
        assert record["over_trials"]["std"][key] == pytest.approx(np.std(values, ddof=1))
    assert results["trained"]["rank1"] == record["rank1"]
    assert (run_folder / "training_model.h5").is_file()
    # EMA -> live reset every epoch but after the last: the epoch-1 checkpoint holds live
    # weights equal to the shadow, the final one the live weights that were evaluated.
    checkpoints = trainer.checkpoint_manager.checkpoints
    assert [path.rsplit("-", 1)[1] for path in checkpoints] == ["1", "2"]
    live = trainer.ema.variables_tracked
    for path, equal in zip(checkpoints, (True, False)):
        trainer.checkpoint.restore(path).assert_existing_objects_matched()
        same = [np.array_equal(v.numpy(), s.numpy()) for v, s in zip(live, trainer.ema.shadow)]
        assert all(same) if equal else not all(same)
    with open(run_folder / "history.csv") as handle:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(handle)]
    # §8.2: factor 0.01 at epoch index 0, 0.01 * 0.9 + 0.1 = 0.109 at epoch index 1.
    np.testing.assert_allclose(rates, [BASE_LR * 0.01, BASE_LR * 0.109], rtol=1e-12)

    # Recompute the metrics from features of the trained (live) model: post-BNNeck `feat`
    # (output 1) for the main entry, pre-BNNeck `global_feat` (output 0) for `pre_bnneck`;
    # L2-normalised dot product, camera-3 queries without camera-2 images, gallery trials
    # 0..9 drawn with Python's random, distinct-identity CMC@1 = top-1 identity.
    frame = load_tiny("Synthetic_SYSU", cache_folder)
    query = frame[frame["split"] == "query"].reset_index(drop=True)
    pool = frame[frame["split"] == "gallery"].reset_index(drop=True)
    assert set(query["camera_ID"]) <= {3, 6} and set(pool["camera_ID"]) <= {1, 2, 4, 5}
    trials = reference_sysu_gallery_trials(pool)
    model = trainer.models.inference_model
    query_outputs, pool_outputs = extract(model, query), extract(model, pool)
    for entry, output_index in ((record, 1), (record["pre_bnneck"], 0)):
        q_features, g_features = query_outputs[output_index], pool_outputs[output_index]
        metrics = np.array([rank1_and_map(
            q_features, g_features[trial], query["identity_ID"].to_numpy(),
            pool["identity_ID"].to_numpy()[trial], query["camera_ID"].to_numpy(),
            pool["camera_ID"].to_numpy()[trial]) for trial in trials])
        np.testing.assert_allclose([entry["rank1"], entry["mAP"]], metrics.mean(axis=0),
                                   atol=1e-6)

    # --sysu_search_mode indoor / --sysu_shot 2 select the gallery cameras and shots.
    values = parse_flags(arguments + ["--sysu_search_mode=indoor", "--sysu_shot=2"])
    indoor = load_tiny("Synthetic_SYSU", cache_folder, search_mode="indoor", shot=2)
    evaluator = DatasetEvaluator(evaluation_settings(values), "Synthetic_SYSU", "", indoor,
                                 str(tmp_path / "indoor"), feature_index=1,
                                 secondary_features={"pre_bnneck": 0})
    summary = evaluator(model, "indoor", write=False)
    pool = indoor[indoor["split"] == "gallery"]
    assert set(pool["camera_ID"]) == {1, 2}
    counts = pool.groupby(["identity_ID", "camera_ID"]).size().to_numpy()
    assert summary["num_gallery"] == int(np.minimum(counts, 2).sum())
    assert summary["num_trials"] == 10 and "pre_bnneck" in summary


# ------------------------------------------------------------------------------ RegDB
def test_regdb_run_one_step_groups_ema_and_metrics(tmp_path, monkeypatch, cache_folder):
    results, trainer, initial = run_recorded(
        monkeypatch, cache_folder, cmnas_arguments("Synthetic_RegDB", tmp_path))
    run_folder = tmp_path / "Synthetic_RegDB_cmnas_resnet50"
    models = trainer.models
    groups = cmnas.variable_groups(models)
    ids = lambda variables: {id(v) for v in variables}  # noqa: E731

    # Parameter groups: backbone = convs + switchable BNs at 0.1 x lr, head = BNNeck gamma +
    # classifier at lr; the backbone optimiser also holds the never-selected BN copies, which
    # get no gradient.
    by_name = {name: (multiplier, optimizer, members)
               for name, multiplier, optimizer, members in trainer.groups}
    assert set(by_name) == {"backbone", "head"} and by_name["backbone"][0] == 0.1
    assert by_name["head"][2] == ids(groups.head)
    assert ids(groups.backbone) <= by_name["backbone"][2]
    assert by_name["backbone"][2] - ids(groups.backbone) <= ids(groups.frozen)
    head_lr = BASE_LR * WARMUP_FACTOR  # epoch index 0
    np.testing.assert_allclose(float(by_name["head"][1].learning_rate), head_lr, rtol=1e-6)
    np.testing.assert_allclose(float(by_name["backbone"][1].learning_rate), 0.1 * head_lr,
                               rtol=1e-6)
    assert int(by_name["head"][1].iterations) == 1

    # One Adam step (betas 0.5/0.999, coupled decay): m_hat = g', v_hat = g'^2, so
    # |dw| = lr * |g'| / (|g'| + 1e-8) <= lr, and ~lr wherever |g'| >> 1e-8.
    def step_sizes(variables):
        return np.concatenate([np.abs(v.numpy() - initial[id(v)]).ravel() for v in variables])

    for variables, rate in ((groups.backbone, 0.1 * head_lr), (groups.head, head_lr)):
        sizes = step_sizes(variables)
        values = np.concatenate([v.numpy().ravel() for v in variables])
        assert np.all(sizes <= rate * (1 + 1e-5) + np.spacing(np.abs(values)))
        assert np.mean(sizes > 0.9 * rate) > 0.95
    ratio = np.median(step_sizes(groups.backbone)) / np.median(step_sizes(groups.head))
    np.testing.assert_allclose(ratio, 0.1, rtol=0.01)

    # Never-selected BN copies keep every value; the BNNeck has no shift at all (beta = 0).
    for variable in groups.frozen:
        np.testing.assert_array_equal(variable.numpy(), initial[id(variable)], variable.name)
    model = models.training_model
    assert model.get_layer("bnneck").beta is None
    assert not [v.name for v in model.weights if v.name.startswith("bnneck/beta")]
    stem = model.get_layer("bn1")  # split: the visible and thermal statistics moved
    assert not np.array_equal(stem.visible_bn.moving_mean.numpy(),
                              initial[id(stem.visible_bn.moving_mean)])

    # EMA over the whole state (BN statistics included): shadow = 0.968 init + 0.032 live.
    # The final epoch is not followed by the EMA -> live reset, so live != shadow here.
    ema = trainer.ema
    tracked = ema.variables_tracked
    assert len(tracked) == len([v for v in model.weights if v.dtype.is_floating])
    assert any("moving_mean" in v.name for v in tracked)
    differences = []
    for variable, shadow in zip(tracked, ema.shadow):
        start = initial[id(variable)].astype(np.float64)
        expected = 0.968 * start + 0.032 * variable.numpy().astype(np.float64)
        np.testing.assert_allclose(shadow.numpy(), expected, rtol=1e-6, atol=1e-9,
                                   err_msg=variable.name)
        differences.append(np.abs(shadow.numpy() - variable.numpy()).max())
    assert max(differences) > 0
    # ... and the checkpoint holds the shadow.
    reader = tf.train.load_checkpoint(str(run_folder / "checkpoint"))
    stem_index = next(i for i, v in enumerate(tracked) if v is stem.visible_bn.moving_mean)
    np.testing.assert_array_equal(
        reader.get_tensor(f"ema/shadow/{stem_index}/.ATTRIBUTES/VARIABLE_VALUE"),
        ema.shadow[stem_index].numpy())

    # evaluation.json: both directions, post- and pre-BNNeck, recomputed from features.
    record = json.loads((run_folder / "evaluation.json").read_text())
    assert record["protocol"] == "regdb" and results["trained"]["mAP"] == record["mAP"]
    both = [record["mAP"], record["reverse_direction"]["mAP"]]
    assert record["both_directions"]["mean"]["mAP"] == pytest.approx(np.mean(both))
    assert record["both_directions"]["std"]["mAP"] == pytest.approx(np.std(both, ddof=1))
    frame = load_tiny("Synthetic_RegDB", cache_folder)
    query = frame[frame["split"] == "query"].reset_index(drop=True)
    gallery = frame[frame["split"] == "gallery"].reset_index(drop=True)
    assert set(query["modality"]) == {"visible"} and set(gallery["modality"]) == {"infrared"}
    assert record["num_query"] == len(query) and record["num_gallery"] == len(gallery)
    query_outputs = extract(models.inference_model, query)
    gallery_outputs = extract(models.inference_model, gallery)
    for entry, output_index in ((record, 1), (record["pre_bnneck"], 0)):
        q_features, g_features = query_outputs[output_index], gallery_outputs[output_index]
        q_pids, g_pids = query["identity_ID"].to_numpy(), gallery["identity_ID"].to_numpy()
        np.testing.assert_allclose([entry["rank1"], entry["mAP"]],
                                   rank1_and_map(q_features, g_features, q_pids, g_pids),
                                   atol=1e-6)
        reverse = entry["reverse_direction"]
        np.testing.assert_allclose([reverse["rank1"], reverse["mAP"]],
                                   rank1_and_map(g_features, q_features, g_pids, q_pids),
                                   atol=1e-6)


# ------------------------------------------------------------------------------ flagfiles
@pytest.mark.parametrize("name, decay, period", [("sysu", 0.997, 2), ("regdb", 0.968, 10)])
def test_flagfiles_reproduce_the_reference_launchers(name, decay, period):
    values = parse_flags([f"--flagfile={os.path.join(REPO, 'configs', 'cmnas', name)}.flags"])
    validate_flags(values)
    assert values.backbone_model_name == "cmnas_resnet50" and values.epoch_num == 120
    assert (values.identity_num_per_batch, values.image_num_per_identity) == (16, 4)
    assert (values.image_height, values.image_width, values.steps_per_epoch) == (256, 128, 0)
    assert values.ema_decay == decay
    assert values.ema_reset_every_N_epochs == values.evaluate_testing_every_N_epochs == period
    assert (values.optimizer_name, values.adam_beta_1, values.adam_beta_2) == \
        ("torch_adam", 0.5, 0.999)
    assert (values.adam_epsilon, values.weight_decay) == (1e-8, 5e-4)
    assert (values.triplet_margin, values.triplet_feature_normalization) == (0.4, False)
    assert (values.sp_loss_weight, values.cmmd_loss_weight, values.label_smoothing) == \
        (5.0, 0.05, 0.0)
    assert values.augmentation_recipe == "cmnas" and values.random_erasing_probability == 0.5
    assert values.freeze_backbone_for_N_epochs == 0
    schedule = LearningRateSchedule(
        mode=values.learning_rate_mode, base=values.learning_rate_base,
        warmup_epochs=values.learning_rate_warmup_epochs,
        lower_bound=values.learning_rate_lower_bound, epoch_num=values.epoch_num,
        milestones=parse_milestones(values.learning_rate_milestones),
        warmup_factor=values.learning_rate_warmup_factor, gamma=values.learning_rate_gamma)
    # §8.2 table of factors; the backbone rate is always 0.1 x the head rate.
    table = {0: 0.01, 1: 0.109, 2: 0.208, 5: 0.505, 9: 0.901, 10: 1.0, 39: 1.0, 40: 0.1,
             69: 0.1, 70: 0.01, 119: 0.01}
    for epoch, factor in table.items():
        np.testing.assert_allclose(schedule(epoch), 0.01 * factor, rtol=1e-9)
        np.testing.assert_allclose(values.backbone_learning_rate_multiplier * schedule(epoch),
                                   0.001 * factor, rtol=1e-9)
