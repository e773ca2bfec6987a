"""Put the grades into an experiment's ``results.csv`` and ``report.md`` in place, and draw the front.

The report's other columns and text stay as they are (regenerating the whole report needs the runs and
the data; ``python -m fl_vmix.evaluation.report`` does that and keeps the attack columns too).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from fl_vmix.evaluation.attack_grade.settings import read_results, row_label, row_setting
from fl_vmix.evaluation.frontier_report import PLOT, plot_front, replace_section, section
from fl_vmix.evaluation.privacy_axis import ATTACK_COLUMNS, attack_columns, load_grades
from fl_vmix.tables import write_csv

NUMBERS = ("accuracy_mean", "accuracy_std", "vfe", "ssim")


def _num(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def settings_from_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per report setting: its first run's fields, VFE and SSIM averaged over its seeds (as the report)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row_label(row), []).append(row)
    out = []
    for name, members in groups.items():
        first = dict(members[0])
        first["setting"] = name
        first["seeds"] = first.get("seeds") or len(members)
        if not first.get("accuracy_mean"):
            values = [_num(r["accuracy"]) for r in members]
            first["accuracy_mean"] = statistics.fmean(values)
            first["accuracy_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        for key in NUMBERS:
            first[key] = _num(first.get(key))
        for key in ("vfe", "ssim"):
            finite = [v for v in (_num(r.get(key)) for r in members) if not math.isnan(v)]
            first[key] = statistics.fmean(finite) if finite else math.nan
        out.append(first)
    return out


def update_report(experiment_dir: Path, out_dir: Path, title: str) -> Path:
    """Write ``out_dir/results.csv`` (the experiment's, with the attack columns), ``out_dir/report.md`` (its
    privacy-axis section replaced or added) and the accuracy-against-attack-SSIM plot; return the report."""
    grades = load_grades(out_dir)
    rows: list[dict[str, Any]] = [dict(r) for r in read_results(experiment_dir)]
    for row in rows:
        row.update(attack_columns(row["method"], row_setting(experiment_dir, row).stem, grades))
    header = [c for c in rows[0] if not c.startswith("_") and c not in ATTACK_COLUMNS]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "results.csv", [*header, *ATTACK_COLUMNS], rows)
    settings = settings_from_rows(rows)
    plotted = plot_front(settings, out_dir / PLOT, f"{title}: accuracy against the strongest attack")
    source = experiment_dir / "report.md"
    text = source.read_text() if source.is_file() else f"# {title}\n"
    report = out_dir / "report.md"
    report.write_text(replace_section(text, section(settings, grades, plotted)))
    return report
