"""Parameter checks shared by the privacy methods: each error names the parameter and how to fix it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_positive(name: str, value: Any, fix: str) -> None:
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}; {fix}")


def check_epsilon(epsilon: Any) -> None:
    check_positive("epsilon", epsilon, "pass the privacy budget per image, e.g. epsilon=1.0 (smaller = more private)")


def check_delta(delta: Any) -> None:
    if not is_real(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}; use e.g. delta=1e-5 (below 1/number of images)")


def check_int(name: str, value: Any, minimum: int, fix: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {fix}")


def check_seed(seed: Any) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}; pass e.g. seed=0 (or the client's id)")
