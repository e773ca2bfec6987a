"""Optimisers by name: ``sgd`` (with momentum), ``adam`` and our ``st_adam``; learning-rate schedules over rounds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fl_vmix.optim.st_adam import STAdam

OPTIMIZERS = ("sgd", "adam", "st_adam")
LR_SCHEDULES = ("constant", "cosine")


def round_lr(lr: float, schedule: str, server_round: int, num_rounds: int) -> float:
    """The learning rate of ``server_round`` (1-based) of ``num_rounds``. ``cosine`` anneals from ``lr`` in round 1
    towards 0 (SGDR without restarts, Loshchilov and Hutter 2017, stepped once per round): a client trains a round
    at one rate, and every client of a round uses the same one, so FedAvg averages models trained alike."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        if not 1 <= server_round <= num_rounds:
            raise ValueError(f"round {server_round} is outside 1..{num_rounds}: raise num_rounds")
        return lr * 0.5 * (1 + math.cos(math.pi * (server_round - 1) / num_rounds))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}: set optimizer.schedule to one of {LR_SCHEDULES}")


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    extra: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """An optimiser over ``params``; ``extra`` holds its own settings (SGD ``momentum``; ST-Adam's)."""
    extra = dict(extra or {})
    if name == "sgd":
        unknown = sorted(set(extra) - {"momentum"})
        if unknown:
            raise ValueError(f"optimizer sgd has no setting {unknown[0]!r}: it takes lr, weight_decay, momentum")
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=float(extra.get("momentum", 0.0)))
    if name == "adam":
        if extra:
            raise ValueError(f"optimizer adam has no setting {sorted(extra)[0]!r}: it takes lr, weight_decay")
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "st_adam":
        settings: dict[str, Any] = {k: float(v) for k, v in extra.items()}
        return STAdam(params, lr=lr, weight_decay=weight_decay, **settings)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
