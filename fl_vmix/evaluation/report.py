"""Compare privacy methods across finished federated runs: a CSV, a markdown report and plots.

    python -m fl_vmix.evaluation.report run --experiment cifar_main --seeds 3 -- privacy=none,visualmixer
    python -m fl_vmix.evaluation.report collect --experiment cifar_main outputs/experiments/cifar_main

``run`` launches a Hydra multirun of ``python -m fl_vmix`` (runs kept under
``outputs/experiments/<experiment>/``) and then collects it; ``collect`` gathers any finished runs
(folders holding ``summary.json``, searched recursively). Both write to ``--out`` (default
``experiments/results``) ``/<experiment>/``: ``results.csv`` (one row per run), ``report.md`` (table
and findings), ``accuracy_vs_vfe.png``, ``accuracy_vs_ssim.png`` and ``samples.png`` (images as each
method's clients train on them). Each row is labelled with its method and every setting in which the
rows differ (:mod:`fl_vmix.evaluation.labels`). Accuracy loss is measured against the run with
``privacy=none`` and otherwise identical settings (the same model, optimiser, data and seed); rows
without such a clear run show no loss. VFE is the corrected definition (window 8 px) of the images
the model trained on; ``vfe_reference`` is the prototype's definition.

**Seeds.** ``run --seeds N`` runs every setting with ``seed=0..N-1`` (a ``seed=...`` sweep in the
overrides does the same). Runs that differ only in their seed form one *setting*
(:func:`setting_key`: every setting that changes results except ``seed``); each run's row in
``results.csv`` carries its setting's ``seeds``, ``accuracy_mean`` and ``accuracy_std`` (sample
standard deviation over seeds; empty for one seed), and the loss against the clear run of the *same
seed*, aggregated likewise. Tables and plots show mean ± std per setting, and a finding names a
difference only where it exceeds the spread (:func:`exceeds_spread`).

**Privacy axis.** When ``<out>/<experiment>/attacks/`` holds grades (``python -m
fl_vmix.evaluation.attack_grade``), ``results.csv`` also gets the attack columns
(:data:`fl_vmix.evaluation.privacy_axis.ATTACK_COLUMNS`), ``report.md`` the privacy-axis section (the
Pareto front against the strongest attack, :mod:`fl_vmix.evaluation.frontier_report`) and
``accuracy_vs_attack_ssim.png`` is drawn, so rebuilding a graded report keeps them.

**Traceability.** Each reported run's ``summary.json``, ``metrics.csv`` and ``config.json`` are copied
to ``<out>/<experiment>/runs/<run>/`` (no weights), and ``results.csv`` names those copies, so every
number traces to committed files; ``collect`` on that folder rebuilds the report from them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from fl_vmix.apps.keys import DERIVED_KEYS_WARNING
from fl_vmix.data import load_dataset
from fl_vmix.evaluation.frontier_report import PLOT as FRONTIER_PLOT
from fl_vmix.evaluation.frontier_report import plot_front, section
from fl_vmix.evaluation.labels import baseline_key, labels, settings, unnamed_values
from fl_vmix.evaluation.plot_key import keyed_axes, number_points
from fl_vmix.evaluation.privacy_axis import ATTACK_COLUMNS, attack_columns, has_grades, load_grades, setting_stem
from fl_vmix.evaluation.privacy_budget import privacy_budget
from fl_vmix.evaluation.spread import exceeds_spread, mean_std_text
from fl_vmix.experiment import ConfigError, Experiment, PrivacySettings, from_recorded
from fl_vmix.factory import build_privacy
from fl_vmix.tables import format_value, write_csv

DEMO_KEY = b"report-demo-key-not-a-client-key"  # public: the sample grid only illustrates each method
RESULTS_DIR = Path("experiments/results")
RUNS_DIR = Path("outputs/experiments")
COLUMNS = [
    "method",
    "label",
    "params",
    "dataset",
    "model",
    "optimizer",
    "num_clients",
    "rounds",
    "data_fraction",
    "seed",
    "accuracy",
    "accuracy_loss_pp",
    "best_accuracy",
    "vfe",
    "vfe_reference",
    "ssim",
    "psnr",
    "epsilon",
    "delta",
    "epsilon_unit",
    "epsilon_pixel",
    "epsilon_image",
    "epsilon_replace_one",
    "epsilon_pld",
    "guarantee",
    "leaks",
    "wall_time_s",
    "run_dir",
    "baseline_run",
    "setting",
    "seeds",
    "accuracy_mean",
    "accuracy_std",
    "accuracy_loss_pp_mean",
    "accuracy_loss_pp_std",
]
RUN_FILES = ("summary.json", "metrics.csv", "config.json")  # what results/<experiment>/runs/ keeps of a run
PLOT_METRICS = ("vfe", "vfe_reference", "ssim", "psnr", "epsilon")


class ReportError(ValueError):
    """Runs that cannot go in one report; the message says what to do instead."""


def find_runs(paths: list[Path]) -> list[Path]:
    found = {
        p.parent
        for path in paths
        for p in ([path / "summary.json"] if (path / "summary.json").exists() else path.rglob("summary.json"))
    }
    if not found:
        raise ReportError(
            f"no finished runs (summary.json) under {', '.join(map(str, paths))}: run python -m fl_vmix first"
        )
    return sorted(found)


def method_params(privacy: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(privacy.items()) if k != "method" and v is not None) or "-"


def _num(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _row(run: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    if summary.get("status") != "completed":
        print(f"skipping {run}: status {summary.get('status')} ({summary.get('error')})", file=sys.stderr)
        return None
    try:
        experiment = from_recorded(summary["config"])
    except ConfigError as err:
        print(f"skipping {run}: its config cannot be read ({err})", file=sys.stderr)
        return None
    return {
        "method": experiment.privacy.method,
        "params": method_params(experiment.to_dict()["privacy"]),
        "dataset": experiment.dataset.name,
        "model": experiment.model.name,
        "optimizer": experiment.optimizer.name,
        "num_clients": experiment.num_clients,
        "rounds": summary["rounds"],
        "data_fraction": experiment.dataset.data_fraction,
        "seed": experiment.seed,
        "accuracy": _num(summary["final_accuracy"]),
        "best_accuracy": _num(summary.get("best_accuracy")),
        "vfe": _num(summary.get("vfe_corrected")),
        "vfe_reference": _num(summary.get("vfe_reference")),
        "ssim": _num(summary.get("ssim")),
        "psnr": _num(summary.get("psnr")),
        "epsilon": _num(summary.get("epsilon")),
        "delta": _num(summary.get("delta")),
        **_budget_columns(run, experiment, summary["config"]),
        "wall_time_s": _num(summary.get("wall_time_s")),
        "run_dir": str(run),
        "_experiment": experiment,
        "_setting": setting_key(experiment),
    }


def _budget_columns(run: Path, experiment: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The unit of the run's epsilon, its other units, what it protects and what else its clients sent."""
    metrics = run / "metrics.json"
    rounds = json.loads(metrics.read_text()) if metrics.exists() else []
    budget = privacy_budget(experiment, rounds, config)
    return {
        "epsilon_unit": budget.epsilon_unit,
        "epsilon_pixel": budget.epsilon_pixel,
        "epsilon_image": budget.epsilon_image,
        "epsilon_replace_one": budget.epsilon_replace_one,
        "epsilon_pld": budget.epsilon_pld,
        "guarantee": budget.guarantee,
        "leaks": budget.leaks,
    }


