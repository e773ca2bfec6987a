"""Mutation score per module from mutmut's results in mutants/ (after `scripts/mutation.sh`).

    python scripts/mutation_scores.py [module ...] [--survivors] [--record]

Prints, per mutated module: mutants, killed (by a failing test or a timeout), survivors, survivors explained as
equivalent in docs/mutation_testing.md (table rows that start with the mutant's name in backticks), mutants no
test reaches, and the score killed / (total - equivalent). ``--survivors`` lists the survivors not explained.
``--record`` writes the printed modules' counts, with the commit they were measured at, into
experiments/results/mutation/results.csv (other modules' rows stay); `scripts/readme_tables.py` makes the README's
table from it.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A failing test, an internal pytest error, a timeout, or a crash (-6 SIGABRT, -9, -11 SIGSEGV: e.g. a mutant that
# hands a compiled kernel a wrong-sized buffer; mutmut calls -6 "suspicious", but the test run did fail).
KILLED = {1, 3, 24, -24, 36, 152, 255, -6, -9, -11}
SURVIVED = {0}
NO_TESTS = {5, 33}
RECORD = ROOT / "experiments" / "results" / "mutation" / "results.csv"
FIELDS = ("module", "mutants", "killed", "survived", "equivalent", "no_tests", "not_run", "measured_at")


def equivalent_mutants() -> set[str]:
    doc = ROOT / "docs" / "mutation_testing.md"
    if not doc.exists():
        return set()
    return set(re.findall(r"^\|\s*`([\w.ǁ]+__mutmut_\d+)`", doc.read_text(), flags=re.MULTILINE))


def results() -> dict[str, dict[str, int | None]]:
    """Exit code of every mutant, by module (dotted name)."""
    by_module: dict[str, dict[str, int | None]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        module = ".".join(meta.relative_to(ROOT / "mutants").with_suffix("").with_suffix("").parts)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            by_module[module] = codes
    return by_module


def main(argv: list[str]) -> int:
    show = "--survivors" in argv
    wanted = [a for a in argv if not a.startswith("--")]
    equivalent = equivalent_mutants()
    if not results():
        print(
            f"no mutation results in {ROOT / 'mutants'}: run scripts/mutation.sh first (it mutates the modules "
            "configured in pyproject.toml and runs their tests; see docs/mutation_testing.md)",
            file=sys.stderr,
        )
        return 1
    rows, unexplained = [], []
    for module, codes in results().items():
        if wanted and module not in wanted:
            continue
        counts: Counter[str] = Counter()
        for name, code in codes.items():
            if code in KILLED:
                counts["killed"] += 1
            elif code in SURVIVED:
                counts["survived"] += 1
                if name in equivalent:
                    counts["equivalent"] += 1
                else:
                    unexplained.append(name)
            elif code in NO_TESTS:
                counts["no tests"] += 1
                if name not in equivalent:
                    unexplained.append(name)
                else:
                    counts["equivalent"] += 1
            else:
                counts["not run"] += 1
        total = len(codes)
        score = counts["killed"] / max(total - counts["equivalent"], 1)
        rows.append((module, total, counts, score))
    print(
        f"{'module':45} {'mutants':>7} {'killed':>6} {'survived':>8} {'equiv.':>6} {'no test':>7} {'not run':>7} score"
    )
    for module, total, c, score in rows:
        print(
            f"{module:45} {total:7d} {c['killed']:6d} {c['survived']:8d} {c['equivalent']:6d} {c['no tests']:7d} "
            f"{c['not run']:7d} {100 * score:5.1f}%"
        )
    if show:
        print("\nsurvivors not explained in docs/mutation_testing.md:")
        for name in unexplained:
            print("  ", name)
    if "--record" in argv:
        record(rows)
    return 0


def record(rows: list[tuple[str, int, Counter[str], float]]) -> None:
    """Replace these modules' rows in RECORD (kept sorted by module), stamped with this checkout's commit."""
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fl_vmix"], cwd=ROOT, capture_output=True, text=True)
    if dirty.stdout.strip():
        raise SystemExit(
            "fl_vmix/ has uncommitted changes: commit them and rerun, so the stamp names the code measured"
        )
    partial = [module for module, _, c, _ in rows if c["not run"]]
    if partial:
        raise SystemExit(f"not every mutant of {partial} has run: run those modules to the end before recording")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    measured_at = commit.stdout.strip() or "unknown"
    kept: dict[str, dict[str, str]] = {}
    if RECORD.is_file():
        with RECORD.open() as handle:
            kept = {row["module"]: row for row in csv.DictReader(handle)}
    for module, total, c, _ in rows:
        kept[module] = {
            "module": module,
            "mutants": str(total),
            **{key: str(c[key.replace("_", " ")]) for key in ("killed", "survived", "equivalent", "no_tests")},
            "not_run": str(c["not run"]),
            "measured_at": measured_at,
        }
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept[m] for m in sorted(kept))
    print(f"recorded {len(rows)} modules in {RECORD.relative_to(ROOT)} (measured at {measured_at})")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
