"""The command-line chain of a trained model's use on the synthetic dataset, in-process:
``python -m reid_tf.extract`` (gallery) -> ``python -m reid_tf.index`` -> ``python -m
reid_tf.retrieve`` (the gallery as queries: every image finds itself first, at distance ~0; the
top-k equals a float64 numpy brute force on the features), and their one-line usage errors."""
import os

import numpy as np
import pandas as pd
import pytest

from helpers import run_solution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = "num_train_identities=6,num_test_identities=5,images_per_identity=5"
COLUMNS = ["query_row", "query_path", "rank", "gallery_row", "gallery_path", "distance",
           "query_identity", "query_camera", "query_modality", "gallery_identity",
           "gallery_camera", "gallery_modality"]


def _cli(run_main, capsys, *arguments):
    """Run a command line's ``run_main`` in this process: ``(exit status, stdout, stderr)``."""
    from absl import flags
    flags.FLAGS.unparse_flags()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_main(["reid_tf", *arguments])
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


def _usage_error(result, starts):
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {starts}"), err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """The run folder of an MSINet (64x32) trained for two steps by solution.py's job: its
    run_settings.json and inference_model.h5."""
    base = tmp_path_factory.mktemp("retrieve")
    cache = str(base / "cache")
    dataset = [f"--dataset_options=cache_folder_path={cache},{OPTIONS}",
               "--dataset_name=Synthetic", f"--root_folder_path={cache}"]
    run_solution(*dataset, f"--output_folder_path={base / 'train'}",
                 "--backbone_model_name=msinet", "--image_height=64", "--image_width=32",
                 "--identity_num_per_batch=3", "--image_num_per_identity=2",
                 "--freeze_backbone_for_N_epochs=0", "--optimizer_name=adam",
                 "--learning_rate_mode=constant", "--learning_rate_start=1e-3",
                 "--learning_rate_end=1e-3", "--steps_per_epoch=2", "--epoch_num=1",
                 "--testing_size=0", "--workers=2")
    folder = base / "train" / "Synthetic_msinet"
    assert (folder / "inference_model.h5").is_file() and (folder / "run_settings.json").is_file()
    return {"folder": str(folder), "base": base, "dataset": dataset}


def _brute_force(queries, gallery, k):
    """Cosine distances in float64 and the stable top-k of every row."""
    q = queries.astype(np.float64)
    g = gallery.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    distances = 1 - q @ g.T
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order, np.sort(distances, axis=1)


def test_extract_index_retrieve_chain(run_folder, tmp_path, capsys, monkeypatch):
    from reid_tf.cli import extract, index, retrieve
    from reid_tf.retrieval.features_folder import FeaturesFolder
    from reid_tf.retrieval.index import faiss_available
    monkeypatch.chdir(tmp_path)  # a run folder works from any directory (absolute paths)
    gallery = tmp_path / "gallery_features"
    code, out, err = _cli(extract.run_main, capsys, f"--run_folder={run_folder['folder']}",
                          *run_folder["dataset"], "--dataset_split=gallery",
                          f"--features_folder={gallery}", "--chunk_size=16")
    assert code == 0, err[-3000:]
    features, table = FeaturesFolder(str(gallery)).load()
    count = len(features)
    assert count > 20 and table["identity"].notna().all()

    backends = ["builtin"] + (["faiss_flat"] if faiss_available() else [])
    for backend in backends:
        code, out, err = _cli(index.run_main, capsys, f"--features_folders={gallery}",
                              f"--index_folder={tmp_path / backend}",
                              f"--index_backend={backend}")
        assert code == 0, err[-3000:]
        assert f"Gallery index of {count} features" in out and f"backend {backend}" in out
        assert "distance cosine" in out  # the run's evaluation distance, from the features

    k, shown = 5, 3
    expected_distances, expected_rows, sorted_rows = _brute_force(features, features, k)
    # Every image's nearest other image is farther than float32 rounding: itself comes first.
    assert sorted_rows[:, 1].min() > 1e-5
    # The places whose distance is apart from the neighbouring places' by more than float32
    # rounding have the same gallery row for any exact backend (the others may swap).
    gaps = np.diff(sorted_rows[:, :k + 1], axis=1)
    separated = np.ones((count, k), bool)
    separated[:, 1:] &= gaps[:, :k - 1] > 1e-5
    separated &= gaps[:, :k] > 1e-5
    assert separated.mean() > 0.8
    for backend in backends:
        results = tmp_path / f"{backend}_top.csv"
        code, out, err = _cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / backend}",
                              f"--query_features_folder={gallery}", f"--top_k={k}",
                              f"--results_csv={results}", f"--visualize_queries={shown}")
        assert code == 0, err[-3000:]
        assert f"Top-{k} of {count} queries against {count} gallery features ({backend}" in out
        top = pd.read_csv(results)
        assert top.columns.tolist() == COLUMNS and len(top) == count * k
        assert top["query_row"].tolist() == np.repeat(np.arange(count), k).tolist()
        assert top["rank"].tolist() == np.tile(np.arange(1, k + 1), count).tolist()
        first = top[top["rank"] == 1]
        assert (first["gallery_row"].to_numpy() == np.arange(count)).all()
        assert (first["gallery_path"] == first["query_path"]).all()
        assert first["distance"].abs().max() < 1e-5
        rows = top["gallery_row"].to_numpy().reshape(count, k)
        np.testing.assert_array_equal(rows[separated], expected_rows[separated])
        np.testing.assert_allclose(top["distance"].to_numpy().reshape(count, k),
                                   expected_distances, atol=1e-5)
        assert top["query_identity"].tolist() == np.repeat(table["identity"], k).tolist()
        assert top["gallery_identity"].tolist() == table["identity"].to_numpy()[rows.ravel()].tolist()
        assert (top["gallery_path"].to_numpy() == table["path"].to_numpy()[rows.ravel()]).all()
        import cv2
        picture = cv2.imread(str(tmp_path / f"{backend}_top_rank_list.png"))
        # Rows of 128-pixel thumbnails + a 14-pixel distance line + a 4-pixel gap; the query,
        # a 10-pixel gap and k matches of 64 pixels.
        assert picture.shape == (shown * (128 + 14 + 4), (1 + k) * 64 + 10, 3)

    # Query images extracted with the run folder's model: the same neighbours.
    images = tmp_path / "query_images"
    images.mkdir()
    picked = [0, 7, count - 1]
    for row in picked:
        os.symlink(table["path"][row], images / f"{row:03d}_{os.path.basename(table['path'][row])}")
    results = tmp_path / "from_images.csv"
    code, out, err = _cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / backends[-1]}",
                          f"--run_folder={run_folder['folder']}", f"--images_folder={images}",
                          f"--top_k={k}", f"--results_csv={results}", "--visualize_queries=0")
    assert code == 0, err[-3000:]
    assert "warning" not in err and "Rank list" not in out
    top = pd.read_csv(results)
    assert "query_identity" not in top.columns and "gallery_identity" in top.columns
    rows = top["gallery_row"].to_numpy().reshape(len(picked), k)
    np.testing.assert_array_equal(rows[separated[picked]], expected_rows[picked][separated[picked]])
    np.testing.assert_allclose(top["distance"].to_numpy().reshape(len(picked), k),
                               expected_distances[picked], atol=1e-5)
    assert top[top["rank"] == 1]["distance"].abs().max() < 1e-5
    assert not os.path.exists(tmp_path / "from_images_rank_list.png")


def test_usage_errors_are_one_line(run_folder, tmp_path, capsys):
    from reid_tf.cli import index, retrieve
    from reid_tf.retrieval.features_folder import FeaturesWriter
    from reid_tf.retrieval.index import GalleryIndex
    rng = np.random.default_rng(0)
    # A gallery of 8-dimensional features, its index, and queries of 7 dimensions.
    writer = FeaturesWriter(str(tmp_path / "eight"), 8, metric="euclidean")
    writer.write_chunk(rng.normal(size=(12, 8)), pd.DataFrame({"path": [f"g{i}.jpg"
                                                                         for i in range(12)]}))
    writer.finish()
    writer = FeaturesWriter(str(tmp_path / "seven"), 7)
    writer.write_chunk(rng.normal(size=(3, 7)), pd.DataFrame({"path": ["a", "b", "c"]}))
    writer.finish()
    code, out, err = _cli(index.run_main, capsys, f"--features_folders={tmp_path / 'eight'}",
                          f"--index_folder={tmp_path / 'index'}", "--index_backend=builtin")
    assert code == 0, err[-3000:]
    assert "distance euclidean" in out
    assert GalleryIndex.load(str(tmp_path / "index")).metric == "euclidean"

    # The index command.
    _usage_error(_cli(index.run_main, capsys, "--features_folders=/no/such/features",
                      f"--index_folder={tmp_path / 'other'}"), "--features_folders: no such")
    line = _usage_error(_cli(index.run_main, capsys, f"--features_folders={tmp_path / 'eight'}",
                             f"--index_folder={tmp_path / 'index'}"), "--index_folder=")
    assert "--overwrite" in line
    _usage_error(_cli(index.run_main, capsys, f"--features_folders={tmp_path / 'eight'}",
                      f"--index_folder={tmp_path / 'other'}", "--nlist=4"), "--nlist=4")
    _usage_error(_cli(index.run_main, capsys, f"--features_folders={tmp_path / 'eight'}",
                      f"--index_folder={tmp_path / 'other'}", "--distance_metric=manhattan"),
                 "--distance_metric='manhattan'")
    _usage_error(_cli(index.run_main, capsys, f"--features_folders={tmp_path / 'eight'},"
                      f"{tmp_path / 'seven'}", f"--index_folder={tmp_path / 'other'}"),
                 f"{tmp_path / 'seven'} has dimension=7")
    code, out, err = _cli(index.run_main, capsys, f"--features_folders={tmp_path / 'eight'}",
                          f"--index_folder={tmp_path / 'index'}", "--overwrite",
                          "--index_backend=builtin", "--distance_metric=cosine")
    assert code == 0 and "distance cosine" in out, err[-3000:]

    # The retrieval.
    csv = f"--results_csv={tmp_path / 'top.csv'}"
    _usage_error(_cli(retrieve.run_main, capsys, "--index_folder=/no/such/index",
                      f"--query_features_folder={tmp_path / 'seven'}", csv),
                 "--index_folder: no such folder /no/such/index")
    for k in (0, -3):
        _usage_error(_cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / 'index'}",
                          f"--query_features_folder={tmp_path / 'eight'}", csv, f"--top_k={k}"),
                     f"--top_k={k}: must be >= 1")
    line = _usage_error(_cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / 'index'}",
                             f"--query_features_folder={tmp_path / 'seven'}", csv),
                        "--query_features_folder=")
    assert "7-dimensional" in line and "8-dimensional" in line
    _usage_error(_cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / 'index'}",
                      f"--query_features_folder={tmp_path / 'eight'}",
                      f"--run_folder={run_folder['folder']}", csv), "--run_folder: the queries")
    _usage_error(_cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / 'index'}", csv),
                 "give the queries with exactly one of")
    _usage_error(_cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / 'index'}", csv,
                      f"--run_folder={run_folder['folder']}", "--query_images=/no/such.jpg"),
                 "--query_images: no such file /no/such.jpg")
    assert not os.path.exists(tmp_path / "top.csv")

    # Queries of another model (as their features folders record it): a warning, not an error.
    for name, weights in (("gallery_a", "a.h5"), ("queries_b", "b.h5")):
        writer = FeaturesWriter(str(tmp_path / name), 8, model={"weights": weights})
        writer.write_chunk(rng.normal(size=(4, 8)), pd.DataFrame({"path": list("wxyz")}))
        writer.finish()
    assert _cli(index.run_main, capsys, f"--features_folders={tmp_path / 'gallery_a'}",
                f"--index_folder={tmp_path / 'index_a'}", "--index_backend=builtin")[0] == 0
    code, out, err = _cli(retrieve.run_main, capsys, f"--index_folder={tmp_path / 'index_a'}",
                          f"--query_features_folder={tmp_path / 'queries_b'}", csv, "--top_k=2")
    assert code == 0 and "warning: the queries come from the model {'weights': 'b.h5'}" in err
    assert len(pd.read_csv(tmp_path / "top.csv")) == 8


def test_ranked_results_picture(tmp_path):
    """draw_ranked_results: the layout its docstring gives, frames by identity (grey when one is
    unknown), white tiles for missing neighbours; draw_rank_list draws the same picture from a
    distance matrix."""
    import cv2
    from reid_tf import visualization
    paths = []
    for number, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        path = str(tmp_path / f"image{number}.png")
        cv2.imwrite(path, np.full((40, 20, 3), colour, np.uint8))
        paths.append(path)
    indices = np.array([[0, 1], [2, -1]])
    distances = np.array([[0.0, 0.25], [0.5, np.inf]])
    picture = visualization.draw_ranked_results(
        indices, paths[:2], paths, str(tmp_path / "ranked.png"), distances=distances,
        query_pids=[1, np.nan], gallery_pids=[1, 2, 1])
    image = cv2.cvtColor(cv2.imread(picture), cv2.COLOR_BGR2RGB)
    row = 128 + visualization.CAPTION_HEIGHT + 4
    assert image.shape == (2 * row, 3 * 64 + 10, 3)
    match = 64 + 10  # left edge of the first match
    assert tuple(image[0, 0]) == visualization.QUERY_COLOUR
    assert tuple(image[0, match]) == visualization.CORRECT_COLOUR        # identity 1 = 1
    assert tuple(image[0, match + 64]) == visualization.WRONG_COLOUR     # identity 2 != 1
    assert tuple(image[row, match]) == visualization.UNKNOWN_COLOUR      # query identity NaN
    assert (image[row:row + 128, match + 64:] == 255).all()              # no second neighbour
    assert (image[128:128 + visualization.CAPTION_HEIGHT, match:] < 255).any()  # distances
    with pytest.raises(ValueError, match="distances of shape"):
        visualization.draw_ranked_results(indices, paths[:2], paths, str(tmp_path / "x.png"),
                                          distances=distances[:, :1])

    # draw_rank_list: the stable ranks of each row without the same-identity same-camera items.
    distmat = np.array([[0.3, 0.1, 0.2], [0.0, 0.9, 0.4]])
    pids, cameras = np.array([1, 2]), np.array([0, 0])
    g_pids, g_cameras = np.array([1, 2, 1]), np.array([0, 1, 1])
    listed = visualization.draw_rank_list(distmat, paths[:2], paths, pids, g_pids, cameras,
                                          g_cameras, str(tmp_path / "list.png"), top_k=3)
    expected = visualization.draw_ranked_results(
        np.array([[1, 2, -1], [0, 2, 1]]), paths[:2], paths, str(tmp_path / "expected.png"),
        query_pids=pids, gallery_pids=g_pids)
    np.testing.assert_array_equal(cv2.imread(listed), cv2.imread(expected))


def test_results_table_leaves_out_missing_neighbours():
    """An approximate index's missing places (-1, inf) give no rows; ranks stay 1, 2, ...; the
    columns of metadata nobody knows are left out."""
    from reid_tf.cli.retrieve import results_table
    from reid_tf.retrieval.index import GalleryIndex
    gallery = pd.DataFrame({"path": ["g0", "g1", "g2"], "identity": [4, 5, 6],
                            "camera": [1, 2, 3]})
    index = GalleryIndex("builtin").build(np.eye(3), gallery)
    queries = pd.DataFrame({"path": ["q0", "q1"], "identity": [np.nan, np.nan]})
    indices = np.array([[2, 0, -1], [1, -1, -1]])
    distances = np.array([[0.1, 0.2, np.inf], [0.3, np.inf, np.inf]], np.float32)
    table = results_table(queries, index, distances, indices)
    assert table.columns.tolist() == ["query_row", "query_path", "rank", "gallery_row",
                                      "gallery_path", "distance", "gallery_identity",
                                      "gallery_camera"]
    assert table["query_row"].tolist() == [0, 0, 1] and table["rank"].tolist() == [1, 2, 1]
    assert table["gallery_path"].tolist() == ["g2", "g0", "g1"]
    assert table["gallery_identity"].tolist() == [6, 4, 5]
    np.testing.assert_allclose(table["distance"], [0.1, 0.2, 0.3], rtol=1e-6)


def test_run_settings_file_paths_are_absolute(tmp_path, monkeypatch):
    """A run folder works from any working directory: run_settings.json keeps the genotype
    (and every other existing ``*_file_path``) as an absolute path, and leaves empty ones."""
    import json
    from reid_tf.evaluation.settings import EvaluationSettings
    from reid_tf.models.genotypes import load_genotype
    from reid_tf.models.settings import ModelSettings
    from reid_tf.retrieval.run_settings import RunSettings, load_run_settings, save_run_settings
    monkeypatch.chdir(ROOT)
    relative = "configs/genotypes/msmt.json"
    settings = ModelSettings(backbone_model_name="msinet", genotype_file_path=relative)
    save_run_settings(str(tmp_path), RunSettings(model=settings, evaluation=EvaluationSettings(),
                                                 num_classes=3))
    with open(tmp_path / "run_settings.json", encoding="utf-8") as handle:
        stored = json.load(handle)["model"]
    assert stored["genotype_file_path"] == os.path.join(ROOT, relative)
    assert stored["switchable_config_file_path"] == ""
    monkeypatch.chdir(tmp_path)
    loaded = load_run_settings(str(tmp_path)).model
    assert load_genotype(loaded.genotype_file_path) == load_genotype(os.path.join(ROOT, relative))
