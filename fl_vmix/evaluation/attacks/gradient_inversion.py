"""Gradient inversion against a federated client's model update ("Inverting Gradients" style).

Threat: the server (or anyone who sees a client's update) knows the global model it sent and the update
that came back, and wants the client's training images. Following Geiping et al., "Inverting Gradients
- How easy is it to break privacy in federated learning?" (NeurIPS 2020), the attacker optimises a dummy
batch so that the update it *would* produce points the same way as the observed one:

    loss(x) = 1 - cos(U(x, y), U_target) + tv_weight * TV(x)

where ``U`` is the client's update computed differentiably from the dummy images ``x`` and labels
``y``, the cosine runs over all trainable parameters flattened together, and the anisotropic total
variation ``TV`` is a natural-image prior. Cosine (not Euclidean) matching makes the loss blind to the
update's scale, so a single-step update may be given as the gradient or as the parameter delta.

For ``local_steps > 1`` (FedAvg) the attacker unrolls the client's SGD steps on the dummy batch with
``torch.func.functional_call`` and ``create_graph=True`` and matches the delta ``w_before - w_after``
(the multi-step variant of Geiping et al., Sec. 5). Each simulated step is a full-batch step on the
``batch_size`` images, i.e. the client holds exactly that batch and makes ``local_steps`` passes over it.

Against VisualMixer the images the client trained on are *obfuscated*; a perfect attack recovers those,
which is why results are scored against both the clear and the obfuscated image (``scoring.py``).

Unknown labels are inferred from the last layer (iDLG, Zhao et al. 2020): for cross-entropy the
gradient w.r.t. the logits is ``softmax - onehot``, negative only at the true class, so for one image
the last-layer bias update (or, without a bias, the row sums of the weight update, since its inputs are
non-negative after a ReLU) is negative exactly at the label. For a batch, the ``batch_size`` most
negative entries are taken (exact for distinct labels, a heuristic otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fl_vmix.evaluation.attacks.scoring import ReconstructionScore, match_to_references, score_reconstruction

Update = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
InputTransform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InversionResult:
    """Outcome of :func:`invert_gradients`.

    ``images`` are ``[B, C, H, W]`` in [0, 1] on the CPU, in arbitrary order relative to the client's
    batch (a summed gradient does not record order); ``labels`` are the labels used for the dummy
    batch (given or inferred); ``final_loss`` is the matching loss of the returned images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    final_loss: float
    labels_inferred: bool

    def score(
        self, clear: torch.Tensor, obfuscated: torch.Tensor | None = None, *, align: bool = True
    ) -> ReconstructionScore:
        """SSIM/PSNR against the clear and obfuscated batches, after pairing reconstructions with
        samples (by MSE to the image the client trained on: the obfuscated one if given)."""
        recon = self.images
        if align:
            recon = match_to_references(recon, obfuscated if obfuscated is not None else clear)
        return score_reconstruction(recon, clear, obfuscated)


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    params: dict[str, torch.Tensor] = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no trainable parameters; unfreeze the layers whose update the client sends")
    return params


def _simulate_update(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    local_steps: int,
    lr: float,
    create_graph: bool,
    input_transform: InputTransform | None,
) -> list[torch.Tensor]:
    """``w_before - w_after`` after ``local_steps`` full-batch SGD steps, optionally differentiable.

    Buffers are cloned per call so BatchNorm running statistics of the real model never change.
    """
    inputs = input_transform(images) if input_transform is not None else images
    current = dict(params)
    for _ in range(local_steps):
        state = {**current, **{k: b.clone() for k, b in buffers.items()}}
        loss = F.cross_entropy(functional_call(model, state, (inputs,)), labels)
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=create_graph)
        current = {name: p - lr * g for (name, p), g in zip(current.items(), grads)}
    return [params[name] - current[name] for name in params]


def client_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    local_steps: int = 1,
    lr: float = 0.01,
    *,
    input_transform: InputTransform | None = None,
) -> list[torch.Tensor]:
    """What an honest client sends: ``w_before - w_after`` for its trainable parameters, in
    ``model.named_parameters()`` order, after ``local_steps`` full-batch SGD steps on ``images``.

    For one step this is ``lr`` times the gradient, which cosine matching treats exactly like the
    gradient. The model itself is not modified. Uses the same code path as the attacker's simulation,
    so an attack that knows ``lr`` and ``local_steps`` faces no modelling mismatch.
    """
    _check_batch(images, labels)
    if local_steps < 1:
        raise ValueError(f"local_steps must be >= 1, got {local_steps}")
    params = {k: p.detach().requires_grad_(True) for k, p in _trainable(model).items()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    delta = _simulate_update(model, params, buffers, images, labels, local_steps, lr, False, input_transform)
    return [d.detach() for d in delta]


def _check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}; add a batch dim")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be [B] = [{images.shape[0]}] class indices, got shape {tuple(labels.shape)}")


