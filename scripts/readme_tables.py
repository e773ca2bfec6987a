"""Write the README's results tables from the committed reports (never edit them by hand).

    python scripts/readme_tables.py            # rewrite every marked table in README.md
    python scripts/readme_tables.py --check    # exit 1 if a table differs from its results.csv (CI, tests)

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in README.md and is made
from ``experiments/results/NAME/results.csv`` (written by ``python -m fl_vmix.evaluation.report``): one
row per setting, with the number of seeds, accuracy and its loss against the clear run as mean ± std
over seeds (the mean alone for one seed), and the privacy measures averaged over seeds. Experiments
graded by attacks (``python -m fl_vmix.evaluation.attack_grade``; ``results.csv`` has ``attack_ssim``)
get two more columns: the strongest attack's SSIM to clear and its recognition accuracy. The mutation scores
(``experiments/results/mutation/results.csv``, written by ``scripts/mutation_scores.py --record``) make a table of
their own: killed / total per module against the aim (85% in ``privacy/``, 80% elsewhere), and so do the speed
figures (``experiments/results/bench_vmix/results.csv``, rows appended by ``scripts/bench_vmix.py --record``): per
release, each measure's median over its runs with the range, against the targets. Reports
written before seeds were aggregated (no ``setting`` column) give one row per run, labelled by the
method parameters that differ between its rows (and by its run folder where those are equal).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.DOTALL)
HEADER = (
    "| method | setting | seeds | accuracy | loss vs clear (pp) | VFE corrected | VFE reference | SSIM | PSNR (dB) "
    "| epsilon |"
)
ATTACK_HEADER = " attack SSIM | attack recognition |"
PARAM = re.compile(r"(\w+)=(\[[^\]]*\]|\S+)")


def number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def mean_std(mean: float, std: float, digits: int) -> str:
    return fmt(mean, digits) if math.isnan(std) else f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def legacy_settings(rows: list[dict[str, str]]) -> list[str]:
    """Labels of one-run rows: the method parameters that differ between the method's rows (all of them
    for a method with one row), plus the run folder where two rows would still read the same."""
    params = [dict(PARAM.findall(r["params"])) for r in rows]
    out = []
    for row, mine in zip(rows, params, strict=True):
        same_method = [p for r, p in zip(rows, params, strict=True) if r["method"] == row["method"]]
        varying = [k for k in mine if len({p.get(k) for p in same_method}) > 1]
        shown = varying if len(same_method) > 1 else list(mine)
        out.append(" ".join(f"{k}={mine[k]}" for k in shown) or "-")
    base = list(out)
    for i, row in enumerate(rows):
        clashes = [j for j, r in enumerate(rows) if base[j] == base[i] and r["method"] == row["method"]]
        if len(clashes) > 1:
            out[i] += f" (run {'/'.join(Path(row['run_dir']).parts[-2:])})"
    return out


def table_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"{path} has no rows: write the report again")
    if "setting" not in rows[0]:  # a report written before seeds were aggregated: one run per row
        return [
            {
                "method": r["method"],
                "setting": label,
                "seeds": "1",
                "accuracy": fmt(number(r["accuracy"]), 3),
                "loss": fmt(number(r["accuracy_loss_pp"]), 1),
                "vfe": fmt(number(r["vfe"]), 2),
                "vfe_reference": fmt(number(r["vfe_reference"]), 2),
                "ssim": fmt(number(r["ssim"]), 3),
                "psnr": fmt(number(r["psnr"]), 1),
                "epsilon": fmt(number(r["epsilon"]), 2),
                **{key: fmt(number(r.get(key, "")), 3) for key in ("attack_ssim", "attack_recognition")},
            }
            for r, label in zip(rows, legacy_settings(rows), strict=True)
        ]
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    out = []
    for setting, members in groups.items():
        first = members[0]
        shown = setting.removeprefix(first["method"]).strip() or "-"
        out.append(
            {
                "method": first["method"],
                "setting": shown,
                "seeds": first["seeds"],
                "accuracy": mean_std(number(first["accuracy_mean"]), number(first["accuracy_std"]), 3),
                "loss": mean_std(number(first["accuracy_loss_pp_mean"]), number(first["accuracy_loss_pp_std"]), 1),
                **{
                    key: fmt(mean([number(r[key]) for r in members]), digits)
                    for key, digits in (("vfe", 2), ("vfe_reference", 2), ("ssim", 3), ("psnr", 1), ("epsilon", 2))
                },
                **{key: fmt(number(first.get(key, "")), 3) for key in ("attack_ssim", "attack_recognition")},
            }
        )
        unit = first.get("epsilon_unit", "")  # every epsilon with its unit (value, example, client)
        if unit and out[-1]["epsilon"] != "–":
            out[-1]["epsilon"] += f" ({unit})"
    return out


def mutation_aim(module: str) -> float:
    return 0.85 if module.startswith("fl_vmix.privacy.") else 0.80


def render_mutation(path: Path) -> list[str]:
    """killed / total, and killed / (total - explained): survivors shown equivalent or out of reach here."""
    lines = [
        "| module | killed / total | % | killed / (total - explained) | aim | met | measured at |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    with path.open() as handle:
        for r in csv.DictReader(handle):
            total, killed, explained = int(r["mutants"]), int(r["killed"]), int(r["equivalent"])
            score, aim = killed / max(total - explained, 1), mutation_aim(r["module"])
            lines.append(
                f"| `{r['module']}` | {killed} / {total} | {100 * killed / total:.1f}% | {100 * score:.1f}% "
                f"| {100 * aim:.0f}% | {'yes' if score >= aim else 'NO'} | {r['measured_at']} |"
            )
    return lines


# The speed table (experiments/results/bench_vmix/results.csv, rows appended by scripts/bench_vmix.py --record):
# (column, what it measures, target as (">=" or "<=", bound) or None).
BENCH_MEASURES: list[tuple[str, str, tuple[str, float] | None]] = [
    ("gather_32_img_per_s", "floor: one precomputed `torch.gather`, 512 x 3x32x32 (img/s)", None),
    ("vmix_32_img_per_s", "VisualMixer, target mode (default), synthetic (img/s)", (">=", 50_000)),
    ("vmix_32_over_gather", "the same, as a multiple of the floor", ("<=", 20)),
    ("vmix_32_cifar10_img_per_s", "VisualMixer, target mode, real CIFAR-10 test images (img/s)", None),
    ("vmix_32_cifar10_over_gather", "the same, as a multiple of the floor", None),
    ("vmix_fixed_32_img_per_s", "VisualMixer, fixed block size 1 (no target) (img/s)", None),
    ("vmix_fixed_32_over_gather", "the same, as a multiple of the floor", ("<=", 4)),
    ("vfe_32_img_per_s", "VFE (corrected) (img/s)", None),
    ("vmix_224_s_per_batch", "VisualMixer, target mode, 128 x 3x224x224 (region 16, blocks 8/4/2), s", ("<=", 0.5)),
    ("vmix_224_over_gather", "the same, as a multiple of its floor", None),
]  # fmt: skip


def _bench_value(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}" if value < 10 else f"{value:.1f}"


def render_bench(path: Path) -> list[str]:
    """Per hardware, its latest release only (figures compare only on the same hardware; earlier releases and
    runs whose hardware was not recorded stay in the results file): each measure's median over that release's
    runs with the range; the targets judged on the last column's median."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    # the first runs wrote "not recorded, N cores" where the hardware was not known
    rows = [row for row in rows if row.get("hardware") and not row["hardware"].startswith("not recorded")]
    latest_release = {row["hardware"]: row["release"] for row in rows}
    releases: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        if latest_release[row["hardware"]] == row["release"]:
            releases.setdefault((row["release"], row["hardware"]), []).append(row)
    names = list(releases)
    header = [f"{name} — {where} ({len(releases[name, where])} run{'s' * (len(releases[name, where]) > 1)})"
              for name, where in names]  # fmt: skip
    lines = [
        "| measure | " + " | ".join(header) + " | target | met (latest) |",
        "|---|" + "---:|" * len(names) + "---|---|",
    ]
    for key, label, target in BENCH_MEASURES:
        cells, latest = [], math.nan
        for name in names:
            values = [v for v in (number(r.get(key, "")) for r in releases[name]) if not math.isnan(v)]
            if not values:
                cells.append("–")
                latest = math.nan
                continue
            latest = statistics.median(values)
            spread = f" ({_bench_value(min(values))}-{_bench_value(max(values))})" if len(values) > 1 else ""
            cells.append(_bench_value(latest) + spread)
        if target is None:
            goal, met = "", ""
        else:
            sign, bound = target
            goal = f"{'≥' if sign == '>=' else '≤'} {_bench_value(bound)}"
            meets = latest >= bound if sign == ">=" else latest <= bound
            met = "–" if math.isnan(latest) else "yes" if meets else "NO"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {goal} | {met} |")
    return lines


