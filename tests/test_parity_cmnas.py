"""CM-NAS training step against PyTorch, part by part (issue 15; docs/parity.md, CM-NAS).

A miniature of the network's training path — a split switchable BN (+ ReLU) on a mode-0 batch,
global average pooling, the BNNeck (no bias), a bias-free classifier — trained with the
project's CM-NAS objective and two :class:`TorchAdam` groups (backbone at a lower rate, coupled
weight decay 5e-4, betas (0.5, 0.999)), against the same computation written here with plain
torch ops and ``torch.optim.Adam`` (the reference repository is not imported). In float64 the
loss and every gradient agree to 1e-10 on both steps, the weights after two steps to 1e-8; the
BN running statistics of each modality (unbiased variance) to 1e-12; the visible/thermal sets
each see their own half and the unused sharable set never changes. Two smaller tests pin the
fix this comparison found: float64 hyper-parameters (BN momentum, Adam/SGD betas, epsilon,
momentum, weight decay) are no longer rounded through float32.
"""
import reid_tf  # noqa: F401  (selects tf-keras)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from reid_tf.losses.objective import Objective, ObjectiveConfig
from reid_tf.models.switchable_bn import SwitchableBatchNormalization, TorchBatchNormalization
from reid_tf.training.optimizers import TorchAdam

torch = pytest.importorskip("torch")
F = torch.nn.functional

P, K, C, H, W, CLASSES = 3, 4, 6, 2, 3, 3
# Rates exactly representable in float32: Keras optimisers hold the learning rate in a floatx
# (here float32) variable, so 1e-3 would be 1.0000000475e-3 (a 5e-8 relative step difference in float64).
LR, BACKBONE_LR, DECAY, BETAS = 2.0 ** -6, 2.0 ** -9, 5e-4, (0.5, 0.999)


def _torch_triplet(anchors, candidates, labels, margin=0.4):
    squared = ((anchors ** 2).sum(1, keepdim=True) + (candidates ** 2).sum(1)[None, :]
               - 2 * anchors @ candidates.t())
    distances = squared.clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    hardest_positive = torch.where(same, distances, torch.full_like(distances, -1e9)).max(1)[0]
    hardest_negative = torch.where(same, torch.full_like(distances, 1e9), distances).min(1)[0]
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def _torch_losses(global_feat, feat, logits, labels):
    half = global_feat.shape[0] // 2
    g_v, g_t, f_v, f_t = global_feat[:half], global_feat[half:], feat[:half], feat[half:]
    y = labels[:half]
    triplet = (_torch_triplet(g_v, g_v, y) + _torch_triplet(g_t, g_t, y)
               + _torch_triplet(g_v, g_t, y) + _torch_triplet(g_t, g_v, y)) / 4
    sp = ((F.normalize(f_v @ f_v.t(), dim=1) - F.normalize(f_t @ f_t.t(), dim=1)) ** 2).mean()
    n_v, n_t = F.normalize(f_v, dim=1), F.normalize(f_t, dim=1)
    chunks = []
    for start in range(0, half, K):
        a, b = n_v[start:start + K], n_t[start:start + K]
        chunks.append(((a @ a.t()) ** 2).mean() + ((b @ b.t()) ** 2).mean()
                      - 2 * ((a @ b.t()) ** 2).mean())
    cmmd = sum(chunks) / len(chunks)
    return F.cross_entropy(logits, labels) + triplet + 5.0 * sp + 0.05 * cmmd


