"""Scatter plots whose points carry numbers, named in a key beside the axes.

Setting labels are too long to print beside their points, and similar settings sit on top of each other,
so the labels of a crowded plot overwrite one another; numbers stay legible and the key reads like a table.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

_KEY_WIDTH = 52  # characters per key line


def _key_lines(names: Sequence[str]) -> list[str]:
    lines = []
    for number, name in enumerate(names, start=1):
        wrapped = textwrap.wrap(name, _KEY_WIDTH) or [name]
        lines += [f"{number:>2}  {wrapped[0]}"] + [f"    {part}" for part in wrapped[1:]]
    return lines


def keyed_axes(names: Sequence[str], width: float = 7.0) -> tuple[Any, Any]:
    """A figure with the plot's axes on the left and, on the right, the key that numbers ``names``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = _key_lines(names)
    height = max(4.8, 0.125 * len(lines) + 0.9)
    fig, (ax, key) = plt.subplots(
        1, 2, figsize=(width + 4.6, height), gridspec_kw={"width_ratios": [width, 4.6]}, dpi=120
    )
    key.axis("off")
    key.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=7, family="monospace", transform=key.transAxes)
    return fig, ax


def number_points(ax: Any, points: Sequence[tuple[float, float]]) -> None:
    """Write 1, 2, ... beside ``points`` (in the order of the names given to :func:`keyed_axes`)."""
    for number, (x, y) in enumerate(points, start=1):
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
