"""The privacy-axis section of ``report.md``: attack columns per setting, the Pareto front and what it beats.

Input: one row per report setting (over its seeds) with ``setting``, ``method``, ``seeds``,
``accuracy_mean`` / ``accuracy_std`` and the attack columns of :mod:`fl_vmix.evaluation.privacy_axis`.
The front is the set of settings no other setting beats on both accuracy (higher) and ``attack_ssim``
(lower), from the means (:func:`fl_vmix.evaluation.attacks.frontier.pareto_front`). The text then
compares each front setting with every baseline (every method but VisualMixer) and counts a gap only
when it is a finding: an accuracy gap must exceed the spread over seeds (:func:`exceeds_spread`), an
``attack_ssim`` gap twice its standard error over victims.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fl_vmix.evaluation.privacy_axis import ATTACKS_DIR, CLEAR_NOTE, TRAINING_LEVEL_NOTE
from fl_vmix.evaluation.spread import exceeds_spread, mean_std_text
from fl_vmix.tables import format_value

PLOT = "accuracy_vs_attack_ssim.png"
START, END = "<!-- privacy-axis -->", "<!-- /privacy-axis -->"
_SECTION = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
Row = Mapping[str, Any]


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _count(value: Any) -> str:
    number = _num(value)
    return "–" if math.isnan(number) else f"{int(number):,}"


def _has_axis(row: Row) -> bool:
    return not math.isnan(_num(row.get("attack_ssim")))


def accuracy_order(a: Row, b: Row) -> int | None:
    """+1 / -1 when ``a`` is more / less accurate than ``b`` beyond the spread, 0 within it, None for one seed."""
    differs = exceeds_spread(a, b)
    if differs is None:
        return None
    return 0 if not differs else (1 if _num(a["accuracy_mean"]) > _num(b["accuracy_mean"]) else -1)


def privacy_order(a: Row, b: Row) -> int:
    """+1 / -1 when the strongest attack recovers less / more of ``a`` than of ``b`` (SSIM gap over 2 SE)."""
    gap = _num(b["attack_ssim"]) - _num(a["attack_ssim"])
    se = [_num(r.get("_attack_ssim_se")) for r in (a, b)]
    noise = 2 * math.sqrt(sum(0.0 if math.isnan(s) else s * s for s in se))
    return 1 if gap > noise else -1 if gap < -noise else 0


def _point(row: Row) -> str:
    return (
        f"{row['setting']} (accuracy {mean_std_text(_num(row['accuracy_mean']), _num(row['accuracy_std']))}, "
        f"attack SSIM {format_value(_num(row['attack_ssim']))})"
    )


def front_findings(settings: Sequence[Row]) -> list[str]:
    """The Pareto settings, the baselines each dominates, where each loses, and what needs more seeds."""
    from fl_vmix.evaluation.attacks.frontier import pareto_front

    graded = [r for r in settings if _has_axis(r)]
    if not graded:
        return ["No setting is graded yet: run `python -m fl_vmix.evaluation.attack_grade --experiment <name>`."]
    front = [r for r, on in zip(graded, pareto_front(graded, "attack_ssim", "accuracy_mean")) if on]
    notes = ["Pareto front (accuracy against attack SSIM): " + "; ".join(_point(r) for r in front) + "."]
    by_recognition = pareto_front(graded, "attack_recognition", "accuracy_mean")
    names = [r["setting"] for r, on in zip(graded, by_recognition) if on]
    notes.append("Pareto front against attack recognition instead: " + ", ".join(names) + ".")
    baselines = [r for r in graded if r["method"] != "visualmixer"]
    for row in front:
        dominates, loses, unclear = [], [], []
        for base in baselines:
            if base is row:
                continue
            acc, priv = accuracy_order(row, base), privacy_order(row, base)
            gap = _num(row["accuracy_mean"]) - _num(base["accuracy_mean"])
            if acc is None:
                unclear.append(base["setting"])
                continue
            if acc >= 0 and priv >= 0 and (acc or priv):
                dominates.append(base["setting"])
            if acc < 0:
                loses.append(f"accuracy to {base['setting']} ({100 * gap:+.1f} pp, beyond the spread)")
            if priv < 0:
                loses.append(
                    f"privacy to {base['setting']} (attack SSIM {format_value(_num(row['attack_ssim']))} against "
                    f"{format_value(_num(base['attack_ssim']))})"
                )
        parts = [f"dominates {', '.join(dominates)}" if dominates else "dominates no baseline"]
        parts.append(f"loses on {'; on '.join(loses)}" if loses else "loses to no baseline beyond the spread")
        if unclear:
            parts.append(f"one seed, so no accuracy finding against {', '.join(unclear)}")
        notes.append(f"{row['setting']}: " + "; ".join(parts) + ".")
    return notes


def section(settings: Sequence[Row], grades: Mapping[str, Mapping[str, Any]], plot: bool) -> list[str]:
    """The markdown section (between markers, so it can be replaced in place)."""
    first = next(iter(grades.values()), {})
    victims, public = first.get("victims", {}), first.get("public", {})
    lines = [
        START,
        "",
        "## Privacy axis: the strongest attack",
        "",
        f"Graded by `python -m fl_vmix.evaluation.attack_grade` (every grade, with its command, commit, budgets "
        f"and timings, in `{ATTACKS_DIR}/<setting>.json`): {victims.get('n', '?')} victim images of the "
        f"{'+'.join(victims.get('splits', ['test']))} split(s), protected under a victim key the attacker does not "
        f"know; the attacker holds {public.get('n', '?')} clear public images of the training split and obfuscates "
        "them under its own keys. `attack_ssim` is the highest mean SSIM to the clear images any attack reached "
        "(the obfuscated image itself, the region-mean thumbnail, learned de-obfuscation, candidate search); "
        "`attack_recognition` the highest accuracy of a classifier trained on clear public images (on the "
        "obfuscated images, the thumbnails and the reconstructions) or on obfuscated ones. Lower is more private. "
        "VFE is shown for comparison, not as the privacy axis. Budgets in seconds bound the learned attack's "
        "training, so its steps (a column) depend on the machine's load during grading: where they differ, the "
        "setting with fewer steps met a weaker attack.",
        "",
        "| setting | seeds | accuracy | attack SSIM | by | attack recognition | by | chance | learned steps | VFE "
        "| SSIM | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in settings:
        lines.append(
            f"| {r['setting']} | {r['seeds']} | {mean_std_text(_num(r['accuracy_mean']), _num(r['accuracy_std']))} | "
            f"{format_value(_num(r.get('attack_ssim')))} | {r.get('attack_ssim_by') or '–'} | "
            f"{format_value(_num(r.get('attack_recognition')))} | {r.get('attack_recognition_by') or '–'} | "
            f"{format_value(_num(r.get('_attack_chance')))} | {_count(r.get('_attack_learned_steps'))} | "
            f"{format_value(_num(r.get('vfe')), 2)} | "
            f"{format_value(_num(r.get('ssim')))} | {r.get('attack_note') or ''} |"
        )
    lines += ["", *[f"- {n}" for n in front_findings(settings)]]
    off_axis = [r["setting"] for r in settings if r.get("attack_note") == TRAINING_LEVEL_NOTE]
    if off_axis:
        lines.append(
            f"- Off this axis: {', '.join(off_axis)}. {TRAINING_LEVEL_NOTE[0].upper()}{TRAINING_LEVEL_NOTE[1:]}."
        )
    if any(r.get("attack_note") == CLEAR_NOTE for r in settings):
        lines.append("- `none`: the attack SSIM of clear images is 1 by definition; its recognition is the clear "
                     "classifier's accuracy on the clear victims.")  # fmt: skip
    if plot:
        lines += ["", f"![accuracy vs attack SSIM]({PLOT})"]
    return [*lines, "", END]


def plot_front(settings: Sequence[Row], path: Path, title: str) -> bool:
    """Accuracy (mean ± std over seeds) against attack SSIM with the front marked; False if nothing to plot."""
    from fl_vmix.evaluation.attacks.frontier import plot_frontier

    graded = [r for r in settings if _has_axis(r)]
    if not graded:
        return False
    plot_frontier(
        graded, path, attack="attack_ssim", accuracy="accuracy_mean", label="setting", title=title,
        error="accuracy_std", ylabel="final accuracy (mean ± std over seeds; higher = more useful)",
    )  # fmt: skip
    return True


def replace_section(text: str, lines: Sequence[str]) -> str:
    """``text`` with its privacy-axis section replaced by ``lines`` (appended when it has none)."""
    block = "\n".join(lines)
    if _SECTION.search(text):
        return _SECTION.sub(lambda _: block, text)
    return text.rstrip("\n") + "\n\n" + block + "\n"
