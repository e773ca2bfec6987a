"""The attacker's clear-trained classifier: trained once per dataset and public set, then cached on disk.

Every setting of an experiment is scored with the same classifier (trained on the clear public images),
so it is trained once and kept in the fl_vmix cache folder (``attack_grade/clear-<hash>.pt``, keyed by
the dataset, the public images' ids and the training budget), never next to the committed results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl_vmix.data import resolve_cache_dir
from fl_vmix.evaluation.attack_grade.config import GradeConfig
from fl_vmix.evaluation.attack_grade.data import GradeData
from fl_vmix.evaluation.attacks.obfuscated_recognition import Centred, ClassifierConfig, train_classifier
from fl_vmix.models import build_model


def classifier_config(config: GradeConfig, obfuscated: bool) -> ClassifierConfig:
    epochs, budget = (
        (config.recogniser_epochs, config.recogniser_budget_s)
        if obfuscated
        else (config.classifier_epochs, config.classifier_budget_s)
    )
    return ClassifierConfig(epochs=epochs, time_budget_s=budget, seed=config.seed, device=config.device)


def _cache_path(dataset: str, data: GradeData, cconf: ClassifierConfig, cache_dir: str | None) -> Path:
    ids = hashlib.sha256(data.public_ids.numpy().tobytes()).hexdigest()
    key = json.dumps(
        [dataset, ids, list(data.public_images.shape), cconf.model, cconf.epochs, cconf.time_budget_s, cconf.seed]
    )
    return resolve_cache_dir(cache_dir) / "attack_grade" / f"clear-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def clear_classifier(
    dataset: str,
    data: GradeData,
    config: GradeConfig,
    cache_dir: str | None,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """The clear-trained classifier (images in [0, 1] in, logits out) and how it was trained."""
    cconf = classifier_config(config, obfuscated=False)
    path = _cache_path(dataset, data, cconf, cache_dir)
    shape = data.public_images.shape
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = Centred(build_model(cconf.model, data.num_classes, shape[1], shape[-1], seed=cconf.seed))
        model.load_state_dict(saved["state_dict"])
        log(f"clear classifier: loaded from the cache ({path})")
        return model.to(config.device).eval(), {**saved["training"], "file": path.name, "from_cache": True}
    log(f"clear classifier: training on {shape[0]} clear public images (budget {cconf.time_budget_s:.0f} s)")
    trained, training = train_classifier(data.public_images, data.public_labels, data.num_classes, None, cconf)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save({"state_dict": trained.state_dict(), "training": training}, partial)
    partial.replace(path)
    return trained, {**training, "file": path.name, "from_cache": False}