def test_cmnas_step_matches_pytorch_in_float64():
    rng = np.random.default_rng(0)
    inputs = rng.normal(1.0, 2.0, (2 * P * K, H, W, C))
    labels = np.tile(np.repeat(np.arange(P), K), 2).astype(np.int32)
    gamma, beta = rng.normal(1.0, 0.1, C), rng.normal(0.0, 0.1, C)
    neck_gamma = rng.normal(1.0, 0.01, C)
    classifier = rng.normal(0.0, 0.3, (CLASSES, C))

    # --- the project: layers, objective, the trainer's two optimiser groups
    bn = SwitchableBatchNormalization(0, with_relu=True, dtype="float64")
    neck = TorchBatchNormalization(center=False, dtype="float64")
    dense = keras.layers.Dense(CLASSES, use_bias=False, dtype="float64")
    bn.build((None, H, W, C))
    neck.build((None, C))
    dense.build((None, C))
    for name in ("visible_bn", "thermal_bn", "sharable_bn"):
        bn.bn_sets[name].gamma.assign(gamma)
        bn.bn_sets[name].beta.assign(beta)
    neck.gamma.assign(neck_gamma)
    dense.kernel.assign(classifier.T)
    objective = Objective(ObjectiveConfig(triplet_margin=0.4, cross_modality=True))
    backbone = [v for name in ("visible_bn", "thermal_bn") for v in
                (bn.bn_sets[name].gamma, bn.bn_sets[name].beta)]
    head = [neck.gamma, dense.kernel]
    groups = [(TorchAdam(BACKBONE_LR, *BETAS, weight_decay_l2=DECAY), backbone),
              (TorchAdam(LR, *BETAS, weight_decay_l2=DECAY), head)]
    x = tf.constant(inputs)
    tf_losses, tf_gradients = [], []
    for _ in range(2):
        with tf.GradientTape() as tape:
            mapped = bn(x, mode=0, training=True)
            global_feat = tf.reduce_mean(mapped, axis=[1, 2])
            feat = neck(global_feat, training=True)
            outputs = {"embeddings": [global_feat], "bnneck": [feat],
                       "logits": [dense(feat)]}
            total = objective(outputs, labels)["total"]
        gradients = tape.gradient(total, backbone + head)
        tf_losses.append(float(total))
        tf_gradients.append([g.numpy() for g in gradients])
        for optimizer, variables in groups:
            optimizer.apply_gradients(zip(gradients[:4] if variables is backbone
                                          else gradients[4:], variables))

    # --- PyTorch, written independently
    t = lambda value: torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))  # noqa: E731
    params = {"v_gamma": t(gamma), "v_beta": t(beta), "t_gamma": t(gamma), "t_beta": t(beta),
              "neck": t(neck_gamma), "classifier": t(classifier)}
    stats = {name: [torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)]
             for name in ("visible", "thermal", "neck")}
    optimizer = torch.optim.Adam(
        [{"params": [params[k] for k in ("v_gamma", "v_beta", "t_gamma", "t_beta")],
          "lr": BACKBONE_LR}, {"params": [params["neck"], params["classifier"]], "lr": LR}],
        betas=BETAS, weight_decay=DECAY)
    x_nchw = torch.tensor(inputs.transpose(0, 3, 1, 2))
    y = torch.tensor(labels, dtype=torch.int64)
    half = x_nchw.shape[0] // 2
    for step in range(2):
        parts = [F.batch_norm(x_nchw[:half], *stats["visible"], params["v_gamma"],
                              params["v_beta"], training=True, momentum=0.1, eps=1e-5),
                 F.batch_norm(x_nchw[half:], *stats["thermal"], params["t_gamma"],
                              params["t_beta"], training=True, momentum=0.1, eps=1e-5)]
        global_feat = F.relu(torch.cat(parts)).mean(dim=(2, 3))
        feat = F.batch_norm(global_feat, *stats["neck"], params["neck"], None, training=True,
                            momentum=0.1, eps=1e-5)
        loss = _torch_losses(global_feat, feat, feat @ params["classifier"].t(), y)
        optimizer.zero_grad()
        loss.backward()
        assert tf_losses[step] == pytest.approx(float(loss), rel=1e-12)
        torch_gradients = [params[k].grad.numpy() for k in
                           ("v_gamma", "v_beta", "t_gamma", "t_beta", "neck")]
        torch_gradients.append(params["classifier"].grad.numpy().T)
        for mine, theirs in zip(tf_gradients[step], torch_gradients):
            np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-15)
        optimizer.step()

    for name, key in (("visible_bn", "visible"), ("thermal_bn", "thermal")):
        layer = bn.bn_sets[name]
        # Was 2e-7 off: the momentum went through float32 (tf.cast of a Python float).
        np.testing.assert_allclose(layer.moving_mean.numpy(), stats[key][0], rtol=1e-12)
        np.testing.assert_allclose(layer.moving_variance.numpy(), stats[key][1], rtol=1e-12)
    np.testing.assert_allclose(neck.moving_variance.numpy(), stats["neck"][1], rtol=1e-12)
    np.testing.assert_array_equal(bn.sharable_bn.moving_mean.numpy(), np.zeros(C))
    np.testing.assert_array_equal(bn.sharable_bn.gamma.numpy(), gamma)
    for variable, key in zip(backbone + head, ("v_gamma", "v_beta", "t_gamma", "t_beta",
                                               "neck", "classifier")):
        expected = params[key].detach().numpy()
        expected = expected.T if key == "classifier" else expected
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_float64_bn_momentum_is_not_rounded_through_float32():
    x = np.random.default_rng(1).normal(1.0, 2.0, (8, 2, 3, 4))
    layer = TorchBatchNormalization(dtype="float64")
    layer(tf.constant(x), training=True)
    count = 8 * 2 * 3
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * x.mean(axis=(0, 1, 2)),
                               rtol=1e-14)
    expected = 0.9 + 0.1 * x.var(axis=(0, 1, 2)) * count / (count - 1)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected, rtol=1e-14)


def test_float64_torch_adam_hyper_parameters_are_not_rounded_through_float32():
    # beta_1 0.9 through float32 is 0.8999999762: the first moment would be off by 2e-7.
    weights = np.array([0.5, -1.5, 2.0])
    gradient = np.array([0.3, -0.2, 1e-3])
    variable = tf.Variable(weights)
    optimizer = TorchAdam(2.0 ** -4, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                          weight_decay_l2=5e-4)
    optimizer.apply_gradients([(tf.constant(gradient), variable)])
    g = gradient + 5e-4 * weights
    m, v = 0.1 * g, 0.001 * g * g
    expected = weights - 2.0 ** -4 / 0.1 * m / (np.sqrt(v) / np.sqrt(0.001) + 1e-8)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-15)
    np.testing.assert_allclose(optimizer.first_moments[0].numpy(), m, rtol=1e-15)
