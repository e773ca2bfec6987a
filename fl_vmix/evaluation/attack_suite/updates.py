"""What the server sees of a client's training (threat A1): the update, as each privacy method shapes it."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

from fl_vmix.evaluation.attack_suite.subjects import Subject
from fl_vmix.evaluation.attacks import client_update
from fl_vmix.factory import build_privacy
from fl_vmix.privacy.training_level import DPSGD, CentralDP
from fl_vmix.training.loops import normalise


def dp_sgd_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    lr: float = 0.01,
    local_steps: int = 1,
    generator: torch.Generator | None = None,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """What a DP-SGD client sends, ``w_before - w_after`` after ``local_steps`` Opacus DP-SGD steps on one batch.

    Each step clips every sample's gradient to ``max_grad_norm`` (flat L2 over all parameters), sums,
    adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` and divides by the batch size, as
    Opacus' ``DPOptimizer`` does in training (here on a fixed batch, no Poisson sampling). The noise
    draws from ``generator``. The model is not modified. ``noise_multiplier=0`` gives clipping only.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise ValueError(f"need noise_multiplier >= 0 and max_grad_norm > 0, got {noise_multiplier}, {max_grad_norm}")
    if local_steps < 1:
        raise ValueError(f"local_steps must be >= 1, got {local_steps}")
    local = copy.deepcopy(model)
    before = [p.detach().clone() for p in local.parameters() if p.requires_grad]
    wrapped = GradSampleModule(local)
    optimizer = DPOptimizer(
        torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=lr),
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        expected_batch_size=int(images.shape[0]),
        generator=generator,
    )
    inputs = input_transform(images) if input_transform is not None else images
    with warnings.catch_warnings():
        # Opacus' hooks fire on module outputs because the images need no gradient: expected here
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for _ in range(local_steps):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(wrapped(inputs), labels).backward()
            optimizer.step()
    after = [p.detach() for p in local.parameters() if p.requires_grad]
    wrapped._close()  # remove Opacus' hooks from the copy
    return [b - a for b, a in zip(before, after)]


def central_dp_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    clipping_norm: float,
    lr: float = 0.01,
    local_steps: int = 1,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """What the server sees from a central-DP client: its update clipped to ``clipping_norm``.

    Flower's client-side fixed clipping scales the whole update by ``min(1, clipping_norm / ||u||)``
    (its own ``clip_inputs_inplace`` is used here); the Gaussian noise is added by the server to the
    *aggregate*, so an honest-but-curious server observes each clipped update without noise.
    """
    from flwr.supercore.differential_privacy import clip_inputs_inplace

    if clipping_norm <= 0:
        raise ValueError(f"clipping_norm must be > 0, got {clipping_norm}")
    update = client_update(model, images, labels, local_steps, lr, input_transform=input_transform)
    arrays = [u.double().numpy().copy() for u in update]
    clip_inputs_inplace(arrays, float(clipping_norm))
    return [torch.from_numpy(a).to(u.dtype) for a, u in zip(arrays, update)]


def observed_update(
    subject: Subject,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    local_steps: int,
    lr: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """The update the server receives from a client of ``subject`` training on ``images``."""
    method = build_privacy(subject.privacy, None) if subject.privacy.method in (DPSGD.name, CentralDP.name) else None
    if isinstance(method, DPSGD):
        return dp_sgd_update(
            model,
            images,
            labels,
            noise_multiplier=method.noise_multiplier,
            max_grad_norm=method.max_grad_norm,
            lr=lr,
            local_steps=local_steps,
            generator=generator,
            input_transform=normalise,
        )
    if isinstance(method, CentralDP):
        return central_dp_update(
            model,
            images,
            labels,
            clipping_norm=method.clipping_norm,
            lr=lr,
            local_steps=local_steps,
            input_transform=normalise,
        )
    return client_update(model, images, labels, local_steps, lr, input_transform=normalise)
