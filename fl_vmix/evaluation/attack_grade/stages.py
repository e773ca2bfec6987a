"""The attacks run on one setting, one stage each; every stage returns JSON-ready scores.

The attacker (adversary A2, Kerckhoffs) knows the method and its public settings, holds the clear public
images and the clear-trained classifier, and sees the victims' obfuscated images; it never sees the
victim key. Stages:

* ``obfuscated``: the obfuscated image as it is (SSIM to clear; the clear classifier's accuracy on it);
* ``thumbnail``: the bilinear region-mean image (what any within-region shuffle leaks);
* ``learned``: learned de-obfuscation (:mod:`fl_vmix.evaluation.attacks.learned`), time-budgeted; the clear
  classifier is also scored on its reconstructions;
* ``candidate_search``: smoothness-guided candidate search (shuffling methods only), with the clear
  classifier on its output;
* ``obfuscated_classifier``: a classifier trained on public images obfuscated under the attacker's keys.

SSIM is a mean over victims with its standard error; recognition an accuracy with its binomial standard error.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fl_vmix.evaluation.attack_grade.classifier import classifier_config
from fl_vmix.evaluation.attack_grade.config import GradeConfig
from fl_vmix.evaluation.attack_grade.data import GradeData
from fl_vmix.evaluation.attack_grade.settings import GradeSetting
from fl_vmix.evaluation.attacks.candidate_search import candidate_search
from fl_vmix.evaluation.attacks.learned import (
    LearnedAttackConfig,
    MethodFactory,
    keyed_method_factory,
    train_deobfuscator,
)
from fl_vmix.evaluation.attacks.obfuscated_recognition import obfuscated_recognition_attack
from fl_vmix.evaluation.attacks.recognition import recognition_accuracy
from fl_vmix.evaluation.attacks.regions import thumbnail
from fl_vmix.privacy.similarity import PSNR_CAP, psnr, ssim

GRID_PARAMS = ("region_size", "cell_size", "b")  # each method's public grid (VisualMixer, mosaic, DP-Pix)
DEFAULT_GRID = 8


def victim_key(setting: GradeSetting, seed: int) -> bytes:
    """The victims' key: derived from the setting and the seed, and never handed to any attack."""
    return hashlib.sha256(f"fl_vmix-attack-grade-victim|{seed}|{setting.stem}".encode()).digest()


def method_factory(setting: GradeSetting) -> MethodFactory:
    return keyed_method_factory(setting.method, **dict(setting.params))


def feature_grid(setting: GradeSetting, side: int) -> int:
    """The learned attack's region grid: the method's own grid, else 8 px (never more than the image)."""
    grid = next((int(setting.params[k]) for k in GRID_PARAMS if setting.params.get(k) is not None), DEFAULT_GRID)
    return max(1, min(grid, side))


@dataclass
class StageContext:
    setting: GradeSetting
    data: GradeData
    config: GradeConfig
    factory: MethodFactory
    obfuscated: Tensor  # the victims, protected under the victim key
    clear_model: nn.Module
    log: Callable[[str], None]


def image_scores(images: Tensor, clear: Tensor) -> dict[str, float]:
    per_image = ssim(images.clamp(0, 1), clear).double()
    n = per_image.numel()
    se = float(per_image.std() / math.sqrt(n)) if n > 1 else math.nan
    return {
        "ssim": float(per_image.mean()),
        "ssim_se": se,
        "psnr": float(psnr(images.clamp(0, 1), clear).double().clamp(max=PSNR_CAP).mean()),
    }


def recognition(ctx: StageContext, model: nn.Module, images: Tensor) -> dict[str, float]:
    out = recognition_accuracy(model, images, ctx.data.victim_labels, num_classes=ctx.data.num_classes)
    p, n = out["accuracy"], out["n"]
    return {"recognition": p, "recognition_se": math.sqrt(p * (1 - p) / n)}


def not_applicable(reason: str) -> dict[str, Any]:
    return {"applicable": False, "reason": reason}


def obfuscated_stage(ctx: StageContext) -> dict[str, Any]:
    return {**image_scores(ctx.obfuscated, ctx.data.victims), **recognition(ctx, ctx.clear_model, ctx.obfuscated)}


