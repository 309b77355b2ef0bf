"""CM-NAS losses against hand and numpy computations (cmnas.md §6, §14.10–13)."""
import reid_tf  # noqa: F401  (selects tf-keras)

import numpy as np
import pytest
import tensorflow as tf

from reid_tf.losses.cmnas import (
    cmmd_loss,
    cmnas_objective,
    cmnas_total_loss,
    cross_modality_triplet,
    cross_modality_triplet_halves,
    sp_loss,
)


def np_triplet(anchors, candidates, labels, margin):
    """Batch-hard triplet with explicit loops (reference distance form)."""
    losses = []
    for i, a in enumerate(anchors):
        d = np.sqrt(np.maximum((a ** 2).sum() + (candidates ** 2).sum(1)
                               - 2 * candidates @ a, 1e-12))
        positive = d[labels == labels[i]].max()
        negative = d[labels != labels[i]].min()
        losses.append(max(0.0, positive - negative + margin))
    return np.mean(losses)


def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_cmmd_chunk(v, t):
    k = lambda a, b: (a @ b.T) ** 2  # noqa: E731
    return k(v, v).mean() + k(t, t).mean() - 2 * k(v, t).mean()


def test_triplet_hand_computed_one_dimensional_example():
    # Visible features 0, 1, 3, 5 (ids 0, 0, 1, 1); V-V per anchor, margin 0.4:
    # a=0: d+=1, d-=3 -> 0; a=1: d+=1, d-=2 -> 0; a=3: d+=2, d-=2 -> 0.4; a=5: d+=2, d-=4 -> 0.
    g_v = np.array([[0.0], [1.0], [3.0], [5.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    # Thermal = visible + 10: T-T is the same as V-V (0.1); V->T: every distance from a
    # visible anchor is 10 - v + t..., computed below by hand:
    # anchors 0,1,3,5 vs candidates 10,11,13,15.
    # a=0: pos {10,11} d+=11, neg {13,15} d-=13 -> 0; a=1: d+=10, d-=12 -> 0;
    # a=3: pos {13,15} d+=12, neg {10,11} d-=7 -> 5.4; a=5: d+=10, d-=5 -> 5.4  => mean 2.7.
    # T->V: a=10: pos {0,1} d+=10, neg {3,5} d-=5 -> 5.4; a=11: d+=11, d-=6 -> 5.4;
    # a=13: pos {3,5} d+=10, neg {0,1} d-=12 -> 0; a=15: d+=12, d-=14 -> 0  => mean 2.7.
    g_t = g_v + 10.0
    loss, terms = cross_modality_triplet_halves(g_v, g_t, labels, labels, return_terms=True)
    np.testing.assert_allclose([t.numpy() for t in terms], [0.1, 0.1, 2.7, 2.7], atol=1e-5)
    np.testing.assert_allclose(loss.numpy(), (0.1 + 0.1 + 2.7 + 2.7) / 4, atol=1e-5)
    whole = cross_modality_triplet(np.concatenate([g_v, g_t]), np.concatenate([labels, labels]))
    np.testing.assert_allclose(whole.numpy(), loss.numpy(), rtol=1e-6)


def test_triplet_matches_numpy_on_unnormalised_features():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    g_v = rng.normal(size=(12, 16)).astype(np.float32) * 0.3
    g_t = rng.normal(size=(12, 16)).astype(np.float32) * 0.3
    expected = (np_triplet(g_v, g_v, labels, 0.4) + np_triplet(g_t, g_t, labels, 0.4)
                + np_triplet(g_v, g_t, labels, 0.4) + np_triplet(g_t, g_v, labels, 0.4)) / 4
    loss = cross_modality_triplet_halves(g_v, g_t, labels, labels)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    assert expected > 0
    # No normalisation: scaling the features changes the loss.
    scaled = cross_modality_triplet_halves(10 * g_v, 10 * g_t, labels, labels)
    assert abs(float(scaled) - expected) > 0.1
    normalised = cross_modality_triplet_halves(g_v, g_t, labels, labels, normalize=True)
    n_v, n_t = np_normalize(g_v), np_normalize(g_t)
    expected_n = (np_triplet(n_v, n_v, labels, 0.4) + np_triplet(n_t, n_t, labels, 0.4)
                  + np_triplet(n_v, n_t, labels, 0.4) + np_triplet(n_t, n_v, labels, 0.4)) / 4
    np.testing.assert_allclose(normalised.numpy(), expected_n, rtol=1e-5)


def test_sp_loss_matches_numpy_and_vanishes_on_equal_inputs():
    rng = np.random.default_rng(1)
    f_v = rng.normal(size=(8, 32)).astype(np.float32)
    f_t = rng.normal(size=(8, 32)).astype(np.float32)
    g_v = np_normalize(f_v @ f_v.T)
    g_t = np_normalize(f_t @ f_t.T)
    expected = ((g_v - g_t) ** 2).sum() / 64
    np.testing.assert_allclose(sp_loss(f_v, f_t).numpy(), expected, rtol=1e-5)
    assert float(sp_loss(f_v, f_v)) == pytest.approx(0.0, abs=1e-12)
    # Scale invariant (rows of G are normalised) but not invariant to reordering one side.
    np.testing.assert_allclose(sp_loss(3 * f_v, f_t).numpy(), expected, rtol=1e-4)


def test_cmmd_matches_numpy_and_second_moment_identity():
    rng = np.random.default_rng(2)
    f_v = rng.normal(size=(12, 10)).astype(np.float32)
    f_t = rng.normal(size=(12, 10)).astype(np.float32) + 0.5
    n_v, n_t = np_normalize(f_v), np_normalize(f_t)
    per_chunk = [np_cmmd_chunk(n_v[c:c + 4], n_t[c:c + 4]) for c in range(0, 12, 4)]
    loss = cmmd_loss(f_v, f_t, num_pos=4)
    np.testing.assert_allclose(loss.numpy(), np.mean(per_chunk), rtol=1e-5)
    # MMD^2_c = |S_v - S_t|_F^2 with S = (1/4) sum x x^T.
    for c, value in zip(range(0, 12, 4), per_chunk):
        s_v = n_v[c:c + 4].T @ n_v[c:c + 4] / 4
        s_t = n_t[c:c + 4].T @ n_t[c:c + 4] / 4
        np.testing.assert_allclose(value, ((s_v - s_t) ** 2).sum(), rtol=1e-4)
    assert float(loss) > 0
    assert float(cmmd_loss(f_v, f_v)) == pytest.approx(0.0, abs=1e-6)
    # Same second moments per chunk (rows permuted and sign-flipped within chunks) -> 0.
    permuted = f_v.reshape(3, 4, 10)[:, ::-1].reshape(12, 10) * -1
    assert float(cmmd_loss(f_v, permuted)) == pytest.approx(0.0, abs=1e-6)


def test_cmmd_short_last_chunk_and_dynamic_batch():
    rng = np.random.default_rng(3)
    f_v = rng.normal(size=(6, 5)).astype(np.float32)
    f_t = rng.normal(size=(6, 5)).astype(np.float32)
    n_v, n_t = np_normalize(f_v), np_normalize(f_t)
    expected = (np_cmmd_chunk(n_v[:4], n_t[:4]) + np_cmmd_chunk(n_v[4:], n_t[4:])) / 2
    np.testing.assert_allclose(cmmd_loss(f_v, f_t, 4).numpy(), expected, rtol=1e-5)
    spec = tf.TensorSpec([None, 5], tf.float32)
    traced = tf.function(lambda a, b: cmmd_loss(a, b, 4), input_signature=[spec, spec])
    np.testing.assert_allclose(traced(f_v, f_t).numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="same number of rows"):
        cmmd_loss(f_v, f_t[:4])


def test_total_loss_is_ce_plus_triplet_plus_weighted_sp_and_cmmd():
    rng = np.random.default_rng(4)
    labels_half = np.repeat(np.arange(2), 4)  # 2 identities x 4 per modality
    labels = np.concatenate([labels_half, labels_half])
    global_feat = rng.normal(size=(16, 12)).astype(np.float32)
    feat = rng.normal(size=(16, 12)).astype(np.float32)
    logits = rng.normal(size=(16, 5)).astype(np.float32)
    outputs = {"embeddings": [global_feat], "bnneck": [feat], "logits": [logits]}
    total, parts = cmnas_total_loss(outputs, labels)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_softmax[np.arange(16), labels].mean()
    g_v, g_t = global_feat[:8], global_feat[8:]
    triplet = (np_triplet(g_v, g_v, labels_half, 0.4) + np_triplet(g_t, g_t, labels_half, 0.4)
               + np_triplet(g_v, g_t, labels_half, 0.4)
               + np_triplet(g_t, g_v, labels_half, 0.4)) / 4
    f_v, f_t = feat[:8], feat[8:]
    sp = ((np_normalize(f_v @ f_v.T) - np_normalize(f_t @ f_t.T)) ** 2).mean()
    n_v, n_t = np_normalize(f_v), np_normalize(f_t)
    cmmd = (np_cmmd_chunk(n_v[:4], n_t[:4]) + np_cmmd_chunk(n_v[4:], n_t[4:])) / 2
    np.testing.assert_allclose(parts["ce"].numpy(), ce, rtol=1e-5)
    np.testing.assert_allclose(parts["triplet"].numpy(), triplet, rtol=1e-5)
    np.testing.assert_allclose(parts["sp"].numpy(), sp, rtol=1e-5)
    np.testing.assert_allclose(parts["cmmd"].numpy(), cmmd, rtol=1e-5)
    np.testing.assert_allclose(total.numpy(), ce + triplet + 5.0 * sp + 0.05 * cmmd, rtol=1e-5)
    as_dict = cmnas_objective(outputs, labels)
    assert set(as_dict) == {"total", "ce", "triplet", "sp", "cmmd"}
    np.testing.assert_allclose(as_dict["total"].numpy(), total.numpy(), rtol=1e-6)
