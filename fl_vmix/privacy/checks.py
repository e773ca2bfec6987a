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


MIN_KEY_BYTES = 16


def check_key(key: Any, method: str) -> bytes:
    """A keyed method's secret: bytes of at least ``MIN_KEY_BYTES``, never a default.

    Keys never come from the experiment config: each node reads its own (Deployment Engine: the
    SuperNode's key file, see ``fl_vmix.apps.keys.node_key``; simulation: ``$FL_VMIX_KEY_DIR``).
    """
    if key is None:
        raise ValueError(
            f"{method} needs the client's secret key and none was given: keys come from the node's key file "
            "(fl_vmix.apps.keys.node_key, `python -m fl_vmix.deploy keygen`) on the Deployment Engine or from the "
            "simulation key dir ($FL_VMIX_KEY_DIR); pass key=<bytes>"
        )
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        got = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
        raise ValueError(
            f"{method} key must be bytes of at least {MIN_KEY_BYTES} random bytes, got {got}; "
            "use a key file written by `python -m fl_vmix.deploy keygen` (32 bytes)"
        )
    return key