def render(name: str, results: Path) -> str:
    path = results / name / "results.csv"
    if not path.is_file():
        raise SystemExit(f"README names table {name!r}, but {path} does not exist: write its report first")
    with path.open() as handle:
        fields = csv.DictReader(handle).fieldnames or []
    if "mutants" in fields:
        lines = render_mutation(path)
    elif "vmix_32_img_per_s" in fields:
        lines = render_bench(path)
    else:
        graded = "attack_ssim" in fields
        attack = ["attack_ssim", "attack_recognition"] if graded else []
        lines = [HEADER + (ATTACK_HEADER if graded else ""), "|" + "---|" * (10 + len(attack))]
        for r in table_rows(path):
            cells = [r[k] for k in ("method", "setting", "seeds", "accuracy", "loss", "vfe", "vfe_reference", "ssim")]
            lines.append("| " + " | ".join([*cells, r["psnr"], r["epsilon"], *(r[k] for k in attack)]) + " |")
    source = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    lines += ["", f"*Generated by `scripts/readme_tables.py` from `{source}`.*", ""]
    return "\n".join(lines) + "\n"


def rewrite(text: str, results: Path) -> tuple[str, list[str]]:
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        names.append(match["name"])
        return match.group(1) + render(match["name"], results) + match.group(4)

    return MARKER.sub(replace, text), names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--results", type=Path, default=REPO / "experiments" / "results")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new, names = rewrite(text, args.results)
    if not names:
        print(f"no <!-- table:NAME --> markers in {args.readme}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(
                f"{args.readme}: results tables differ from experiments/results/*/results.csv: run "
                "python scripts/readme_tables.py (never edit them by hand)",
                file=sys.stderr,
            )
            return 1
        print(f"{len(names)} tables up to date: {', '.join(names)}")
        return 0
    if new == text:
        print(f"{len(names)} tables already up to date, nothing changed: {', '.join(names)}")
        return 0
    args.readme.write_text(new)
    print(f"rewrote {len(names)} tables: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
