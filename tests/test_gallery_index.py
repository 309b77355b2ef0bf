"""reid_tf.retrieval.index.GalleryIndex: every backend against a numpy brute-force reference
(float64 distances written out here, np.argsort kind="stable"), save/load, add, errors."""
import json
import sys

import numpy as np
import pandas as pd
import pytest

from reid_tf.retrieval.index import GalleryIndex
from reid_tf.runtime.errors import UsageError

faiss = pytest.importorskip("faiss")
METRICS = ("euclidean", "sqeuclidean", "cosine", "neg_dot")


def reference_distances(queries, gallery, metric, normalize=False):
    """The evaluation's distance definitions, in float64, by hand."""
    q, g = queries.astype(np.float64), gallery.astype(np.float64)
    if normalize:
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    squared = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    if metric == "euclidean":
        return np.sqrt(squared)
    if metric == "sqeuclidean":
        return squared
    if metric == "neg_dot":
        return -(q @ g.T)
    qn = np.linalg.norm(q, axis=1)
    gn = np.linalg.norm(g, axis=1)
    qn[qn == 0] = 1
    gn[gn == 0] = 1
    return np.clip(1 - (q @ g.T) / qn[:, None] / gn[None, :], 0, 2)


def reference_search(queries, gallery, metric, k, normalize=False):
    distances = reference_distances(queries, gallery, metric, normalize)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def clustered(rng, count, dimension=32, clusters=40):
    centres = rng.normal(size=(clusters, dimension)) * 3
    labels = rng.integers(0, clusters, count)
    return (centres[labels] + rng.normal(size=(count, dimension))).astype(np.float32)


def recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    points = clustered(rng, 4100)
    return {"gallery": points[:4000], "queries": points[4000:],
            "metadata": pd.DataFrame({"path": [f"img/{i:05d}.jpg" for i in range(4000)],
                                      "identity": np.arange(4000) // 10,
                                      "camera": np.arange(4000) % 6})}


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", ["builtin", "faiss_flat"])
def test_exact_backends_equal_the_brute_force_reference(data, backend, metric):
    index = GalleryIndex(backend, metric).build(data["gallery"], data["metadata"])
    distances, indices = index.search(data["queries"], 10)
    want_distances, want_indices = reference_search(data["queries"], data["gallery"], metric, 10)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, want_indices)
    # float32 arithmetic: |q|² + |g|² − 2⟨q, g⟩ of vectors with |x|² ≈ 300 loses ~1e-5 relative
    np.testing.assert_allclose(distances, want_distances, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_builtin_and_faiss_flat_agree(metric):
    rng = np.random.default_rng(11)
    gallery = rng.normal(size=(3000, 64)).astype(np.float32)
    queries = rng.normal(size=(200, 64)).astype(np.float32)
    builtin = GalleryIndex("builtin", metric).build(gallery).search(queries, 20)
    flat = GalleryIndex("faiss_flat", metric).build(gallery).search(queries, 20)
    np.testing.assert_array_equal(flat[1], builtin[1])
    np.testing.assert_allclose(flat[0], builtin[0], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "neg_dot"])
def test_exact_backends_keep_the_lowest_index_of_a_tie(metric):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(30, 8)).astype(np.float32)
    gallery = np.concatenate([base] * 5)        # every vector five times: rows i, i+30, ...
    queries = base[:12]
    for k in (3, 7):  # the tied group crosses the k-th place
        want = reference_search(queries, gallery, metric, k)[1]
        for backend in ("builtin", "faiss_flat"):
            got = GalleryIndex(backend, metric).build(gallery).search(queries, k)[1]
            np.testing.assert_array_equal(got, want, err_msg=f"{backend} k={k}")
    if metric == "euclidean":
        assert want[0].tolist()[:5] == [0, 30, 60, 90, 120]


