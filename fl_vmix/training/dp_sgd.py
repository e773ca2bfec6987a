"""DP-SGD on a client with Opacus, its accountant kept across rounds by the caller.

Per-sample clipping to ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``,
Poisson sampling. The RDP accountant's history is handed in and handed back, so the epsilon a client
reports is cumulative over all its local steps in the run (the ClientApp keeps the history in
Flower's ``context.state``; nothing here knows about Flower).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fl_vmix.privacy.training_level import DPSGD

logger = logging.getLogger("fl_vmix.dp")

AccountantHistory = tuple[tuple[float, float, int], ...]  # Opacus RDP history: (noise, sample rate, steps)


def make_opacus_compatible(model: nn.Module) -> nn.Module:
    """Opacus cannot clip per-sample gradients through BatchNorm (it mixes samples); replace such
    layers with GroupNorm, as Opacus' ModuleValidator.fix does, and say so."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    logger.warning(
        "DP-SGD: %s has layers Opacus cannot train privately (%s); replacing them (BatchNorm -> GroupNorm) "
        "on server and clients alike. Use model=cnn to train an unmodified model.",
        type(model).__name__,
        "; ".join(sorted({type(e).__name__ for e in errors})),
    )
    fixed = ModuleValidator.fix(model)
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise ValueError(
            f"DP-SGD cannot train {type(model).__name__} even after replacing layers: {remaining[0]}; use model=cnn"
        )
    return fixed


@dataclass(frozen=True)
class DPTrainResult:
    metrics: dict[str, float]  # train_loss, train_accuracy, epsilon (cumulative over the run)
    history: AccountantHistory  # the accountant's history after this round: hand it in next round


def train_dp_sgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    method: DPSGD,
    history: Sequence[tuple[float, float, int]],
    *,
    epochs: int,
    batch_size: int,
    sampling_seed: int,
    noise_seed: int,
) -> DPTrainResult:
    """Local DP-SGD on normalised model inputs, continuing the accountant ``history`` of earlier rounds.

    Poisson sampling and noise draw from generators seeded by ``sampling_seed`` and ``noise_seed``: pass
    secret seeds (:meth:`DPSGD.secret_seeds`), or the server could regenerate both and the guarantee
    would not hold against it. An empty Poisson batch still takes its step: Opacus adds noise to a zero
    gradient and the accountant counts it, as the sampling analysis assumes.
    """
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = [tuple(h) for h in history]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(sampling_seed),  # Opacus' Poisson sampler draws from it
    )
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=method.noise_multiplier,
        max_grad_norm=method.max_grad_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(noise_seed),
    )
    private_model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        for batch_images, batch_labels in private_loader:
            private_optimizer.zero_grad(set_to_none=True)
            logits = private_model(batch_images)
            loss = F.cross_entropy(logits, batch_labels)  # NaN for an empty batch; its gradients are empty
            loss.backward()
            private_optimizer.step()
            if len(batch_labels):
                total_loss += float(loss.detach()) * len(batch_labels)
                correct += int((logits.argmax(1) == batch_labels).sum())
                seen += len(batch_labels)
    epsilon = float(engine.get_epsilon(method.delta))
    metrics = {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1), "epsilon": epsilon}
    history_after: AccountantHistory = tuple((float(a), float(b), int(c)) for a, b, c in engine.accountant.history)
    return DPTrainResult(metrics, history_after)