def collect_rows(runs: list[Path]) -> list[dict[str, Any]]:
    """One row per completed run, labelled, with its accuracy loss against its own clear run."""
    rows = [row for run in runs if (row := _row(run, json.loads((run / "summary.json").read_text()))) is not None]
    datasets = sorted({r["dataset"] for r in rows})
    if len(datasets) > 1:
        raise ReportError(
            f"these runs mix datasets ({', '.join(datasets)}); accuracy is not comparable across datasets: "
            "write one report per dataset (collect each dataset's runs under its own --experiment)"
        )
    clear: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["method"] == "none":
            clear.setdefault(baseline_key(row["_experiment"]), row)
    for row, label in zip(rows, labels([r["_experiment"] for r in rows]), strict=True):
        baseline = clear.get(baseline_key(row["_experiment"]))
        row["label"] = label
        row["accuracy_loss_pp"] = 100 * (baseline["accuracy"] - row["accuracy"]) if baseline is not None else math.nan
        row["baseline_run"] = baseline["run_dir"] if baseline is not None else ""
    add_seed_statistics(rows)
    order = {"none": 0, "visualmixer": 1, "block_shuffle": 2}
    return sorted(rows, key=lambda r: (order.get(r["method"], 9), r["method"], r["setting"], r["seed"]))


