"""What a client does with its data, independent of Flower: obfuscate, train, evaluate.

Kept free of Flower types so that the ClientApp stays a thin adapter and the same functions serve
benchmarks, attacks and tests.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl_vmix.apps.config import ConfigError
from fl_vmix.models import MODELS, build_model
from fl_vmix.optim import STAdam
from fl_vmix.privacy import vfe
from fl_vmix.privacy.keyed import derive_seed, hash_fields

logger = logging.getLogger("fl_vmix.privacy")

# Images reach the model as (x - 0.5) / 0.5 for x in [0, 1]: the same for clear and obfuscated data.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5
OBFUSCATION_CHUNK = 4096
PSNR_CAP = 100.0  # dB reported for identical images (PSNR is infinite there; JSON has no inf)
SIMILARITY_SAMPLE = 256  # SSIM costs ~1.6 ms per 32 px image on one thread: measure it on a fixed sample

ImageTransform = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def seed_for(*fields: int) -> int:
    """A reproducible 63-bit seed from integers (run seed, partition, round, ...)."""
    return int(hash_fields(0x5EED, *fields).item()) & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------- privacy
def build_image_privacy(privacy: dict[str, Any], key: bytes) -> ImageTransform:
    """The client's privacy method for a ``privacy`` config group, keyed by the client's secret.

    Keyed methods (VisualMixer) take the key itself; noise methods take a seed derived from it, so
    their noise is secret to the client too.
    """
    from fl_vmix.privacy.methods import PRIVACY_METHODS, build_privacy_method, load_providers

    load_providers()
    method = privacy.get("method", "none")
    if method not in PRIVACY_METHODS:
        raise ConfigError(f"unknown privacy method {method!r}: choose one of {', '.join(sorted(PRIVACY_METHODS))}")
    params = {k: v for k, v in privacy.items() if k != "method"}
    accepted = inspect.signature(PRIVACY_METHODS[method]).parameters
    if "key" in accepted:
        params["key"] = key
    elif "seed" in accepted and "seed" not in params:
        params["seed"] = key_seed(key)
    try:
        return build_privacy_method(method, **params)
    except ValueError as err:
        raise ConfigError(f"privacy.{method}: {err}") from err


@dataclass
class ObfuscatedSplit:
    images: torch.Tensor  # float32 [N, C, H, W] in [0, 1], as the model's input before normalisation
    labels: torch.Tensor  # int64 [N]
    ids: torch.Tensor  # int64 [N]
    vfe_corrected: float
    vfe_reference: float
    seconds: float
    unreached: int = 0  # images whose VFE target was out of reach (VisualMixer used its finest setting)
    ssim: float = 1.0  # mean SSIM / PSNR of the obfuscated images against the clear ones
    psnr: float = PSNR_CAP


def obfuscate(transform: ImageTransform, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, epoch: int, region_size: int = 8) -> ObfuscatedSplit:
    """Apply a client's privacy transform to uint8 images, in chunks, and measure the result's VFE."""
    start = time.perf_counter()
    clear = torch.from_numpy(np.ascontiguousarray(images))
    sample_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    mixer = getattr(transform, "mixer", None)
    chunks, unreached = [], 0
    for i in range(0, len(clear), OBFUSCATION_CHUNK):
        chunks.append(transform(clear[i : i + OBFUSCATION_CHUNK].float().div_(255.0), sample_ids[i : i + OBFUSCATION_CHUNK], epoch))
        if mixer is not None and mixer.last_report is not None:
            unreached += mixer.last_report.num_unreached
    out = torch.cat(chunks) if chunks else torch.empty(0, *clear.shape[1:])
    seconds = time.perf_counter() - start
    if unreached:  # one line per call (a client's split, once per round), not one per batch
        logger.warning(
            "VisualMixer: %d of %d images stay below the target VFE with the finest setting: raise it with "
            "smaller block_sizes or a lower target", unreached, len(clear),
        )
    window = min(region_size, *out.shape[-2:]) if len(out) else region_size
    ssim_value, psnr_value = similarity(out[:SIMILARITY_SAMPLE], clear[:SIMILARITY_SAMPLE])
    return ObfuscatedSplit(
        images=out,
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        ids=sample_ids,
        vfe_corrected=float(vfe(out, window, "corrected").mean()) if len(out) else 0.0,
        vfe_reference=float(vfe(out, window, "reference").mean()) if len(out) else 0.0,
        seconds=seconds,
        unreached=unreached,
        ssim=ssim_value,
        psnr=psnr_value,
    )


def similarity(obfuscated: torch.Tensor, clear_uint8: torch.Tensor, chunk: int = 2048) -> tuple[float, float]:
    """Mean SSIM and PSNR (capped at PSNR_CAP) of obfuscated images against their clear versions."""
    from fl_vmix.evaluation.metrics import psnr, ssim

    if len(obfuscated) == 0 or min(obfuscated.shape[-2:]) < 11:
        return float("nan"), float("nan")
    ssims, psnrs = [], []
    for i in range(0, len(obfuscated), chunk):
        clear = clear_uint8[i : i + chunk].float() / 255
        ssims.append(ssim(obfuscated[i : i + chunk], clear))
        psnrs.append(psnr(obfuscated[i : i + chunk], clear).clamp(max=PSNR_CAP))
    return float(torch.cat(ssims).mean()), float(torch.cat(psnrs).mean())


# --------------------------------------------------------------------------------- model, optimiser
def model_from_config(cfg: dict[str, Any], num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    model_cfg = cfg["model"]
    if model_cfg["name"] not in MODELS:
        raise ConfigError(f"unknown model {model_cfg['name']!r}: choose one of {', '.join(sorted(MODELS))}")
    invariant = cfg["privacy"].get("region_size", 8) if model_cfg.get("invariant") else None
    model = build_model(model_cfg["name"], num_classes=num_classes, in_channels=in_channels, image_size=image_size, invariant_region=invariant)
    if cfg["privacy"].get("method") == "dp_sgd":
        from fl_vmix.evaluation.training_dp import make_opacus_compatible

        model = make_opacus_compatible(model)  # the same replacement on server and clients
    return model


OPTIMIZERS = ("sgd", "adam", "st_adam")


def optimizer_from_config(params: Any, opt: dict[str, Any]) -> torch.optim.Optimizer:
    name = opt.get("name")
    extra = {k: v for k, v in opt.items() if k not in {"name", "lr", "weight_decay"}}
    lr, weight_decay = float(opt["lr"]), float(opt.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=float(extra.get("momentum", 0.0)))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "st_adam":
        return STAdam(params, lr=lr, weight_decay=weight_decay, **{k: float(v) for k, v in extra.items()})
    raise ConfigError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


# ------------------------------------------------------------------------------------ train, evaluate
def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - PIXEL_MEAN) / PIXEL_STD


def train_epochs(
    model: nn.Module,
    split: ObfuscatedSplit,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> dict[str, float]:
    """Local training; batches drawn with a seeded generator so a round is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(split.labels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            images, labels = normalise(split.images[batch]), split.labels[batch]
            optimizer.zero_grad(set_to_none=True)
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            if global_params is not None:
                # FedProx: keep the local model near the global one (Li et al. 2020).
                loss = loss + proximal_mu / 2 * sum((p - g).square().sum() for p, g in zip(model.parameters(), global_params))
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(batch)
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.no_grad()
def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = model(normalise(images[start : start + batch_size]))
        target = labels[start : start + batch_size]
        total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    n = max(len(labels), 1)
    return {"loss": total_loss / n, "accuracy": correct / n}


def key_seed(key: bytes) -> int:
    """A non-secret-revealing seed for keyed noise methods (hash of the key)."""
    return derive_seed(key) & ((1 << 63) - 1)