def test_normalize_and_zero_vectors_follow_the_evaluation():
    rng = np.random.default_rng(4)
    gallery = rng.normal(size=(60, 6)).astype(np.float32) * rng.uniform(0.1, 9, (60, 1))
    gallery[5] = 0  # a zero vector: cosine 0 with everything (distance 1)
    queries = rng.normal(size=(9, 6)).astype(np.float32)
    for backend in ("builtin", "faiss_flat"):
        for metric, normalize in (("euclidean", True), ("cosine", False), ("neg_dot", True)):
            distances, indices = GalleryIndex(backend, metric, normalize).build(gallery).search(
                queries, 60)
            want_d, want_i = reference_search(queries, gallery, metric, 60, normalize)
            np.testing.assert_allclose(distances, want_d, rtol=1e-6, atol=1e-5)
            np.testing.assert_array_equal(indices, want_i)
    cosine = GalleryIndex("faiss_flat", "cosine").build(gallery).search(queries, 60)
    assert np.allclose(cosine[0][cosine[1] == 5], 1.0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ivf_is_exact_with_every_cell_probed_and_close_with_few(data, metric):
    truth_d, truth = reference_search(data["queries"], data["gallery"], metric, 10)
    index = GalleryIndex("faiss_ivf", metric, nlist=32, nprobe=32).build(data["gallery"])
    distances, indices = index.search(data["queries"], 10)
    np.testing.assert_array_equal(indices, truth)
    np.testing.assert_allclose(distances, truth_d, rtol=2e-5, atol=1e-5)
    index.set_nprobe(4)
    _, few = index.search(data["queries"], 10)
    # 40 well-separated clusters in 32 cells: recall@10 measured 1.00 at nprobe=4 and
    # 0.98 (euclidean) / 0.97 (cosine) at nprobe=1
    assert recall(few, truth) >= 0.99
    index.set_nprobe(1)
    _, one = index.search(data["queries"], 10)
    assert 0.9 <= recall(one, truth) < recall(few, truth) + 1e-9
    assert index.parameters == {"nlist": 32, "nprobe": 1}


def test_ivf_pq_recall(data):
    truth = reference_search(data["queries"], data["gallery"], "euclidean", 10)[1]
    index = GalleryIndex("faiss_ivfpq", "euclidean", nlist=32, nprobe=32, m=8,
                         nbits=8).build(data["gallery"])
    distances, indices = index.search(data["queries"], 10)
    # 8 bytes a vector instead of 128: recall@10 measured 0.67 against the exact neighbours
    assert recall(indices, truth) >= 0.6
    assert np.all(np.diff(distances, axis=1) >= 0)
    exact = reference_distances(data["queries"], data["gallery"], "euclidean")
    approximate = np.take_along_axis(exact, indices, axis=1)
    # approximate distances (from the codes) within 10% of the exact ones of the same pairs
    assert np.median(np.abs(distances - approximate) / approximate) < 0.1


def test_ivf_few_probes_pad_with_minus_one_and_inf():
    rng = np.random.default_rng(5)
    gallery = clustered(rng, 400, 8, 10)
    index = GalleryIndex("faiss_ivf", "euclidean", nlist=10, nprobe=1).build(gallery)
    distances, indices = index.search(gallery[:5], 300)  # more than one cell holds
    assert (indices == -1).any()
    assert np.all(np.isinf(distances[indices == -1]))
    assert np.all(np.isfinite(distances[indices >= 0]))
    rows = index.metadata_of(indices[0])
    assert len(rows) == 300


@pytest.mark.parametrize("backend", ["builtin", "faiss_flat", "faiss_ivf", "faiss_ivfpq"])
def test_save_load_round_trip_and_add(data, tmp_path, backend):
    options = {"nlist": 16, "nprobe": 4, "m": 8} if backend == "faiss_ivfpq" else \
        {"nlist": 16, "nprobe": 4} if backend == "faiss_ivf" else {}
    index = GalleryIndex(backend, "cosine", normalize=True, **options)
    index.build(data["gallery"][:3000], data["metadata"][:3000])
    index.add(data["gallery"][3000:], data["metadata"][3000:])
    assert len(index) == 4000 and len(index.metadata) == 4000
    before = index.search(data["queries"], 10)
    index.save(tmp_path / "index")
    described = json.loads((tmp_path / "index" / "index.json").read_text())
    assert described["backend"] == backend and described["count"] == 4000
    assert described["dimension"] == 32 and described["normalize"] is True
    loaded = GalleryIndex.load(tmp_path / "index")
    after = loaded.search(data["queries"], 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    pd.testing.assert_frame_equal(loaded.metadata, data["metadata"])
    assert loaded.metadata_of(after[1][0]).equals(
        data["metadata"].iloc[after[1][0]].reset_index(drop=True))
    if backend in ("builtin", "faiss_flat"):  # add() after build equals building at once
        whole = GalleryIndex(backend, "cosine", normalize=True).build(data["gallery"])
        np.testing.assert_array_equal(whole.search(data["queries"], 10)[1], before[1])


def test_auto_backend_and_missing_faiss(monkeypatch):
    index = GalleryIndex("auto", "euclidean")
    assert index.backend == "faiss_flat" and "faiss" in index.backend_reason
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    index = GalleryIndex("auto", "euclidean")
    assert index.backend == "builtin" and "not installed" in index.backend_reason
    for backend in ("faiss_flat", "faiss_ivf", "faiss_ivfpq"):
        with pytest.raises(UsageError, match=r"pip install reid-tf\[faiss\]"):
            GalleryIndex(backend, "euclidean")


def test_errors(tmp_path, data):
    with pytest.raises(UsageError, match="nlist=64 cells on 50 vectors"):
        GalleryIndex("faiss_ivf", "euclidean", nlist=64).build(data["gallery"][:50])
    with pytest.raises(UsageError, match="nbits=8"):
        GalleryIndex("faiss_ivfpq", "euclidean", nlist=4, m=8).build(data["gallery"][:100])
    with pytest.raises(UsageError, match="m=5 does not divide"):
        GalleryIndex("faiss_ivfpq", "euclidean", nlist=4, m=5).build(data["gallery"])
    with pytest.raises(UsageError, match="index backend 'annoy'"):
        GalleryIndex("annoy")
    with pytest.raises(UsageError, match="use_gpu"):
        GalleryIndex("faiss_flat", use_gpu=True)  # faiss-cpu: no GPU support
    index = GalleryIndex("builtin", "euclidean").build(data["gallery"][:20])
    with pytest.raises(ValueError, match="32; the index holds|holds 32"):
        index.search(np.zeros((2, 5), np.float32), 3)
    with pytest.raises(ValueError, match="metadata rows"):
        index.add(data["gallery"][:3], data["metadata"][:2])
    with pytest.raises(UsageError, match="index.json does not exist"):
        GalleryIndex.load(tmp_path / "nothing")
    # Corrupted or mismatching files are named.
    index.save(tmp_path / "index")
    np.save(tmp_path / "index" / "vectors.npy", np.zeros((19, 32), np.float32))
    with pytest.raises(UsageError, match=r"vectors.npy: expected float32 \(20, 32\)"):
        GalleryIndex.load(tmp_path / "index")
    index.save(tmp_path / "index")
    (tmp_path / "index" / "metadata.csv").write_text("gallery_row\n0\n1\n")
    with pytest.raises(UsageError, match="metadata.csv: expected 20 rows"):
        GalleryIndex.load(tmp_path / "index")
    (tmp_path / "index" / "index.json").write_text("{not json")
    with pytest.raises(UsageError, match="index.json: cannot read"):
        GalleryIndex.load(tmp_path / "index")
    flat = GalleryIndex("faiss_flat", "euclidean").build(data["gallery"][:20])
    flat.save(tmp_path / "flat")
    (tmp_path / "flat" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="index.faiss: cannot read the faiss index"):
        GalleryIndex.load(tmp_path / "flat")
