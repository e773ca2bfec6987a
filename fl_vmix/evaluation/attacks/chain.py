"""Chained attack of the curious server (A1): gradient inversion of client updates, then learned
de-obfuscation of the inverted images.

What the attacker knows: everything the server sees (the global model it sent, each client's update)
and the public FL configuration (batch size, local steps, local learning rate, loss), plus the
obfuscation algorithm and its public settings, and public clear data to train the de-obfuscator
(:mod:`.learned`) under keys of its own. Not the client's key, images or labels (labels are inferred
from the last layer).

Stage 1 (:func:`~.gradient_inversion.invert_gradients`) recovers, at best, the *obfuscated* images the
client trained on; stage 2 (:meth:`~.learned.LearnedDeobfuscator.reconstruct`) turns them into a
picture of the clear images. The result reports each stage against the clear images, the inversion
also against the obfuscated ones, and the de-obfuscation of the *true* obfuscated images (what stage 2
reaches if stage 1 were perfect) as the chain's upper bound.

Iterations. Geiping et al. 2020 ("Inverting Gradients", NeurIPS) optimise with Adam, step size 0.1,
signed gradients, the step size cut 10x at 3/8, 5/8 and 7/8 of the run, cosine similarity plus a TV
prior, for 4,800 iterations on CIFAR-10 and 24,000 on ImageNet (:data:`GEIPING_ITERATIONS_CIFAR`,
:data:`GEIPING_ITERATIONS_IMAGENET`); ``invert_gradients`` implements exactly that schedule. Our default
(:data:`DEFAULT_ITERATIONS` = 1,000) keeps a 32-image run (32 single-image updates) feasible on two
CPU cores; pass ``iterations=GEIPING_ITERATIONS_CIFAR`` for the published setting. Each result
records the iterations and the final matching loss, so convergence can be judged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fl_vmix.evaluation.attacks.gradient_inversion import client_update, infer_labels, invert_gradients
from fl_vmix.evaluation.attacks.learned import LearnedDeobfuscator, _as_float_images
from fl_vmix.evaluation.attacks.regions import thumbnail
from fl_vmix.evaluation.attacks.scoring import match_to_references
from fl_vmix.privacy.similarity import PSNR_CAP, psnr, ssim

GEIPING_ITERATIONS_CIFAR = 4_800
GEIPING_ITERATIONS_IMAGENET = 24_000
DEFAULT_ITERATIONS = 1_000


@dataclass(frozen=True)
class ChainConfig:
    """The client's FL step (public) and the inversion's optimisation settings."""

    batch_size: int = 1  # images per client update
    local_steps: int = 1
    local_lr: float = 0.01
    iterations: int = DEFAULT_ITERATIONS
    inversion_lr: float = 0.1
    tv_weight: float = 1e-2
    restarts: int = 1
    seed: int = 0
    device: str = "cpu"
    vectorised: bool = True  # one batched optimisation for all single-image, single-step updates

    def __post_init__(self) -> None:
        for name in ("batch_size", "local_steps", "iterations", "restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class ChainResult:
    """Mean scores over ``n`` images (PSNR capped at 100 dB) at each stage of the chain.

    ``inverted_*``: stage 1 output vs the clear / obfuscated images; ``chain_*``: stage 2 applied to
    the inverted images vs clear; ``oracle_*``: stage 2 applied to the true obfuscated images vs clear
    (the chain's ceiling); ``obfuscated_ssim`` and ``inverted_thumbnail_ssim``: baselines vs clear.
    ``loss_curve``: mean matching loss every 1/20 of the iterations and at the end (vectorised path only).
    ``images``: ``{"inverted", "chain"}`` tensors ``[n, C, H, W]`` in client order.
    """

    n: int
    iterations: int
    batch_size: int
    seconds: float
    mean_final_loss: float
    labels_correct: float
    inverted_ssim_to_clear: float
    inverted_psnr_to_clear: float
    inverted_ssim_to_obfuscated: float
    inverted_psnr_to_obfuscated: float
    chain_ssim_to_clear: float
    chain_psnr_to_clear: float
    oracle_ssim_to_clear: float
    obfuscated_ssim: float
    inverted_thumbnail_ssim: float
    loss_curve: tuple[float, ...]
    images: dict[str, Tensor]

    def summary(self) -> dict[str, float | int]:
        return {k: v for k, v in self.__dict__.items() if k != "images"}


def _mean(values: Tensor) -> float:
    return float(values.double().clamp(max=PSNR_CAP).mean())


def chained_attack(
    model: nn.Module,
    clear: Tensor,
    obfuscated: Tensor,
    labels: Tensor,
    deobfuscator: LearnedDeobfuscator,
    num_classes: int,
    config: ChainConfig = ChainConfig(),
    *,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChainResult:
    """Simulate each client update on the obfuscated images (``len // batch_size`` updates of
    ``batch_size`` images, ``local_steps`` SGD steps from ``model``), invert it, de-obfuscate the result.

    ``model`` is the global model as sent (its train/eval mode is used as is); ``input_transform`` is
    the client's normalisation. ``progress(done, total)`` is called after each inverted update.
    """
    clear = _as_float_images(clear, "clear")
    obfuscated = _as_float_images(obfuscated, "obfuscated")
    if clear.shape != obfuscated.shape:
        raise ValueError(
            f"clear {tuple(clear.shape)} and obfuscated {tuple(obfuscated.shape)} must match image by image"
        )
    labels = torch.as_tensor(labels).long()
    if labels.shape != (clear.shape[0],):
        raise ValueError(f"labels must be [N] = [{clear.shape[0]}], got {tuple(labels.shape)}")
    n = (clear.shape[0] // config.batch_size) * config.batch_size
    if n == 0:
        raise ValueError(f"{clear.shape[0]} images make no full client batch of {config.batch_size}: pass more images")
    start = time.perf_counter()
    updates = [
        client_update(model, obfuscated[lo : lo + config.batch_size], labels[lo : lo + config.batch_size],
                      config.local_steps, config.local_lr, input_transform=input_transform)
        for lo in range(0, n, config.batch_size)
    ]  # fmt: skip
    if _can_vectorise(model, config):
        inv, inferred, losses, curve = invert_single_image_updates(
            model, updates, tuple(clear.shape[1:]), num_classes, config, input_transform=input_transform
        )
        labels_ok = int((inferred == labels[:n]).sum())
        if progress is not None:
            progress(n, n)
    else:
        inverted, losses, labels_ok, curve = [], [], 0, []
        shape = (clear.shape[1], clear.shape[2], clear.shape[3])
        for i, (lo, update) in enumerate(zip(range(0, n, config.batch_size), updates)):
            sl = slice(lo, lo + config.batch_size)
            result = invert_gradients(
                model, update, batch_size=config.batch_size, image_shape=shape,
                num_classes=num_classes, local_steps=config.local_steps, local_lr=config.local_lr,
                iterations=config.iterations, tv_weight=config.tv_weight, lr=config.inversion_lr,
                seed=config.seed + i, restarts=config.restarts, input_transform=input_transform, device=config.device,
            )  # fmt: skip
            labels_ok += int((result.labels.cpu().sort().values == labels[sl].sort().values).sum())
            losses.append(result.final_loss)
            inverted.append(match_to_references(result.images, obfuscated[sl]))
            if progress is not None:
                progress(i + 1, len(updates))
        inv = torch.cat(inverted)
    clear, obfuscated = clear[:n], obfuscated[:n]
    chain = deobfuscator.reconstruct(inv)
    oracle = deobfuscator.reconstruct(obfuscated)
    region = deobfuscator.config.region_size
    return ChainResult(
        n=n,
        iterations=config.iterations,
        batch_size=config.batch_size,
        seconds=time.perf_counter() - start,
        mean_final_loss=sum(losses) / len(losses),
        labels_correct=labels_ok / n,
        inverted_ssim_to_clear=_mean(ssim(inv, clear)),
        inverted_psnr_to_clear=_mean(psnr(inv, clear)),
        inverted_ssim_to_obfuscated=_mean(ssim(inv, obfuscated)),
        inverted_psnr_to_obfuscated=_mean(psnr(inv, obfuscated)),
        chain_ssim_to_clear=_mean(ssim(chain, clear)),
        chain_psnr_to_clear=_mean(psnr(chain, clear)),
        oracle_ssim_to_clear=_mean(ssim(oracle, clear)),
        obfuscated_ssim=_mean(ssim(obfuscated, clear)),
        inverted_thumbnail_ssim=_mean(ssim(thumbnail(inv, region, "bilinear").clamp(0, 1), clear)),
        loss_curve=tuple(curve),
        images={"inverted": inv, "chain": chain},
    )


def _can_vectorise(model: nn.Module, config: ChainConfig) -> bool:
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return (
        config.vectorised
        and config.batch_size == 1
        and config.local_steps == 1
        and config.restarts == 1
        and not batch_norm
    )


def invert_single_image_updates(
    model: nn.Module,
    updates: list[list[Tensor]],
    image_shape: tuple[int, ...],
    num_classes: int,
    config: ChainConfig,
    *,
    input_transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, list[float], list[float]]:
    """Invert many single-image, single-step updates at once: the same optimisation as
    :func:`~.gradient_inversion.invert_gradients` (cosine + TV, Adam on signed gradients, step size cut
    10x at 3/8, 5/8, 7/8, projection onto [0, 1], the same seeded start per update), run as one batch.

    The per-update gradients come from ``vmap(grad(loss))`` over the dummy images, and every dummy image
    enters only its own update's loss, so the batch is exactly ``len(updates)`` independent inversions
    (Adam is element-wise), only faster on a CPU. Needs a model without batch statistics (no BatchNorm).
    Returns the images ``[N, C, H, W]`` (CPU, update order), the inferred labels, each final loss, and the
    mean loss at every 1/20 of the run plus at the end (to judge convergence).
    """
    device = torch.device(config.device)
    params = {k: p.detach().to(device) for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach().to(device) for k, b in model.named_buffers()}
    names = list(params)
    if any(len(u) != len(names) for u in updates):
        raise ValueError(f"every update needs one tensor per trainable parameter ({len(names)})")
    target = {k: torch.stack([u[j] for u in updates]).to(device) for j, k in enumerate(names)}
    labels = torch.cat([infer_labels(model, u, num_classes, 1) for u in updates]).to(device)

    def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        inputs = x.unsqueeze(0) if input_transform is None else input_transform(x.unsqueeze(0))
        return F.cross_entropy(functional_call(model, {**p, **buffers}, (inputs,)), y.unsqueeze(0))

    per_update = vmap(grad(loss_one), in_dims=(None, 0, 0))
    target_norm = torch.stack([t.pow(2).flatten(1).sum(1) for t in target.values()]).sum(0).sqrt()

    def objective(x: Tensor) -> Tensor:  # [N]
        g = per_update(params, x, labels)
        dot = torch.stack([(g[k] * target[k]).flatten(1).sum(1) for k in names]).sum(0)
        norm = torch.stack([g[k].pow(2).flatten(1).sum(1) for k in names]).sum(0).sqrt()
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).abs().mean(
            (1, 2, 3)
        )
        return 1 - dot / (norm * target_norm + 1e-12) + config.tv_weight * tv

    starts = [
        torch.rand((1, *image_shape), generator=torch.Generator().manual_seed(config.seed + i))
        for i in range(len(updates))
    ]
    z = torch.cat(starts).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=config.inversion_lr)
    milestones = sorted({max(1, int(config.iterations * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=0.1)
    curve = []
    for i in range(config.iterations):
        optimiser.zero_grad(set_to_none=True)
        values = objective(z)
        values.sum().backward()
        if i % max(1, config.iterations // 20) == 0:
            curve.append(float(values.detach().mean()))
        assert z.grad is not None
        z.grad.sign_()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            z.clamp_(0, 1)
    final = objective(z.detach().requires_grad_(True)).detach().cpu()
    curve.append(float(final.mean()))
    return z.detach().cpu(), labels.cpu(), final.tolist(), curve
