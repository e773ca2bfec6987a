"""Recognition by a classifier trained on obfuscated public data (adversary A2, Kerckhoffs).

What the attacker knows: the obfuscation algorithm and its public settings, and labelled clear public
images from the victims' distribution; not the victim's key. It obfuscates the public images under keys
of its own (a fresh key for every chunk of images and every epoch, so the classifier learns the
method, not a key), trains a classifier on them, and labels the victims' obfuscated images. Its
accuracy measures what the *obfuscated distribution* reveals about the class, which can be far more
than a classifier trained on clear images sees (:mod:`.recognition`): for a within-region shuffle, for
instance, the obfuscated-trained model learns to read the region-mean thumbnail.

The same trainer with ``method_factory=None`` trains the clear-data classifier the other attacks
compare against. Models come from :func:`fl_vmix.models.build_model` (``invariant_region`` adds the
shuffle-invariant region-sort input stage).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_vmix.evaluation.attacks.learned import MethodFactory, _as_float_images, attacker_key
from fl_vmix.evaluation.attacks.recognition import recognition_accuracy

logger = logging.getLogger("fl_vmix.attacks")


class Centred(nn.Module):
    """``model((x - 0.5) / 0.25)``: images in [0, 1] in, logits out (so callers never normalise)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - 0.5) / 0.25)


@dataclass(frozen=True)
class ClassifierConfig:
    """How the attacker's classifier is trained (SGD with momentum, cosine schedule, flips)."""

    model: str = "cnn"
    invariant_region: int | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    chunk_size: int = 1250  # images obfuscated under one attacker key
    flip: bool = True
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive seconds or None, got {self.time_budget_s}")


def _labels(labels: Tensor | np.ndarray, n: int, name: str) -> Tensor:
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.shape != (n,):
        raise ValueError(f"{name} must be [N] = [{n}] class indices, got shape {tuple(y.shape)}")
    return y


def train_classifier(
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    num_classes: int,
    method_factory: MethodFactory | None = None,
    config: ClassifierConfig = ClassifierConfig(),
    *,
    ids: Tensor | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Train a classifier (images in [0, 1] in, logits out) on ``images``, obfuscated under attacker
    keys when ``method_factory`` is given (a fresh key per chunk and epoch), else on the clear images.

    Returns the model (in eval mode) and ``{"steps", "epochs_completed", "seconds", "keys_used",
    "train_accuracy"}`` (the last epoch's running accuracy on its training batches).
    """
    from fl_vmix.models import build_model

    start = time.perf_counter()
    x_all = _as_float_images(images, "images")
    n = x_all.shape[0]
    y_all = _labels(labels, n, "labels")
    if y_all.min() < 0 or y_all.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); check num_classes")
    ids_all = torch.arange(n, dtype=torch.int64) if ids is None else torch.as_tensor(ids, dtype=torch.int64)
    device = torch.device(config.device)
    model = Centred(
        build_model(
            config.model, num_classes, x_all.shape[1], x_all.shape[-1], config.invariant_region, seed=config.seed
        )
    ).to(device)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
    )
    g = torch.Generator().manual_seed(config.seed + 1)
    planned = config.epochs * sum(
        -(-min(config.chunk_size, n - i) // config.batch_size) for i in range(0, n, config.chunk_size)
    )
    step = keys = 0
    correct = seen = 0
    done = 0.0
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=g)
        correct = seen = 0
        for c0 in range(0, n, config.chunk_size):
            pick = order[c0 : c0 + config.chunk_size]
            x = x_all[pick]
            if config.flip:
                flip = torch.rand(pick.numel(), generator=g) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            if method_factory is not None:
                x = (
                    method_factory(attacker_key(config.seed, "classifier", epoch, c0))(x, ids_all[pick], epoch)
                    .detach()
                    .float()
                )
                keys += 1
            y = y_all[pick]
            model.train()
            for b0 in range(0, pick.numel(), config.batch_size):
                done = step / planned
                if config.time_budget_s is not None:
                    done = max(done, (time.perf_counter() - start) / config.time_budget_s)
                if done >= 1:
                    break
                for group in optimiser.param_groups:
                    group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * done))
                xb, yb = x[b0 : b0 + config.batch_size].to(device), y[b0 : b0 + config.batch_size].to(device)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step += 1
                correct += int((logits.argmax(1) == yb).sum())
                seen += yb.numel()
            if done >= 1:
                break
        logger.info(
            "classifier epoch %d: train accuracy %.3f (%.0f s)",
            epoch + 1,
            correct / max(seen, 1),
            time.perf_counter() - start,
        )
        if done >= 1:
            break
    model.eval()
    return model, {
        "steps": float(step),
        "epochs_completed": step / planned * config.epochs,
        "seconds": time.perf_counter() - start,
        "keys_used": float(keys),
        "train_accuracy": correct / max(seen, 1),
    }


@dataclass(frozen=True)
class ObfuscatedRecognitionResult:
    """Accuracy of the obfuscated-trained classifier on the victims' obfuscated images, next to chance
    (``1 / classes``), the majority-class rate, and (if a clear-trained classifier was given) that
    classifier's accuracy on the same obfuscated images and on the clear ones."""

    accuracy: float
    chance: float
    majority_rate: float
    n: int
    clear_model_on_obfuscated: float | None
    clear_model_on_clear: float | None
    training: dict[str, float]

    def summary(self) -> dict[str, object]:
        return dict(self.__dict__)


def obfuscated_recognition_attack(
    public_images: Tensor | np.ndarray,
    public_labels: Tensor | np.ndarray,
    victim_obfuscated: Tensor,
    victim_labels: Tensor | np.ndarray,
    method_factory: MethodFactory,
    num_classes: int,
    config: ClassifierConfig = ClassifierConfig(),
    *,
    victim_clear: Tensor | None = None,
    clear_classifier: nn.Module | None = None,
) -> tuple[ObfuscatedRecognitionResult, nn.Module]:
    """Train on public images obfuscated under attacker keys, classify the victims' obfuscated images.

    ``clear_classifier`` (images in [0, 1] in, e.g. from ``train_classifier(..., method_factory=None)``)
    is scored on the same victims for comparison, and on ``victim_clear`` if given.
    """
    victims = _as_float_images(victim_obfuscated, "victim_obfuscated")
    y = _labels(victim_labels, victims.shape[0], "victim_labels")
    model, training = train_classifier(public_images, public_labels, num_classes, method_factory, config)
    out = recognition_accuracy(model, victims, y, num_classes=num_classes)
    on_obf = on_clear = None
    if clear_classifier is not None:
        on_obf = recognition_accuracy(clear_classifier, victims, y, num_classes=num_classes)["accuracy"]
        if victim_clear is not None:
            on_clear = recognition_accuracy(
                clear_classifier, _as_float_images(victim_clear, "victim_clear"), y, num_classes=num_classes
            )["accuracy"]
    result = ObfuscatedRecognitionResult(
        accuracy=out["accuracy"],
        chance=out["chance"],
        majority_rate=out["majority_rate"],
        n=int(out["n"]),
        clear_model_on_obfuscated=on_obf,
        clear_model_on_clear=on_clear,
        training=training,
    )
    return result, model
