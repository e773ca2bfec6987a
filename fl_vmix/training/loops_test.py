"""The local loops against softmax regression written out in NumPy (float64): FedProx's proximal term in the
gradient and the reported loss, and evaluation over several batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fl_vmix.training.loops import evaluate_model, normalise, train_epochs

N, CLASSES, SIZE = 12, 3, 4


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(N, 3, SIZE, SIZE, generator=generator)
    labels = torch.tensor([0, 1, 2, 1, 1, 0, 2, 2, 1, 0, 1, 1])
    return images, labels


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES))


def softmax_regression(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, lr: float, mu: float, epochs: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Full-batch gradient descent on mean cross-entropy + mu/2 ||theta - theta_0||^2 (Li et al. 2020, eq. 2).
    Returns the final weights and the mean over steps of the loss and accuracy before each step."""
    w0, b0, onehot = w.copy(), b.copy(), np.eye(CLASSES)[y]
    losses, accuracies = [], []
    for _ in range(epochs):
        logits = x @ w.T + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        proximal = mu / 2 * (np.square(w - w0).sum() + np.square(b - b0).sum())
        losses.append(-np.log(p[np.arange(len(y)), y]).mean() + proximal)
        accuracies.append(np.mean(p.argmax(1) == y))
        grad_w = (p - onehot).T @ x / len(y) + mu * (w - w0)
        grad_b = (p - onehot).mean(0) + mu * (b - b0)
        w, b = w - lr * grad_w, b - lr * grad_b
    return w, b, float(np.mean(losses)), float(np.mean(accuracies))


@pytest.mark.parametrize("mu", [0.0, 2.0])
def test_fedprox_training_is_gradient_descent_on_the_proximal_objective(mu):
    images, labels = data()
    model = linear_model()
    linear = model[1]
    w, b = linear.weight.detach().double().numpy().copy(), linear.bias.detach().double().numpy().copy()
    x = normalise(images).reshape(N, -1).double().numpy()
    lr, epochs = 0.5, 4
    metrics = train_epochs(
        model, images, labels, torch.optim.SGD(model.parameters(), lr=lr), epochs=epochs, batch_size=N, seed=1,
        proximal_mu=mu,
    )  # fmt: skip
    want_w, want_b, want_loss, want_accuracy = softmax_regression(x, labels.numpy(), w, b, lr, mu, epochs)
    np.testing.assert_allclose(linear.weight.detach().double().numpy(), want_w, rtol=0, atol=2e-5)
    np.testing.assert_allclose(linear.bias.detach().double().numpy(), want_b, rtol=0, atol=2e-5)
    assert metrics["train_loss"] == pytest.approx(want_loss, rel=1e-5)
    assert metrics["train_accuracy"] == pytest.approx(want_accuracy, abs=1e-9)
    if mu:  # the proximal pull is large enough here to show: without it the weights end elsewhere
        plain_w, *_ = softmax_regression(x, labels.numpy(), w, b, lr, 0.0, epochs)
        assert np.abs(plain_w - want_w).max() > 1e-2


def test_evaluation_over_several_batches_is_the_mean_over_all_examples():
    images, labels = data()
    model = linear_model()
    linear = model[1]
    x = normalise(images).reshape(N, -1).double().numpy()
    logits = x @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy()
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    y = labels.numpy()
    metrics = evaluate_model(model, images, labels, batch_size=5)  # batches of 5, 5 and 2
    assert metrics["loss"] == pytest.approx(-log_p[np.arange(N), y].mean(), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-12)