# ------------------------------------------------------------------------------------------- seeds
def setting_key(experiment: Experiment) -> str:
    """Equal for runs that differ only in their seed (and in how they were executed: labels.RUN_ONLY)."""
    return json.dumps({k: v for k, v in settings(experiment).items() if k != "seed"}, sort_keys=True, default=str)


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


def add_seed_statistics(rows: list[dict[str, Any]]) -> None:
    """Group ``rows`` by setting and put the group's label, seed count and accuracy mean/std on each row."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["_setting"], []).append(row)
    # Label the settings as labels() labels runs, with the seed out of the picture.
    firsts = [members[0]["_experiment"].replace(seed=0) for members in groups.values()]
    for members, label in zip(groups.values(), labels(firsts), strict=True):
        accuracy = _mean_std([r["accuracy"] for r in members])
        loss = _mean_std([r["accuracy_loss_pp"] for r in members])
        for row in members:
            row["setting"] = label
            row["seeds"] = len({r["seed"] for r in members})
            row["accuracy_mean"], row["accuracy_std"] = accuracy
            row["accuracy_loss_pp_mean"], row["accuracy_loss_pp_std"] = loss


def setting_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (its first run's fields), numeric metrics averaged over its seeds."""
    out: dict[str, dict[str, Any]] = {}
    members: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        members.setdefault(row["_setting"], []).append(row)
        out.setdefault(row["_setting"], dict(row))
    for key, row in out.items():
        for metric in ("best_accuracy", "vfe", "vfe_reference", "ssim", "psnr", "epsilon", "wall_time_s"):
            row[metric] = _mean_std([r[metric] for r in members[key]])[0]
        row["label"] = row["setting"]
    return list(out.values())


def wrapped(label: str, width: int = 34) -> str:
    """A label broken into lines at spaces: plots show all of it."""
    return "\n".join(textwrap.wrap(label, width)) or label