def _as_list(target_update: Update, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Target update as a list aligned with the trainable parameters, shapes checked."""
    if isinstance(target_update, Mapping):
        missing = [n for n in params if n not in target_update]
        if missing:
            raise ValueError(
                f"target_update lacks entries for {missing[:3]}...; give one tensor per trainable parameter"
            )
        tensors = [target_update[n] for n in params]
    else:
        tensors = list(target_update)
        if len(tensors) != len(params):
            raise ValueError(
                f"target_update has {len(tensors)} tensors but the model has {len(params)} trainable parameters; "
                "pass them in model.named_parameters() order (as client_update returns them)"
            )
    for (name, p), t in zip(params.items(), tensors):
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"target_update for {name} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
    return [t.detach() for t in tensors]


def _last_layer_signal(params: dict[str, torch.Tensor], update: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Per-class score from the classifier layer's update, most negative at the true label(s)."""
    names = list(params)
    for i in reversed(range(len(names))):
        shape = params[names[i]].shape
        if len(shape) == 1 and shape[0] == num_classes:
            return update[i].float()
        if len(shape) >= 2 and shape[0] == num_classes:
            return update[i].float().flatten(1).sum(dim=1)
    raise ValueError(
        f"no trainable parameter has {num_classes} output rows, so labels cannot be inferred; "
        "pass labels= explicitly or check num_classes"
    )


def infer_labels(model: nn.Module, target_update: Update, num_classes: int, batch_size: int) -> torch.Tensor:
    """Labels of the client's batch from the classifier layer's update (iDLG; see module docstring).

    Uses the last trainable 1-D parameter of length ``num_classes`` (the output bias) or else the
    last parameter with ``num_classes`` rows (the output weight, row sums). The update may be a
    gradient or a ``w_before - w_after`` delta (both point along the gradient). For ``batch_size``
    greater than the number of negative entries, the most negative classes are repeated in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = _trainable(model)
    signal = _last_layer_signal(params, _as_list(target_update, params), num_classes)
    order = torch.sort(signal, stable=True).indices  # most negative first, ties by class index
    negatives = int((signal < 0).sum())
    if negatives >= batch_size:
        return order[:batch_size].long()
    pool = order[: max(negatives, 1)]  # fewer negative classes than images: labels repeat
    return pool.repeat(-(-batch_size // pool.numel()))[:batch_size].long()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean absolute difference of vertical plus horizontal neighbours."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dx + dy


def _cosine_distance(update: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of the two updates flattened over all parameters together."""
    dot = sum((u * t).sum() for u, t in zip(update, target))
    nu = torch.sqrt(cast(torch.Tensor, sum(u.pow(2).sum() for u in update)))
    nt = torch.sqrt(cast(torch.Tensor, sum(t.pow(2).sum() for t in target)))
    return 1 - dot / (nu * nt + 1e-12)


def invert_gradients(
    model: nn.Module,
    target_update: Update,
    *,
    batch_size: int,
    image_shape: tuple[int, int, int],
    num_classes: int,
    labels: torch.Tensor | None = None,
    local_steps: int = 1,
    local_lr: float = 0.01,
    iterations: int = 2000,
    tv_weight: float = 1e-2,
    lr: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
    parametrisation: Literal["clamp", "sigmoid"] = "clamp",
    signed: bool = True,
    restarts: int = 1,
    input_transform: InputTransform | None = None,
) -> InversionResult:
    """Reconstruct the client's ``batch_size`` images from its update by cosine gradient matching.

    Args:
        model: the global model the client started from (weights as sent). Its mode (train/eval) is
            used as is; dropout makes the client's update irreproducible, so attack models without it.
        target_update: the observed update, a list in ``model.named_parameters()`` order (trainable
            only) or a name -> tensor mapping: the gradient, or ``w_before - w_after``.
        local_steps, local_lr: the client's local SGD schedule, assumed known (it is part of the
            algorithm's public configuration). Irrelevant to the loss when ``local_steps == 1``.
        iterations, lr: Adam steps on the dummy images, with the step size cut 10x at 3/8, 5/8, 7/8.
        tv_weight: weight of the total-variation prior.
        parametrisation: ``"clamp"`` projects onto [0, 1] after each step (Geiping's "boxed"),
            ``"sigmoid"`` optimises logits. ``signed`` uses the sign of the image gradient (Geiping).
        restarts: independent random starts; the one with the lowest final loss is returned.
        input_transform: applied to images before the model (e.g. normalisation), as the client does.
        seed: makes the random start, hence the result on CPU, reproducible.

    Returns:
        :class:`InversionResult` with images in [0, 1] on the CPU.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
    counts = {"batch_size": batch_size, "local_steps": local_steps, "iterations": iterations, "restarts": restarts}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if parametrisation not in ("clamp", "sigmoid"):
        raise ValueError(f"parametrisation must be 'clamp' or 'sigmoid', got {parametrisation!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device

    params_live = _trainable(model)
    target = [t.to(device) for t in _as_list(target_update, params_live)]
    params = {k: p.detach().to(device).requires_grad_(True) for k, p in params_live.items()}
    buffers = {k: b.detach().to(device) for k, b in model.named_buffers()}

    inferred = labels is None
    if labels is None:
        labels = infer_labels(model, target_update, num_classes, batch_size)
    labels = torch.as_tensor(labels).long().to(device)
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")

    def images_of(z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z) if parametrisation == "sigmoid" else z

    def objective(x: torch.Tensor) -> torch.Tensor:
        update = _simulate_update(model, params, buffers, x, labels, local_steps, local_lr, True, input_transform)
        return _cosine_distance(update, target) + tv_weight * total_variation(x)

    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor] | None = None
    for _ in range(restarts):
        start = torch.rand((batch_size, *image_shape), generator=generator)
        if parametrisation == "sigmoid":
            start = torch.logit(start.clamp(0.01, 0.99))
        z = start.to(device).requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=lr)
        milestones = sorted({max(1, int(iterations * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=0.1)
        for _ in range(iterations):
            optimiser.zero_grad(set_to_none=True)
            objective(images_of(z)).backward()
            if signed:
                assert z.grad is not None  # backward() just filled it
                z.grad.sign_()
            optimiser.step()
            schedule.step()
            if parametrisation == "clamp":
                with torch.no_grad():
                    z.clamp_(0, 1)
        x = images_of(z).detach()
        final = float(objective(x.requires_grad_(True)).detach())
        if best is None or final < best[0]:
            best = (final, x.detach())
    assert best is not None
    return InversionResult(best[1].cpu(), labels.cpu(), best[0], inferred)


def analytic_linear_inversion(
    weight_update: torch.Tensor, bias_update: torch.Tensor, image_shape: tuple[int, int, int]
) -> torch.Tensor:
    """Exact input of a first fully connected layer from its update (sanity check for the attack).

    For ``y = W x + b`` and one sample, ``dL/dW = (dL/dy) x^T`` and ``dL/db = dL/dy``, so every row
    with a non-zero bias entry gives ``x = dW_i / db_i``. We take the least-squares combination over
    rows, ``x = sum_i db_i dW_i / sum_i db_i^2``. It stays exact for several local steps on the same
    single image (both updates are sums over steps of the same outer products with the same ``x``),
    and for a batch it returns a bias-weighted mixture of the images. The result is the layer's input:
    undo any input normalisation yourself. Returns ``[1, C, H, W]``.
    """
    if weight_update.dim() != 2 or bias_update.dim() != 1 or weight_update.shape[0] != bias_update.shape[0]:
        raise ValueError(
            f"expected a [out, in] weight update and an [out] bias update of one Linear layer, got "
            f"{tuple(weight_update.shape)} and {tuple(bias_update.shape)}"
        )
    numel = image_shape[0] * image_shape[1] * image_shape[2]
    if weight_update.shape[1] != numel:
        raise ValueError(
            f"the layer has {weight_update.shape[1]} inputs but image_shape {image_shape} has {numel} pixels"
        )
    denom = bias_update.double().pow(2).sum()
    if denom == 0:
        raise ValueError("bias update is all zeros (no loss signal); the input cannot be recovered from this update")
    x = (bias_update.double() @ weight_update.double()) / denom
    return x.to(weight_update.dtype).view(1, *image_shape)
