"""Recognition attack: does a model trained on *clear* images still recognise the obfuscated ones?

An adversary who obtains obfuscated images (a leaked training set, intercepted inference queries) but
not the key can simply show them to a classifier trained on ordinary images, a stand-in for "a person
looking at them". If obfuscation hides the content, that classifier should fall to chance; if it does
clearly better, the images still carry recognisable class evidence. Training the clear model is the
experiment's job; this module only measures it, next to the two chance levels that matter:
``1 / num_classes`` (uniform guessing) and the majority-class rate (always answering the most common
label, the better baseline on imbalanced medical sets such as RetinaMNIST).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def recognition_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    *,
    num_classes: int | None = None,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on ``images`` next to chance.

    Args:
        model: a classifier trained on clear images; evaluated in eval mode (its mode is restored).
        images: ``[N, C, H, W]`` (typically obfuscated test images); ``labels``: ``[N]`` class indices.
        num_classes: defaults to the model's output width.
        input_transform: applied per batch before the model (e.g. the clear model's normalisation).

    Returns:
        ``{"accuracy", "chance" (= 1 / num_classes), "majority_rate", "num_classes", "n"}``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be [N] = [{images.shape[0]}] class indices, got shape {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images given; pass at least one test image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        correct = 0
        width = 0  # set by the first batch (there is at least one image)
        for lo in range(0, images.shape[0], batch_size):
            x = images[lo : lo + batch_size].to(device)
            if input_transform is not None:
                x = input_transform(x)
            logits = model(x)
            width = logits.shape[-1]
            correct += int((logits.argmax(dim=-1).cpu() == labels[lo : lo + batch_size].cpu()).sum())
    finally:
        model.train(was_training)
    k = num_classes if num_classes is not None else width
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(
            f"labels must lie in [0, {k}); pass num_classes if the model's output width is not the class count"
        )
    majority = torch.bincount(labels.cpu().long(), minlength=k).max().item() / labels.shape[0]
    return {
        "accuracy": correct / images.shape[0],
        "chance": 1.0 / k,
        "majority_rate": majority,
        "num_classes": float(k),
        "n": float(images.shape[0]),
    }
