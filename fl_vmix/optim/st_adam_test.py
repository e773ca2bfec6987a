"""Tests for STAdam: exact Adam at strength 0, bias correction, resume, damping, convergence."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from fl_vmix.optim import STAdam


def _mlp(seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return model


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=generator), torch.randn(32, 3, generator=generator)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    inputs, targets = _batch(seed)
    for step in range(steps):
        optimizer.zero_grad()
        # Different targets each step so gradients change direction (agreement varies).
        loss = ((model(inputs) - targets * math.cos(step)) ** 2).mean()
        loss.backward()
        optimizer.step()


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("agreement_with", ["gradient", "momentum"])
def test_strength_zero_is_torch_adam(weight_decay: float, agreement_with: str) -> None:
    reference, ours = _mlp(0), _mlp(0)
    kwargs = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": weight_decay}
    _train(reference, torch.optim.Adam(reference.parameters(), foreach=False, **kwargs), 60)
    optimizer = STAdam(ours.parameters(), agreement_strength=0.0, agreement_with=agreement_with, **kwargs)
    _train(ours, optimizer, 60)
    torch.testing.assert_close(_flat(ours), _flat(reference), rtol=1e-5, atol=1e-6)
    for state in optimizer.state.values():
        assert state["beta1"].item() == pytest.approx(0.8, abs=0.0)


def test_strength_zero_matches_adam_on_complex_parameters() -> None:
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(4, dtype=torch.complex64, generator=generator)
    target = torch.randn(4, dtype=torch.complex64, generator=generator)
    results = []
    for make in (lambda p: torch.optim.Adam([p], lr=0.05), lambda p: STAdam([p], lr=0.05, agreement_strength=0.0)):
        param = start.clone().requires_grad_(True)
        optimizer = make(param)
        for _ in range(30):
            optimizer.zero_grad()
            (param - target).abs().pow(2).sum().backward()
            optimizer.step()
        results.append(param.detach())
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_disagreement_raises_beta1_and_damps_an_oscillating_gradient() -> None:
    """A gradient that flips sign every step (pure oscillation): ST-Adam averages it away harder.

    Steady state of the bias-corrected first moment: |m_hat| = (1 - b) / (1 + b) |g|, i.e. 0.053 |g|
    for Adam's b = 0.9 and 0.005 |g| at b = 0.99 (plus the slowly fading first step).
    """
    direction = torch.tensor([1.0, -2.0, 0.5])
    first_moments = {}
    for name, strength in (("adam", 0.0), ("st", 1.0)):
        param = torch.zeros(3, requires_grad=True)
        optimizer = STAdam([param], lr=1e-2, agreement_strength=strength, beta1_max=0.99)
        for step in range(500):
            param.grad = direction * (-1.0) ** step
            optimizer.step()
        state = optimizer.state[param]
        first_moments[name] = (state["exp_avg"] / (1.0 - state["beta1_prod"])).norm().item()
        if name == "st":
            assert state["agreement"].item() == pytest.approx(-1.0)
            assert state["beta1"].item() == pytest.approx(0.99)
    assert first_moments["st"] < 0.25 * first_moments["adam"]


def test_agreement_keeps_plain_beta1_and_is_inspectable() -> None:
    param = torch.zeros(3, requires_grad=True)
    optimizer = STAdam([param], lr=1e-2)
    for _ in range(5):
        param.grad = torch.tensor([1.0, 2.0, 3.0])
        optimizer.step()
    state = optimizer.state[param]
    assert state["agreement"].item() == pytest.approx(1.0)
    assert state["beta1"].item() == pytest.approx(0.9)
    assert state["beta1_prod"].dtype == torch.float64
    assert state["beta1_prod"].item() == pytest.approx(0.9**5)


@pytest.mark.parametrize("agreement_with", ["gradient", "momentum"])
def test_bias_correction_uses_the_product_of_time_varying_beta1(agreement_with: str) -> None:
    """m_t / (1 - P_t) must be the weighted mean of past gradients, whatever beta1 did."""
    generator = torch.Generator().manual_seed(5)
    direction = torch.tensor([0.3, -1.0, 2.0, 0.7])
    scales = torch.randn(25, generator=generator, dtype=torch.float64)  # random signs: beta1 moves
    param = torch.zeros(4, requires_grad=True)
    optimizer = STAdam([param], lr=1e-3, agreement_with=agreement_with)
    betas, weights = [], []
    for step, scale in enumerate(scales):
        param.grad = direction * float(scale)
        optimizer.step()
        beta = optimizer.state[param]["beta1"].item()
        betas.append(beta)
        weights = [w * beta for w in weights] + [1.0 - beta]
        prod = optimizer.state[param]["beta1_prod"].item()
        assert prod == pytest.approx(math.prod(betas), rel=1e-12)
        assert sum(weights) == pytest.approx(1.0 - prod, rel=1e-9)
        expected_mean = sum(w * float(s) for w, s in zip(weights, scales[: step + 1])) / sum(weights)
        m_hat = optimizer.state[param]["exp_avg"] / (1.0 - prod)
        torch.testing.assert_close(m_hat, direction * expected_mean, rtol=1e-4, atol=1e-6)
    assert max(betas) > 0.9 + 1e-3, "the test needs beta1 to vary"


@pytest.mark.parametrize("agreement_with", ["gradient", "momentum"])
def test_state_dict_round_trip_resumes_identically(agreement_with: str) -> None:
    uninterrupted = _mlp(0)
    optimizer = STAdam(uninterrupted.parameters(), lr=1e-2, weight_decay=0.01, agreement_with=agreement_with)
    _train(uninterrupted, optimizer, 20)
    _train(uninterrupted, optimizer, 15, seed=2)

    first_half = _mlp(0)
    optimizer = STAdam(first_half.parameters(), lr=1e-2, weight_decay=0.01, agreement_with=agreement_with)
    _train(first_half, optimizer, 20)
    buffer = io.BytesIO()
    torch.save({"model": first_half.state_dict(), "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)

    resumed = _mlp(99)  # different weights: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    fresh = STAdam(resumed.parameters(), lr=1e-2, weight_decay=0.01, agreement_with=agreement_with)
    fresh.load_state_dict(checkpoint["optim"])
    assert all(s["beta1_prod"].dtype == torch.float64 for s in fresh.state.values())
    _train(resumed, fresh, 15, seed=2)
    assert torch.equal(_flat(resumed), _flat(uninterrupted))


def test_none_gradients_are_skipped() -> None:
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = STAdam([used, unused], lr=0.1)
    (used**2).sum().backward()
    optimizer.step()
    assert torch.equal(unused.detach(), torch.ones(3))
    assert unused not in optimizer.state
    assert not torch.equal(used.detach(), torch.ones(3))


def test_sparse_gradients_are_densified_like_dense_ones() -> None:
    torch.manual_seed(0)
    sparse = torch.nn.Embedding(10, 4, sparse=True)
    dense = copy.deepcopy(sparse)
    dense.sparse = False
    indices = torch.tensor([[1, 3, 3], [7, 1, 0]])
    optimizers = [STAdam(m.parameters(), lr=0.05) for m in (sparse, dense)]
    for _ in range(5):
        for module, optimizer in zip((sparse, dense), optimizers):
            optimizer.zero_grad()
            module(indices).pow(2).sum().backward()
            optimizer.step()
    assert sparse.weight.grad is not None and sparse.weight.grad.is_sparse
    torch.testing.assert_close(sparse.weight, dense.weight)


def test_zero_learning_rate_leaves_parameters_unchanged() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = STAdam([param], lr=0.0)
    for _ in range(3):
        param.grad = torch.ones(3)
        optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3))


def _quadratic(condition: float, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
    hessian = rotation @ torch.diag(torch.logspace(0, math.log10(condition), dim)) @ rotation.T
    return hessian, torch.randn(dim, generator=generator)


def _minimise(optimizer_factory, hessian: torch.Tensor, optimum: torch.Tensor, steps: int) -> float:
    x = torch.zeros_like(optimum, requires_grad=True)
    optimizer = optimizer_factory([x])
    for _ in range(steps):
        optimizer.zero_grad()
        diff = x - optimum
        (0.5 * diff @ hessian @ diff).backward()
        optimizer.step()
    return (x.detach() - optimum).norm().item()


def test_converges_on_a_well_conditioned_quadratic() -> None:
    hessian, optimum = _quadratic(condition=10.0, dim=10, seed=0)
    distance = _minimise(lambda p: STAdam(p, lr=0.05), hessian, optimum, steps=600)
    assert distance < 1e-3 * optimum.norm().item()


def test_converges_on_an_ill_conditioned_oscillating_quadratic() -> None:
    """Condition number 1e3 with a large step: Adam-style updates overshoot the stiff directions."""
    hessian, optimum = _quadratic(condition=1e3, dim=20, seed=0)
    start = optimum.norm().item()
    distance = _minimise(lambda p: STAdam(p, lr=0.1), hessian, optimum, steps=1500)
    assert distance < 1e-2 * start


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"eps": -1.0}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"betas": (0.9,)}, "pair"),
        ({"beta1_max": 0.5}, "beta1_max"),
        ({"beta1_max": 1.0}, "beta1_max"),
        ({"agreement_strength": 1.5}, "agreement_strength"),
        ({"agreement_with": "previous"}, "agreement_with"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        STAdam([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_add_param_group_is_validated() -> None:
    optimizer = STAdam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="beta1_max"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "betas": (0.995, 0.999)})
    assert len(optimizer.param_groups) == 1
