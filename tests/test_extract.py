"""Feature extraction with a trained model (reid_tf.retrieval.FeatureExtractor,
python -m reid_tf.extract): the features of a test split equal what the evaluation of
solution.py --evaluation_only computes; resumed extraction equals an uninterrupted one;
unreadable images are reported by path; mirrored extraction equals one device."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import run_solution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = "num_train_identities=8,num_test_identities=6,images_per_identity=6"


def _flags(output, cache, *extra):
    return [f"--output_folder_path={output}", "--dataset_name=Synthetic",
            f"--dataset_options=cache_folder_path={cache},{OPTIONS}",
            "--backbone_model_name=msinet", "--image_height=64", "--image_width=32",
            "--identity_num_per_batch=4", "--image_num_per_identity=2",
            "--freeze_backbone_for_N_epochs=0", "--optimizer_name=adam",
            "--learning_rate_mode=constant", "--learning_rate_start=1e-3",
            "--learning_rate_end=1e-3", "--steps_per_epoch=2", "--epoch_num=1",
            "--evaluate_testing_every_N_epochs=100", "--workers=2",
            "--use_horizontal_flipping_in_evaluation", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder trained for two steps, and the evaluation-only features of its weights."""
    base = tmp_path_factory.mktemp("extract")
    cache = str(base / "cache")
    run_solution(*_flags(base / "train", cache))
    run_folder = base / "train" / "Synthetic_msinet"
    run_solution(*_flags(base / "evaluate", cache, "--evaluation_only", "--save_data_to_disk",
                         f"--pretrained_model_file_path={run_folder / 'inference_model.h5'}"))
    saved = np.load(base / "evaluate" / "Synthetic_msinet" / "test.npz")
    from reid_tf.data import load_dataset
    frame = load_dataset("Synthetic", "", cache_folder_path=cache,
                         **{key: int(value) for key, value in
                            (item.split("=") for item in OPTIONS.split(","))})
    frame["split"] = frame["split"].astype(str)
    return {"run_folder": str(run_folder), "saved": saved, "frame": frame, "base": base}


def test_run_folder_extractor_equals_evaluation_only_features(trained):
    from reid_tf.retrieval.extractor import FeatureExtractor
    extractor = FeatureExtractor.from_run_folder(trained["run_folder"])
    assert not extractor.normalize  # the run evaluated raw features (cosine, no normalisation)
    frame = trained["frame"]
    for split, key in (("query", "query_image_features_array"),
                       ("gallery", "gallery_image_features_array")):
        table = frame[frame["split"] == split].reset_index(drop=True)
        features = extractor(table)
        assert features.dtype == np.float32
        np.testing.assert_allclose(features, trained["saved"][key], atol=1e-5, rtol=0)
    # Paths and a uint8 image array give the same features as the table.
    query = frame[frame["split"] == "query"].reset_index(drop=True)
    from reid_tf.data.images import read_image
    images = np.stack([read_image(path, 64, 32) for path in query["image_file_path"][:5]])
    np.testing.assert_allclose(extractor(images), trained["saved"]["query_image_features_array"][:5],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(extractor(list(query["image_file_path"][:3])),
                               trained["saved"]["query_image_features_array"][:3], atol=1e-5)


def test_extraction_resumes_and_reports_unreadable_images(trained, tmp_path):
    from reid_tf.retrieval.extraction import extract_to_folder
    from reid_tf.retrieval.extractor import FeatureExtractor
    from reid_tf.retrieval.features_folder import FeaturesFolder
    extractor = FeatureExtractor.from_run_folder(trained["run_folder"])
    table = trained["frame"][trained["frame"]["split"] == "gallery"].reset_index(drop=True)
    table = table.iloc[:23].copy()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not an image")
    table.loc[7, "image_file_path"] = str(broken)  # one unreadable image inside a chunk

    straight = extract_to_folder(extractor, table, str(tmp_path / "straight"), chunk_size=5,
                                 verbose=0)
    assert straight.written_rows == 22 and [p for p, _ in straight.unreadable] == [str(broken)]
    assert "broken.jpg" in straight.summary()
    listed = pd.read_csv(tmp_path / "straight" / "unreadable_000.csv")
    assert listed["path"].tolist() == [str(broken)]

    # An interrupted extraction (killed after its second chunk) resumes where it stopped.
    calls = {"count": 0}
    original = extractor.__class__.__call__

    def dying(self, images, modality=None):
        calls["count"] += 1
        if calls["count"] == 4:  # chunk 2 needs two calls (the unreadable image), chunk 3 dies
            raise KeyboardInterrupt("simulated kill")
        return original(self, images, modality)

    extractor.__class__.__call__ = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            extract_to_folder(extractor, table, str(tmp_path / "resumed"), chunk_size=5,
                              verbose=0)
    finally:
        extractor.__class__.__call__ = original
    resumed = extract_to_folder(extractor, table, str(tmp_path / "resumed"), chunk_size=5,
                                verbose=0)
    assert resumed.resumed_rows == 10 and [p for p, _ in resumed.unreadable] == [str(broken)]
    first, first_table = FeaturesFolder(str(tmp_path / "straight")).load()
    second, second_table = FeaturesFolder(str(tmp_path / "resumed")).load()
    np.testing.assert_array_equal(first, second)
    assert first_table["path"].tolist() == second_table["path"].tolist()
    assert str(broken) not in first_table["path"].tolist() and len(first_table) == 22


def test_extract_command_line_and_its_errors(trained, tmp_path):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    images = trained["frame"][trained["frame"]["split"] == "query"]["image_file_path"]
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for path in list(images)[:6]:
        os.symlink(path, folder / os.path.basename(path))
    command = [sys.executable, "-m", "reid_tf.extract", f"--run_folder={trained['run_folder']}",
               f"--images_folder={tmp_path / 'images'}",
               f"--features_folder={tmp_path / 'features'}", "--chunk_size=4"]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from reid_tf.retrieval.features_folder import FeaturesFolder
    features, table = FeaturesFolder(str(tmp_path / "features")).load()
    assert features.shape[0] == 6 and table["path"].is_monotonic_increasing
    failed = subprocess.run(command[:4] + ["--images_folder=/no/such/folder",
                                           f"--features_folder={tmp_path / 'x'}"],
                            cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("error: --images_folder")


def test_mirrored_extraction_equals_one_device(trained, tmp_path):
    """Two logical CPUs (a subprocess: devices are set before TensorFlow starts)."""
    table = trained["frame"][trained["frame"]["split"] == "gallery"].reset_index(drop=True)
    table.iloc[:9].to_csv(tmp_path / "table.csv", index=False)
    script = (
        "import sys, numpy as np, pandas as pd\n"
        "import reid_tf\n"
        "from reid_tf.runtime import distribute\n"
        "distribute.configure_logical_cpus(2)\n"
        "from reid_tf.retrieval.extractor import FeatureExtractor\n"
        "table = pd.read_csv(sys.argv[2])\n"
        "one = FeatureExtractor.from_run_folder(sys.argv[1])(table)\n"
        "strategy = distribute.create_strategy('mirrored')\n"
        "with strategy.scope():\n"
        "    two = FeatureExtractor.from_run_folder(sys.argv[1], strategy=strategy)\n"
        "assert two._extractor.replicas == 2\n"
        "np.save(sys.argv[3], np.stack([one, two(table)]))\n")
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", script, trained["run_folder"],
                           str(tmp_path / "table.csv"), str(tmp_path / "out.npy")], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
