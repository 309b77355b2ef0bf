"""TorchSGD / TorchAdam follow PyTorch's update rules (including lr changes between steps)."""
import numpy as np
import pytest
import tensorflow as tf

from reid_tf.training.optimizers import TorchAdam, TorchSGD, build_optimizer


def _numpy_sgd(w, grads, lrs, momentum, weight_decay):
    buf = None
    for g, lr in zip(grads, lrs):
        g = g + weight_decay * w
        buf = g.copy() if buf is None else momentum * buf + g
        w = w - lr * buf
    return w


def _numpy_adam(w, grads, lrs, b1, b2, eps, weight_decay):
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denominator = np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps
        w = w - lr / (1 - b1 ** t) * m / denominator
    return w


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(6)]
    lrs = [0.1, 0.1, 0.05, 0.05, 0.01, 0.01]
    return w0, grads, lrs


def _run(optimizer, w0, grads, lrs):
    variable = tf.Variable(w0.astype(np.float64))
    for g, lr in zip(grads, lrs):
        optimizer.learning_rate = lr
        optimizer.apply_gradients([(tf.constant(g), variable)])
    return variable.numpy()


def test_torch_sgd_matches_pytorch_rule(problem):
    w0, grads, lrs = problem
    result = _run(TorchSGD(0.1, momentum=0.9, weight_decay_l2=5e-4), w0, grads, lrs)
    np.testing.assert_allclose(result, _numpy_sgd(w0, grads, lrs, 0.9, 5e-4), rtol=1e-6)


def test_torch_adam_matches_pytorch_rule(problem):
    w0, grads, lrs = problem
    result = _run(TorchAdam(0.1, beta_1=0.5, beta_2=0.999, epsilon=1e-8, weight_decay_l2=1e-3),
                  w0, grads, lrs)
    np.testing.assert_allclose(result, _numpy_adam(w0, grads, lrs, 0.5, 0.999, 1e-8, 1e-3),
                               rtol=1e-6)


def test_against_torch_if_available(problem):
    torch = pytest.importorskip("torch")
    w0, grads, lrs = problem
    parameter = torch.nn.Parameter(torch.tensor(w0))
    optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for g, lr in zip(grads, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        parameter.grad = torch.tensor(g)
        optimizer.step()
    result = _run(TorchSGD(0.1, momentum=0.9, weight_decay_l2=5e-4), w0, grads, lrs)
    np.testing.assert_allclose(result, parameter.detach().numpy(), rtol=1e-6)


def test_torch_adam_against_torch_optim_adam(problem):
    """TorchAdam against the real torch.optim.Adam (coupled L2 decay, lr changed between
    steps), float64 on both sides."""
    torch = pytest.importorskip("torch")
    w0, grads, lrs = problem
    parameter = torch.nn.Parameter(torch.tensor(w0))
    # A large epsilon, so that where it enters (after the bias correction of v) shows.
    optimizer = torch.optim.Adam([parameter], lr=0.1, betas=(0.5, 0.999), eps=1e-3,
                                 weight_decay=1e-3)
    for g, lr in zip(grads, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        parameter.grad = torch.tensor(g)
        optimizer.step()
    expected = parameter.detach().numpy()
    result = _run(TorchAdam(0.1, beta_1=0.5, beta_2=0.999, epsilon=1e-3, weight_decay_l2=1e-3),
                  w0, grads, lrs)
    # float32 hyperparameters (lr 0.1 is 0.1 + 1.5e-9) bound the agreement at ~1e-8.
    np.testing.assert_allclose(result, expected, rtol=1e-7, atol=1e-9)
    # Six steps moved the weights well beyond that tolerance.
    assert np.abs(expected - w0).min() > 1e-3


def test_build_optimizer_names_and_errors():
    assert isinstance(build_optimizer("sgd", 0.1), TorchSGD)
    assert isinstance(build_optimizer("torch_adam", 0.1), TorchAdam)
    adam = build_optimizer("adam", 1e-3)
    assert adam.epsilon == pytest.approx(1e-7)
    with pytest.raises(ValueError, match="--optimizer_name"):
        build_optimizer("rmsprop", 0.1)
    with pytest.raises(ValueError, match="--weight_decay"):
        build_optimizer("adam", 0.1, weight_decay=1e-4)
