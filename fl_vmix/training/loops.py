"""Local training and evaluation loops, free of Flower (the ClientApp, benchmarks and attacks share them).

Both run where ``compute`` says (:class:`fl_vmix.training.device.Compute`: a device and a precision).
The images arrive on the CPU (a client keeps its protected splits there, many clients per process) and
move to the device once per call; the model must already be there. On the CPU without mixed precision
these are exactly the loops of earlier versions, so recorded CPU runs stay reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fl_vmix.training.device import CPU, Compute

# Images reach the model as (x - 0.5) / 0.5 for x in [0, 1]: the same for clear and protected data.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - PIXEL_MEAN) / PIXEL_STD


def train_epochs(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
    compute: Compute = CPU,
) -> dict[str, float]:
    """Local training on ``images`` (floats in [0, 1]) with ``model`` on ``compute.device``.

    Batches are drawn with a CPU generator seeded by ``seed``, so a round is reproducible and the
    batch order is the same on every device.
    """
    generator = torch.Generator().manual_seed(seed)
    images, labels = images.to(compute.device), labels.to(compute.device)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    scaler = compute.grad_scaler()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator).to(compute.device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            inputs, targets = normalise(images[batch]), labels[batch]
            optimizer.zero_grad(set_to_none=True)
            with compute.autocast():
                logits = model(inputs)
                loss = F.cross_entropy(logits, targets)
            if global_params is not None:
                # FedProx: keep the local model near the global one (Li et al. 2020).
                distance = sum((p - g).square().sum() for p, g in zip(model.parameters(), global_params, strict=True))
                loss = loss + proximal_mu / 2 * distance
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(batch)
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.no_grad()
def evaluate_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512, compute: Compute = CPU
) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of ``model`` (on ``compute.device``) on ``images`` (floats in [0, 1])."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        inputs = images[start : start + batch_size].to(compute.device)
        target = labels[start : start + batch_size].to(compute.device)
        with compute.autocast():
            logits = model(normalise(inputs))
        total_loss += float(F.cross_entropy(logits.float(), target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    n = max(len(labels), 1)
    return {"loss": total_loss / n, "accuracy": correct / n}
