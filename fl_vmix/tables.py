"""Text output shared by the recorder, the CLI summary, the report and the attack suite: one number
format, one CSV writer, one markdown table."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MISSING = "–"


def format_value(value: Any, digits: int = 3) -> str:
    """``digits`` decimals for floats (significant digits from 1000 up), yes/no for booleans, ``–`` for None/NaN."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], float_format: str | None = None) -> str:
    """CSV with a header; keys outside ``columns`` are ignored, missing ones left empty.

    ``float_format`` (e.g. ``".6g"``) shortens floats; by default they keep Python's full repr.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        if float_format is None:
            writer.writerow(row)
        else:
            writer.writerow(
                {c: format(row[c], float_format) if isinstance(row.get(c), float) else row.get(c, "") for c in columns}
            )
    return buffer.getvalue()


def write_csv(
    path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], float_format: str | None = None
) -> None:
    Path(path).write_text(csv_text(columns, rows, float_format), newline="")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], digits: int = 3) -> list[str]:
    """Lines of a markdown table; ``columns`` are (header, key) pairs."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(k, ""), digits) for _, k in columns) + " |")
    return lines
