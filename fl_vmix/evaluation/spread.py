"""Whether a gap between two settings is a finding: it must exceed the spread over their seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fl_vmix.tables import format_value


def exceeds_spread(a: Mapping[str, Any], b: Mapping[str, Any], key: str = "accuracy") -> bool | None:
    """Whether the settings ``a`` and ``b`` differ in ``key`` by more than their spread: the gap between
    their means exceeds the sum of their standard deviations (their mean ± std intervals do not touch).
    None when a spread is unknown (one seed): a single run's gap is no finding."""
    std_a, std_b = float(a[f"{key}_std"]), float(b[f"{key}_std"])
    if math.isnan(std_a) or math.isnan(std_b):
        return None
    return abs(float(a[f"{key}_mean"]) - float(b[f"{key}_mean"])) > std_a + std_b


def mean_std_text(mean: float, std: float, digits: int = 3) -> str:
    """``0.404 ± 0.012``; the mean alone for one seed."""
    if math.isnan(std):
        return format_value(mean, digits)
    return f"{format_value(mean, digits)} ± {format_value(std, digits)}"