def thumbnail_stage(ctx: StageContext) -> dict[str, Any]:
    if ctx.setting.method == "none":
        return not_applicable("clear images")
    grid = feature_grid(ctx.setting, min(ctx.obfuscated.shape[-2:]))
    thumb = thumbnail(ctx.obfuscated, grid, "bilinear").clamp(0, 1)
    return {**image_scores(thumb, ctx.data.victims), **recognition(ctx, ctx.clear_model, thumb), "grid": grid}


def learned_stage(ctx: StageContext) -> dict[str, Any]:
    if ctx.setting.method == "none":
        return not_applicable("clear images")
    config, data = ctx.config, ctx.data
    n_public = data.public_images.shape[0]
    n_train = n_public - min(256, n_public // 5)
    grid = feature_grid(ctx.setting, min(ctx.obfuscated.shape[-2:]))
    attack = LearnedAttackConfig(
        region_size=grid,
        widths=config.widths,
        epochs=config.learned_epochs,
        batch_size=max(1, min(64, n_train)),
        time_budget_s=config.learned_budget_s,
        seed=config.seed,
        device=config.device,
        log_every=50,
    )
    start = time.perf_counter()

    def progress(report: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in report.items() if k != "seconds")
        ctx.log(f"  learned: {shown} ({report['seconds']:.0f} / {config.learned_budget_s:.0f} s)")

    model, history = train_deobfuscator(
        data.public_images, ctx.factory, attack, public_ids=data.public_ids, progress=progress
    )
    trained = time.perf_counter() - start
    reconstructed = model.reconstruct(ctx.obfuscated)
    return {
        **image_scores(reconstructed, data.victims),
        **recognition(ctx, ctx.clear_model, reconstructed),
        "grid": grid,
        "head": history.head,
        "batch_size": attack.batch_size,
        "training": {
            "seconds": trained,
            "steps": history.steps,
            "epochs_completed": history.epochs_completed,
            "stopped_by_budget": history.stopped_by_budget,
            "keys_used": history.keys_used,
            "parameters": history.parameters,
            "validation_ssim": list(history.validation_ssim),
        },
    }


def candidate_stage(ctx: StageContext) -> dict[str, Any]:
    if ctx.config.candidates == 0:
        return not_applicable("skipped (--candidates 0)")
    mixer = getattr(ctx.factory(b"\0" * 32), "mixer", None)  # the public grid of the shuffling methods
    if mixer is None:
        return not_applicable("not a shuffle: nothing to rearrange")
    region = int(mixer.region_size)
    sizes = tuple(int(b) for b in mixer.block_sizes if region % int(b) == 0 and int(b) < region)
    if region < 2 or not sizes or min(ctx.obfuscated.shape[-2:]) < region:
        return not_applicable(f"no block size below and dividing region {region}: nothing to rearrange")
    result = candidate_search(
        ctx.obfuscated, region, sizes, candidates=ctx.config.candidates, rounds=ctx.config.candidate_rounds,
        seed=ctx.config.seed,
    )  # fmt: skip
    return {
        **image_scores(result.images, ctx.data.victims),
        **recognition(ctx, ctx.clear_model, result.images),
        "region_size": region,
        "block_sizes": list(sizes),
    }


def obfuscated_classifier_stage(ctx: StageContext) -> dict[str, Any]:
    if ctx.setting.method == "none":
        return not_applicable("clear images: the clear classifier is the recogniser")
    if ctx.config.recogniser_epochs == 0:
        return not_applicable("skipped (--recogniser-epochs 0)")
    data = ctx.data
    result, _ = obfuscated_recognition_attack(
        data.public_images, data.public_labels, ctx.obfuscated, data.victim_labels, ctx.factory, data.num_classes,
        classifier_config(ctx.config, obfuscated=True),
    )  # fmt: skip
    p = result.accuracy
    return {
        "ssim": None,
        "recognition": p,
        "recognition_se": math.sqrt(p * (1 - p) / result.n),
        "training": result.training,
    }


STAGES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "obfuscated": obfuscated_stage,
    "thumbnail": thumbnail_stage,
    "learned": learned_stage,
    "candidate_search": candidate_stage,
    "obfuscated_classifier": obfuscated_classifier_stage,
}


def protect_victims(setting: GradeSetting, data: GradeData, seed: int) -> tuple[MethodFactory, Tensor]:
    factory = method_factory(setting)
    with torch.no_grad():
        obfuscated = factory(victim_key(setting, seed))(data.victims, data.victim_ids, 0).detach().float()
    return factory, obfuscated.clamp(0, 1)