def plot_accuracy_against(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in PLOT_METRICS:
        raise ReportError(f"unknown metric {metric!r} to plot: choose one of {', '.join(PLOT_METRICS)}")
    # One point per setting: mean accuracy ± std over its seeds.
    shown = [r for r in setting_rows(rows) if not (math.isnan(r[metric]) or math.isnan(r["accuracy_mean"]))]
    fig, ax = keyed_axes([r["setting"] for r in shown])
    methods = sorted({r["method"] for r in rows})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for row in shown:
        x, y, err = row[metric], row["accuracy_mean"], row["accuracy_std"]
        ax.errorbar(
            x, y, yerr=None if math.isnan(err) else err, fmt="o", color=colours[row["method"]], capsize=3,
            label=row["method"],
        )  # fmt: skip
    number_points(ax, [(r[metric], r["accuracy_mean"]) for r in shown])
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set(
        xlabel=metric + (" (corrected, window 8)" if metric == "vfe" else ""),
        ylabel="final accuracy (federated eval; mean ± std over seeds)",
        title=f"accuracy against {metric}: {rows[0]['dataset']}",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_samples(rows: list[dict[str, Any]], path: Path, count: int = 6) -> None:
    """Each privacy setting applied (with a demo key) to the same test images, as its clients train on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    dataset = rows[0]["_experiment"].dataset
    data = load_dataset(dataset.name, dataset.root, "test", cache_dir=dataset.cache_dir)
    index = np.linspace(0, len(data.labels) - 1, count).astype(int)
    clear = torch.from_numpy(np.asarray(data.images[index])).float() / 255
    ids = torch.from_numpy(index.astype(np.int64) + 10_000_000)
    settings: dict[tuple[str, str], tuple[PrivacySettings, str]] = {}
    for row in rows:  # one row of pictures per privacy setting: other settings do not change the images
        settings.setdefault(
            (row["method"], row["params"]), (row["_experiment"].privacy, f"{row['method']} {row['params']}")
        )
    fig, axes = plt.subplots(len(settings), count, figsize=(1.3 * count + 1.6, 1.35 * len(settings)), squeeze=False)
    for r, (privacy, label) in enumerate(settings.values()):
        images = build_privacy(privacy, DEMO_KEY)(clear, ids, 0)
        for c in range(count):
            picture = images[c].permute(1, 2, 0).clamp(0, 1).numpy()
            axes[r][c].imshow(
                picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", interpolation="nearest"
            )
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(wrapped(label, 30), fontsize=5, rotation=0, ha="right", va="center")
    fig.suptitle(
        f"{dataset.name} test images as each method's clients see them (training-level methods: clear)", fontsize=7
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """One line per setting, and the gaps between settings of one method that exceed their spread.

    With one seed per setting no gap is called a difference (a single run's gap says nothing)."""
    settings_ = setting_rows(rows)
    notes = []
    clear = [r for r in settings_ if r["method"] == "none"]
    for row in clear:
        accuracy = mean_std_text(row["accuracy_mean"], row["accuracy_std"])
        notes.append(
            f"Clear images ({row['setting']}): final accuracy {accuracy} ({row['seeds']} seed(s)), "
            f"VFE {row['vfe']:.2f}."
        )
    if not clear:
        notes.append("No clear (privacy=none) run among these runs: accuracy loss cannot be computed.")
    clear_vfe = {r["_setting"]: r["vfe"] for r in clear}
    baseline_setting = {r["run_dir"]: r["_setting"] for r in rows}
    for row in settings_:
        if row["method"] == "none":
            continue
        parts = [f"accuracy {mean_std_text(row['accuracy_mean'], row['accuracy_std'])} ({row['seeds']} seed(s))"]
        loss_mean, loss_std = row["accuracy_loss_pp_mean"], row["accuracy_loss_pp_std"]
        if math.isnan(loss_mean):
            parts.append("no clear run with the same settings")
        elif math.isnan(loss_std):
            parts.append(
                f"{_loss_words(loss_mean)} pp against its clear run (one seed: no spread, not a finding by itself)"
            )
        else:
            verdict = "exceeds" if abs(loss_mean) > loss_std else "within"
            parts.append(f"{_loss_words(loss_mean)} ± {loss_std:.1f} pp against its clear run ({verdict} the spread)")
        if not math.isnan(row["vfe"]):
            base = clear_vfe.get(baseline_setting.get(row["baseline_run"], ""), math.nan)
            ratio = f" ({row['vfe'] / base:.1f}x clear)" if base > 0 else ""
            parts.append(f"VFE {row['vfe']:.2f}{ratio}")
        if not math.isnan(row["ssim"]):
            parts.append(f"SSIM {row['ssim']:.3f}")
        if not math.isnan(row["epsilon"]):
            parts.append(f"epsilon {format_value(row['epsilon'])}")
        notes.append(f"{row['setting']}: " + ", ".join(parts) + ".")
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in settings_:
        by_method.setdefault(row["method"], []).append(row)
    for members in by_method.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                differs = exceeds_spread(a, b)
                if differs is None:
                    continue
                gap = a["accuracy_mean"] - b["accuracy_mean"]
                notes.append(
                    f"{a['setting']} vs {b['setting']}: accuracy gap {gap:+.3f}, "
                    + ("larger than their spread: a difference." if differs else "within their spread: no difference.")
                )
    return notes


def _loss_words(loss_pp: float) -> str:
    """An accuracy loss in words, so the sign cannot be read backwards: 'loss 3.2' or 'gain 1.0' (pp)."""
    return f"{'gain' if loss_pp < 0 else 'loss'} {abs(loss_pp):.1f}"


def privacy_section(rows: list[dict[str, Any]]) -> list[str]:
    """Per DP row: the other units of its epsilon, what it protects against whom, and what else was sent."""
    dp = [r for r in rows if r["epsilon_unit"]]
    if not dp:
        return []
    lines = [
        "",
        "## What the epsilons protect",
        "",
        "| setting | epsilon (unit) | one pixel | whole image | replace-one | PLD | guarantee |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in dp:
        lines.append(
            f"| {r['label']} | {format_value(r['epsilon'])} ({r['epsilon_unit']}) | {format_value(r['epsilon_pixel'])} "
            f"| {format_value(r['epsilon_image'])} | {format_value(r['epsilon_replace_one'])} | "
            f"{format_value(r['epsilon_pld'])} | {r['guarantee']} |"
        )
    lines += ["", "Sent by the clients outside every accountant (`leaks`):", ""]
    lines += [f"- {r['label']}: {r['leaks'] or 'nothing'}" for r in dp]
    return lines


def copy_runs(rows: list[dict[str, Any]], out: Path) -> None:
    """Copy each run's small files to ``out/runs/<run>/`` and point ``run_dir``/``baseline_run`` at the copies
    (relative to ``out``). Runs already under ``out/runs`` (a report rebuilt from its copies) stay put."""
    runs_dir = (out / "runs").resolve()
    sources = sorted({Path(r["run_dir"]).resolve() for r in rows})
    outside = [p for p in sources if not p.is_relative_to(runs_dir)]
    common = Path(os.path.commonpath(outside)) if outside else runs_dir
    if len(outside) == 1:
        common = common.parent
    moved: dict[str, str] = {}
    for source in sources:
        if source.is_relative_to(runs_dir):
            target = source
        else:
            target = runs_dir / source.relative_to(common)
            target.mkdir(parents=True, exist_ok=True)
            for name in RUN_FILES:
                if (source / name).exists():
                    shutil.copyfile(source / name, target / name)
        moved[str(source)] = str(target.relative_to(out.resolve()))
    for row in rows:
        row["run_dir"] = moved[str(Path(row["run_dir"]).resolve())]
        if row["baseline_run"]:
            row["baseline_run"] = moved[str(Path(row["baseline_run"]).resolve())]


def add_attack_grades(rows: list[dict[str, Any]], out: Path) -> dict[str, dict[str, Any]] | None:
    """The attack columns of every row from ``out/attacks/`` (python -m fl_vmix.evaluation.attack_grade);
    None, and no columns, when the experiment was never graded."""
    if not has_grades(out):
        return None
    grades = load_grades(out)
    for row in rows:
        privacy = row["_experiment"].privacy
        stem = setting_stem(row["_experiment"].dataset.name, privacy.method, privacy.params)
        row.update(attack_columns(privacy.method, stem, grades))
    return grades


def write_report(rows: list[dict[str, Any]], out: Path, experiment: str, notes: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    copy_runs(rows, out)
    grades = add_attack_grades(rows, out)
    write_csv(out / "results.csv", COLUMNS + (ATTACK_COLUMNS if grades is not None else []), rows)
    plot_accuracy_against(rows, "vfe", out / "accuracy_vs_vfe.png")
    plot_accuracy_against(rows, "ssim", out / "accuracy_vs_ssim.png")
    plot_samples(rows, out / "samples.png")
    first = rows[0]
    unnamed = unnamed_values([r["_experiment"].replace(seed=0) for r in setting_rows(rows)])
    lines = [
        f"# {experiment}: privacy methods compared on {first['dataset']}",
        "",
        f"Scale: {first['num_clients']} clients, {first['rounds']} rounds, data fraction {first['data_fraction']}, "
        f"model {first['model']} unless a row's setting says otherwise"
        + ". A setting's label names what sets it apart from most settings of its method"
        + (f"; where it names nothing, {'; '.join(f'`{u}`' for u in unnamed)}" if unnamed else "")
        + ". One row per setting, over its seeds "
        "(mean ± sample std; one seed: no spread); each run is a row of `results.csv`, and its files are in `runs/`. "
        "Accuracy is the final federated evaluation on the clients' own (protected) test splits; "
        "its loss is against the clear run with the same settings and seed (model, optimiser, data), '–' where "
        "there is none. "
        "VFE: corrected definition, window 8 px, on the images the model trained on; SSIM/PSNR against the clear "
        "images "
        "(PSNR capped at 100 dB for identical images). Epsilon: cumulative over the run, RDP accountants, in the "
        "unit the row gives (`value`: one colour value of one image; `example`: one training example of one client, "
        "the largest client's; `client`: one client's data, add or remove); the section below gives other units "
        "of the same noise and what each guarantee protects against whom.",
        "",
    ]
    if notes:
        lines += [notes, ""]
    public = sorted({r["label"] for r in rows if DERIVED_KEYS_WARNING in r["guarantee"]})
    if public:  # said before any number: these rows' privacy figures hold against no one who has config.json
        lines += [f"**Warning ({', '.join(public)}):** {DERIVED_KEYS_WARNING}.", ""]
    lines += [
        "| setting | params | seeds | accuracy | loss (pp) | VFE | VFE ref | SSIM | PSNR | epsilon (unit) | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in setting_rows(rows):
        accuracy = mean_std_text(r["accuracy_mean"], r["accuracy_std"])
        epsilon = f"{format_value(r['epsilon'])} ({r['epsilon_unit']})" if r["epsilon_unit"] else "–"
        lines.append(
            f"| {r['setting']} | {r['params']} | {r['seeds']} | {accuracy} | "
            f"{mean_std_text(r['accuracy_loss_pp_mean'], r['accuracy_loss_pp_std'], 2)} | "
            f"{format_value(r['vfe'])} | {format_value(r['vfe_reference'])} | {format_value(r['ssim'])} | "
            f"{format_value(r['psnr'])} | {epsilon} | {format_value(r['wall_time_s'], 0)} |"
        )
    lines += ["", "## Findings", ""] + [f"- {n}" for n in findings(rows)]
    lines += privacy_section(setting_rows(rows))
    if grades is not None:
        settings_ = setting_rows(rows)
        plotted = plot_front(settings_, out / FRONTIER_PLOT, f"{experiment}: accuracy against the strongest attack")
        lines += ["", *section(settings_, grades, plotted)]
    lines += [
        "",
        "![accuracy vs VFE](accuracy_vs_vfe.png) ![accuracy vs SSIM](accuracy_vs_ssim.png)",
        "",
        "![samples](samples.png)",
        "",
    ]
    if (out / "attacks.md").exists():
        lines += ["", (out / "attacks.md").read_text()]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fl_vmix.evaluation.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="report on finished runs")
    collect.add_argument("--experiment", required=True)
    collect.add_argument("--out", type=Path, default=RESULTS_DIR)
    collect.add_argument("--notes", default="", help="markdown paragraph placed above the table")
    collect.add_argument("runs", nargs="+", type=Path)
    run = sub.add_parser("run", help="run a Hydra multirun grid, then report on it")
    run.add_argument("--experiment", required=True)
    run.add_argument("--out", type=Path, default=RESULTS_DIR)
    run.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    run.add_argument("--part", default="runs", help="sub-folder for this grid, so several grids build one experiment")
    run.add_argument("--include", type=Path, nargs="*", default=[], help="further finished runs to report alongside")
    run.add_argument("--seeds", type=int, default=None, help="run every setting with seed=0..N-1 (mean ± std)")
    run.add_argument("--notes", default="")
    run.add_argument("overrides", nargs="+", help="fl_vmix Hydra overrides, sweeps with commas (after --)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            sweep = (args.runs_dir / args.experiment / args.part).resolve()
            overrides = list(args.overrides)
            if args.seeds is not None:
                if args.seeds < 1:
                    raise ReportError(f"--seeds {args.seeds}: give the number of seeds per setting, >= 1")
                if any(o.split("=", 1)[0].lstrip("+~") == "seed" for o in overrides):
                    raise ReportError("--seeds and a seed=... override both choose seeds: give one of them")
                overrides.append("seed=" + ",".join(str(seed) for seed in range(args.seeds)))
            command = [
                sys.executable,
                "-m",
                "fl_vmix",
                "--multirun",
                f"experiment={args.experiment}",
                *overrides,
                f"hydra.sweep.dir={sweep}",
            ]
            print("running:", " ".join(command), flush=True)
            launched = subprocess.run(command, check=False)
            try:
                runs = find_runs([sweep.parent, *args.include])
            except ReportError as err:
                if launched.returncode == 0:
                    raise
                # The runs were refused or failed before writing anything: their own error is above.
                raise ReportError(
                    f"python -m fl_vmix exited with {launched.returncode} and no run finished: fix the error it "
                    "printed above (a missing dataset: export FL_VMIX_DATA=/path/to/data) and run this again"
                ) from err
        else:
            runs = find_runs(args.runs)
        rows = collect_rows(runs)
        if not rows:
            raise ReportError("none of the runs completed: see their summary.json 'error' field")
        path = write_report(rows, args.out / args.experiment, args.experiment, args.notes)
    except ReportError as err:
        print(f"report error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} and results.csv, accuracy_vs_vfe.png, accuracy_vs_ssim.png, samples.png beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
