"""End to end: the search on a tiny synthetic Market-1501-layout set (64x32 images), its output
files, resuming, the endless valid stream, solution.py training the searched genotype, and the
command line (flagfiles)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nas.alpha import derive_genotype
from nas.config import SearchConfig
from nas.searcher import Searcher
from nas.tcm import EndlessBatches, separate_trainval
from reid_tf.data import load_dataset
from reid_tf.data.pipeline import training_epoch_elements
from reid_tf.data.sampler import PKSampler
from reid_tf.data.synthetic import prepare_synthetic_dataset
from reid_tf.models.genotypes import load_genotype

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_train_identities=10, num_test_identities=3, num_cameras=3,
            images_per_identity=6, num_junk_images=1, num_distractor_images=1,
            image_size=(64, 32))


def _run(command, timeout=300):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1",
                       PYTHONPATH=REPOSITORY + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """The root folder of a tiny Market-1501-layout dataset (10 train identities)."""
    return prepare_synthetic_dataset("Synthetic", str(tmp_path_factory.mktemp("cache")), **TINY)


def _config(root, folder, **overrides):
    values = dict(dataset_name="Market1501", root_folder_path=root, image_height=64,
                  image_width=32, identity_num_per_batch=2, image_num_per_identity=2,
                  steps_per_epoch=2, epoch_num=2, run_folder_path=folder, workers=1,
                  genotype_interval=1, evaluation_interval=2, test_batch_size=16,
                  deterministic=True, verbose=0)
    values.update(overrides)
    return SearchConfig(**values)


def _state(searcher):
    space = searcher.space
    variables = (space.weights_model.weights + [space.network.alpha]
                 + [space.train_memory.features, space.valid_memory.features]
                 + searcher.weight_optimizer.variables + searcher.arch_optimizer.variables)
    return [variable.numpy().copy() for variable in variables]


def _alpha_history(folder):
    with np.load(os.path.join(folder, "alpha_history.npz")) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _history(folder):
    with open(os.path.join(folder, "history.csv"), newline="") as handle:
        return [{key: value for key, value in row.items() if key != "seconds"}
                for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def searched(dataset_root, tmp_path_factory):
    """An uninterrupted 2-epoch search (2 steps per epoch, deterministic ops).

    Grappler's graph optimisations are switched off while this module runs: they only cost
    time on such tiny inputs (the traced steps are large graphs)."""
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    folder = str(tmp_path_factory.mktemp("search") / "Market1501_search")
    published = str(tmp_path_factory.mktemp("published") / "tiny.json")
    searcher = Searcher(_config(dataset_root, folder, save_genotype_to=published))
    result = searcher.search()
    yield {"searcher": searcher, "folder": folder, "result": result, "published": published,
           "state": _state(searcher), "history": _history(folder),
           "alpha_history": _alpha_history(folder)}
    from tensorflow.python.framework import config as tf_config
    tf_config.disable_op_determinism()
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": previous.get("disable_meta_optimizer", False)})


def test_search_writes_genotype_history_evaluation_and_checkpoint(searched):
    folder, searcher = searched["folder"], searched["searcher"]
    genotype = load_genotype(os.path.join(folder, "genotype.json"))
    assert genotype == searched["result"] == derive_genotype(searcher.space.network.alpha)
    assert load_genotype(searched["published"]) == genotype

    with np.load(os.path.join(folder, "alpha_history.npz")) as arrays:
        assert arrays["epochs"].tolist() == [0, 1, 2]
        np.testing.assert_allclose(arrays["alpha"][-1], searcher.space.network.alpha.numpy())
        np.testing.assert_allclose(arrays["weights"].sum(axis=-1), 1.0, atol=1e-5)
        assert not np.allclose(arrays["alpha"][0], arrays["alpha"][-1])  # α was trained
    with open(os.path.join(folder, "alpha_history.png"), "rb") as handle:
        assert handle.read(4) == b"\x89PNG"

    history = searched["history"]
    assert [int(row["epoch"]) for row in history] == [1, 2]
    assert [int(row["arch_steps"]) for row in history] == [1, 1]  # first iteration skipped
    assert [int(row["steps"]) for row in history] == [2, 2]
    assert history[0]["rank1"] == "" and 0.0 <= float(history[1]["mAP"]) <= 1.0
    assert float(history[0]["learning_rate"]) == pytest.approx(0.025 * 0.01)
    assert float(history[1]["learning_rate"]) == pytest.approx(0.025 * (0.01 * 0.9 + 0.1))
    assert float(history[1]["arch_learning_rate"]) == pytest.approx(0.002)

    with open(os.path.join(folder, "evaluation", "evaluation.json")) as handle:
        evaluation = json.load(handle)
    assert evaluation["tag"] == "epoch2" and 0.0 <= evaluation["mAP"] <= 1.0
    assert evaluation["num_query"] == 6 and evaluation["num_gallery"] == 10
    assert os.path.isfile(os.path.join(folder, "weights_epoch2.h5"))
    with open(os.path.join(folder, "search.log")) as handle:
        log = handle.read()
    assert "genotype = [" in log and "[evaluation epoch2]" in log
    assert tf.train.latest_checkpoint(os.path.join(folder, "checkpoint")).endswith("ckpt-2")
    # Slots: 3q = 6 train classes, P - q = 8 valid classes, each touched row has unit norm.
    space = searcher.space
    assert space.train_memory.features.shape == (6, 512)
    assert space.valid_memory.features.shape == (8, 512)
    norms = np.linalg.norm(space.train_memory.features.numpy(), axis=1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0)) and np.any(norms > 0)


def test_resumed_search_equals_the_uninterrupted_one(searched):
    """Rewind the checkpoint state to epoch 1 and run the same search again: everything
    (weights, BN statistics, α, memories, both optimisers, samplers) must come back from the
    checkpoint, so the second epoch is replayed exactly."""
    folder, searcher = searched["folder"], searched["searcher"]
    directory = os.path.join(folder, "checkpoint")
    first = os.path.join(directory, "ckpt-1")
    tf.compat.v1.train.update_checkpoint_state(directory, first, all_model_checkpoint_paths=[first])
    searcher.config.verbose = 0
    result = searcher.search()
    assert result == searched["result"]
    for before, after in zip(searched["state"], _state(searcher)):
        np.testing.assert_array_equal(before, after)
    assert _history(folder) == searched["history"]
    resumed_alpha = _alpha_history(folder)
    for name, values in searched["alpha_history"].items():
        np.testing.assert_array_equal(resumed_alpha[name], values)
    # Each step function was traced once, for both runs.
    assert searcher.step.full_step.experimental_get_tracing_count() == 1
    assert searcher.step.weight_step.experimental_get_tracing_count() == 1


def test_endless_valid_stream_restarts_with_a_new_shuffle_and_resumes(dataset_root):
    frame = load_dataset("Market1501", dataset_root)
    split = separate_trainval(frame[frame["split"] == "train"])
    sampler = PKSampler.from_dataframe(split.valid, 2, 2, seed=3, policy="msinet")
    per_epoch = sampler.num_batches(0)

    def stream():
        return EndlessBatches(split.valid, PKSampler.from_dataframe(split.valid, 2, 2, seed=3,
                                                                    policy="msinet"),
                              64, 32, "msinet", split.valid_label_map, seed=5, workers=1)

    endless = stream()
    labels = [endless.next()[1].numpy() for _ in range(per_epoch + 2)]
    expected = [training_epoch_elements(split.valid, sampler, split.valid_label_map, epoch)
                ["label"].reshape(-1, 4) for epoch in (0, 1)]
    np.testing.assert_array_equal(np.stack(labels[:per_epoch]), expected[0])
    np.testing.assert_array_equal(np.stack(labels[per_epoch:]), expected[1][:2])
    assert not np.array_equal(expected[0][:2], expected[1][:2])  # a fresh shuffle

    first = stream()
    for _ in range(per_epoch - 1):
        first.next()
    state = first.get_state()
    continued = [first.next() for _ in range(3)]
    resumed = stream()
    resumed.set_state(state)
    for (images, labels), (images_again, labels_again) in zip(continued,
                                                              [resumed.next() for _ in range(3)]):
        np.testing.assert_array_equal(labels.numpy(), labels_again.numpy())
        np.testing.assert_array_equal(images.numpy(), images_again.numpy())


def test_bfloat16_search_computes_in_bfloat16_and_keeps_alpha_and_memories_float32(
        dataset_root, tmp_path):
    from tf_keras import mixed_precision
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        _config(dataset_root, str(tmp_path / "f16"), mixed_precision="mixed_float16").validate()
    try:
        searcher = Searcher(_config(dataset_root, str(tmp_path / "bf16"), epoch_num=1,
                                    evaluation_interval=1, deterministic=False,
                                    mixed_precision="mixed_bfloat16"))
        genotype = searcher.search()
    finally:
        mixed_precision.set_global_policy("float32")
    space = searcher.space
    compute_dtypes = {layer.compute_dtype for layer in space.weights_model.submodules
                      if hasattr(layer, "compute_dtype")}
    assert "bfloat16" in compute_dtypes
    assert space.network.alpha.dtype == tf.float32
    assert genotype == derive_genotype(space.network.alpha)
    for memory in (space.train_memory, space.valid_memory):
        assert memory.features.dtype == tf.float32
        norms = np.linalg.norm(memory.features.numpy(), axis=1)
        assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0)) and np.any(norms > 0)
    row = _history(str(tmp_path / "bf16"))[-1]
    assert np.isfinite(float(row["loss"])) and np.isfinite(float(row["valid_loss"]))
    assert 0.0 < float(row["mAP"]) <= 1.0


def test_solution_trains_the_searched_genotype(searched, dataset_root, tmp_path, monkeypatch):
    """The network solution.py trains is built from the searched genotype: every interaction
    point holds the operation the genotype names, and training_model.h5 holds its weights."""
    from helpers import run_solution
    from reid_tf.cli import train as train_module
    from reid_tf.cli.settings import model_settings
    from reid_tf.flags import FLAGS
    from reid_tf.models.msinet_ops import OP_CLASSES
    genotype_file = os.path.join(searched["folder"], "genotype.json")
    genotype = load_genotype(genotype_file)
    built = []

    def spy(*args, **kwargs):
        result = build_models(*args, **kwargs)
        built.append(result[0])
        return result

    build_models = train_module.build_models
    monkeypatch.setattr(train_module, "build_models", spy)
    run_solution(
        "--dataset_name=Market1501", f"--root_folder_path={dataset_root}",
        "--backbone_model_name=msinet", f"--genotype_file_path={genotype_file}",
        "--epoch_num=1", "--steps_per_epoch=1", "--image_height=64", "--image_width=32",
        "--identity_num_per_batch=2", "--image_num_per_identity=2", "--testing_size=0",
        "--freeze_backbone_for_N_epochs=0", "--optimizer_name=sgd",
        "--learning_rate_mode=warmup_multistep", "--learning_rate_base=0.065",
        "--weight_decay=5e-4", "--triplet_margin=0.3", "--label_smoothing=0.1",
        "--sampler_policy=msinet", "--augmentation_recipe=msinet", "--workers=1",
        f"--output_folder_path={tmp_path}")
    (models,) = built
    # The 12 interaction points in genotype order: stage s holds cells 3s and 3s+1 (cells 2
    # and 5 are transitions), each with its op2 and op3.
    points = [f"cells_{cell}_{op}" for cell in (0, 1, 3, 4, 6, 7) for op in ("op2", "op3")]
    built_ops = [type(models.training_model.get_layer(point)) for point in points]
    assert built_ops == [OP_CLASSES[name] for name in genotype]
    run_folder = tmp_path / "Market1501_msinet"
    with open(run_folder / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))
    num_classes = models.training_model.get_layer("classifier").units
    reloaded = build_models(model_settings(FLAGS), num_classes)[0]
    reloaded.training_model.load_weights(str(run_folder / "training_model.h5"))
    for trained, saved in zip(models.training_model.weights, reloaded.training_model.weights):
        np.testing.assert_array_equal(trained.numpy(), saved.numpy(), err_msg=trained.name)


def test_command_line_flagfiles():
    """Every configs/nas flagfile parses into the intended search configuration."""
    script = (
        "import json\n"
        "from nas.search import FLAGS, config_from_flags, define_search_flags\n"
        "define_search_flags()\n"
        "for name in ('msmt17', 'market1501', 'synthetic_quick'):\n"
        "    FLAGS.unparse_flags()\n"
        "    FLAGS(['nas.search', f'--flagfile=configs/nas/{name}.flags'])\n"
        "    print(json.dumps(config_from_flags(FLAGS).__dict__))\n"
        "FLAGS.unparse_flags()\n"
        "try:\n"
        "    FLAGS(['nas.search', '--arch_milestones=150,x'])\n"
        "    config_from_flags(FLAGS)\n"
        "except Exception as error:\n"
        "    print('ERROR', error)\n")
    completed = _run([sys.executable, "-c", script], timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    msmt, market, quick = (json.loads(line) for line in lines[:3])
    reference = {"image_height": 256, "image_width": 128, "identity_num_per_batch": 16,
                 "image_num_per_identity": 4, "steps_per_epoch": 0, "epoch_num": 350,
                 "seed": 0, "learning_rate": 0.025, "momentum": 0.9, "weight_decay": 5e-4,
                 "milestones": [150, 225, 300], "warmup_epochs": 10, "warmup_factor": 0.01,
                 "arch_learning_rate": 0.002, "arch_weight_decay": 1e-3, "arch_beta_1": 0.5,
                 "arch_beta_2": 0.999, "arch_milestones": [150, 225, 350],
                 "genotype_interval": 5, "evaluation_interval": 40, "test_batch_size": 128,
                 "clean_bilevel": False, "unrolled": False, "search_space": "msi"}
    for config in (msmt, market):
        assert {key: config[key] for key in reference} == reference
    assert msmt["dataset_name"] == "MSMT17" and market["dataset_name"] == "Market1501"
    assert quick["dataset_name"] == "Synthetic" and quick["epoch_num"] == 4
    assert (quick["image_height"], quick["image_width"], quick["warmup_epochs"]) == (128, 64, 1)
    assert quick["learning_rate"] == 0.025 and quick["arch_milestones"] == [150, 225, 350]
    assert lines[3].startswith("ERROR") and "--arch_milestones" in lines[3]
