"""The privacy axis of every report: the strongest attack per setting, and the accuracy-privacy Pareto front.

A setting's privacy is what the *strongest* attack recovers, not an average over attacks and not VFE:

* ``attack_ssim``: the highest mean SSIM to the clear images that any attack reaches on the setting
  (learned de-obfuscation, candidate search, jigsaw, gradient inversion, ...). Lower is more private.
* ``attack_recognition``: the highest recognition accuracy any attack reaches (clear-trained or
  obfuscated-trained classifier, classifier on reconstructions). Lower is more private; compare
  with chance.

:func:`privacy_axis` computes both from attack result rows (one row per setting and attack, like
``attacks.csv``). :func:`pareto_front` marks the settings no other setting beats on both accuracy
(higher is better) and the attack score (lower is better); :func:`plot_frontier` draws accuracy
against ``attack_ssim`` (or ``attack_recognition``) with the front marked.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / empty / NaN / non-numeric cells (CSV rows hold strings)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _applicable(row: Row) -> bool:
    flag = row.get("applicable", True)
    return not (flag is False or (isinstance(flag, str) and flag.strip().lower() in ("false", "0", "no")))


def strongest_attack(
    rows: Sequence[Row], value: str, *, setting: Sequence[str] = ("method", "params"), attack: str = "attack"
) -> dict[tuple[Hashable, ...], tuple[float, str]]:
    """Per setting (the tuple of its ``setting`` columns): the highest ``value`` over its attack rows and
    the attack that reached it. Rows marked not applicable or without a number in ``value`` are skipped;
    settings with no usable row are absent."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"value must name a column, got {value!r}; e.g. 'ssim_to_clear'")
    best: dict[tuple[Hashable, ...], tuple[float, str]] = {}
    for i, row in enumerate(rows):
        missing = [c for c in setting if c not in row]
        if missing:
            raise ValueError(f"row {i} lacks the setting column(s) {missing}; pass setting= naming the columns it has")
        number = _number(row.get(value))
        if number is None or not _applicable(row):
            continue
        key = tuple(str(row[c]) if isinstance(row[c], (dict, list)) else row[c] for c in setting)
        if key not in best or number > best[key][0]:
            best[key] = (number, str(row.get(attack, "")))
    return best


def privacy_axis(
    attack_rows: Sequence[Row],
    *,
    setting: Sequence[str] = ("method", "params"),
    ssim_column: str = "ssim_to_clear",
    recognition_column: str = "accuracy",
    attack: str = "attack",
) -> list[dict[str, Any]]:
    """One row per setting: its ``setting`` columns, ``attack_ssim`` and ``attack_recognition`` (the
    maxima over attacks, None when no attack scored it) and ``attack_ssim_by`` / ``attack_recognition_by``
    (the attack that reached it). Settings keep the order of their first row."""
    ssim = strongest_attack(attack_rows, ssim_column, setting=setting, attack=attack)
    recognition = strongest_attack(attack_rows, recognition_column, setting=setting, attack=attack)
    out, seen = [], set()
    for row in attack_rows:
        key = tuple(str(row[c]) if isinstance(row[c], (dict, list)) else row[c] for c in setting)
        if key in seen:
            continue
        seen.add(key)
        s, r = ssim.get(key), recognition.get(key)
        out.append(
            {
                **{c: row[c] for c in setting},
                "attack_ssim": s[0] if s else None,
                "attack_ssim_by": s[1] if s else None,
                "attack_recognition": r[0] if r else None,
                "attack_recognition_by": r[1] if r else None,
            }
        )
    return out


def pareto_front(rows: Sequence[Row], attack: str = "attack_ssim", accuracy: str = "accuracy") -> list[bool]:
    """Which rows are Pareto-optimal for (maximise ``accuracy``, minimise ``attack``).

    A row is on the front iff no other row has accuracy >= and attack score <= with at least one
    strict. Exact duplicates are all on the front. Rows missing either number are never on it (and
    dominate nothing).
    """
    points = [(_number(r.get(accuracy)), _number(r.get(attack))) for r in rows]
    front = []
    for i, (acc, att) in enumerate(points):
        if acc is None or att is None:
            front.append(False)
            continue
        dominated = any(
            a is not None and b is not None and a >= acc and b <= att and (a > acc or b < att)
            for j, (a, b) in enumerate(points)
            if j != i
        )
        front.append(not dominated)
    return front


def plot_frontier(
    rows: Sequence[Row],
    path: str | Path,
    *,
    attack: str = "attack_ssim",
    accuracy: str = "accuracy",
    label: str = "label",
    title: str | None = None,
    error: str | None = None,
    ylabel: str | None = None,
) -> Path:
    """Scatter accuracy against the attack score, number every point (named in a key beside the plot), and
    draw the Pareto front (ringed points joined by a step line); ``error`` names a column of accuracy error
    bars (e.g. the std over seeds). Writes ``path`` (PNG/PDF/SVG by suffix) and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fl_vmix.evaluation.plot_key import keyed_axes, number_points

    front = pareto_front(rows, attack, accuracy)
    usable: list[tuple[int, float, float]] = []
    for i, r in enumerate(rows):
        x, y = _number(r.get(attack)), _number(r.get(accuracy))
        if x is not None and y is not None:
            usable.append((i, x, y))
    if not usable:
        raise ValueError(f"no row has numbers in both {attack!r} and {accuracy!r}; nothing to plot")
    names = [str(rows[i].get(label, i)) + (" (Pareto front)" if front[i] else "") for i, _, _ in usable]
    fig, ax = keyed_axes(names)
    ax.scatter([x for _, x, _ in usable], [y for _, _, y in usable], s=25, color="tab:blue", zorder=2)
    if error is not None:
        bars: list[tuple[float, float, float]] = []
        for i, x, y in usable:
            e = _number(rows[i].get(error))
            if e is not None:
                bars.append((x, y, e))
        if bars:
            ax.errorbar(
                [x for x, _, _ in bars], [y for _, y, _ in bars], yerr=[e for _, _, e in bars], fmt="none",
                ecolor="tab:blue", alpha=0.6, capsize=3, zorder=2,
            )  # fmt: skip
    on_front = sorted((x, y) for i, x, y in usable if front[i])
    front_x, front_y = [x for x, _ in on_front], [y for _, y in on_front]
    ax.scatter(
        front_x, front_y, s=90, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=3, label="Pareto front"
    )
    ax.step(front_x, front_y, where="post", color="tab:red", alpha=0.6, zorder=1)
    number_points(ax, [(x, y) for _, x, y in usable])
    direction = "attack SSIM to clear (strongest attack; lower = more private)"
    ax.set_xlabel(direction if attack == "attack_ssim" else f"{attack} (strongest attack; lower = more private)")
    ax.set_ylabel(ylabel or f"{accuracy} (higher = more useful)")
    ax.set_title(title or f"{accuracy} vs {attack}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
