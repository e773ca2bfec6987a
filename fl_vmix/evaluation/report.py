"""Compare privacy methods across finished federated runs: a CSV, a markdown report and plots.

    python -m fl_vmix.evaluation.report run --experiment cifar_main -- privacy=none,visualmixer num_rounds=8
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
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from fl_vmix.data import load_dataset
from fl_vmix.evaluation.labels import baseline_key, labels
from fl_vmix.evaluation.privacy_budget import privacy_budget
from fl_vmix.experiment import ConfigError, PrivacySettings, from_recorded
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
]
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
    order = {"none": 0, "visualmixer": 1, "block_shuffle": 2}
    return sorted(rows, key=lambda r: (order.get(r["method"], 9), r["method"], r["label"]))


def wrapped(label: str, width: int = 34) -> str:
    """A label broken into lines at spaces: plots show all of it."""
    return "\n".join(textwrap.wrap(label, width)) or label


def plot_accuracy_against(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in PLOT_METRICS:
        raise ReportError(f"unknown metric {metric!r} to plot: choose one of {', '.join(PLOT_METRICS)}")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = sorted({r["method"] for r in rows})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for row in rows:
        x, y = row[metric], row["accuracy"]
        if math.isnan(x) or math.isnan(y):
            continue
        ax.scatter(x, y, color=colours[row["method"]], s=40, label=row["method"])
        ax.annotate(wrapped(row["label"]), (x, y), fontsize=5, xytext=(3, 3), textcoords="offset points")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set(
        xlabel=metric + (" (corrected, window 8)" if metric == "vfe" else ""),
        ylabel="final accuracy (federated eval)",
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
    notes = []
    clear = [r for r in rows if r["method"] == "none"]
    for row in clear:
        notes.append(f"Clear images ({row['label']}): final accuracy {row['accuracy']:.3f}, VFE {row['vfe']:.2f}.")
    if not clear:
        notes.append("No clear (privacy=none) run among these runs: accuracy loss cannot be computed.")
    clear_vfe = {r["run_dir"]: r["vfe"] for r in clear}
    for row in rows:
        if row["method"] == "none":
            continue
        parts = [f"accuracy {row['accuracy']:.3f}"]
        if not math.isnan(row["accuracy_loss_pp"]):
            parts.append(f"{row['accuracy_loss_pp']:+.1f} pp lost against its clear run")
        else:
            parts.append("no clear run with the same settings")
        if not math.isnan(row["vfe"]):
            base = clear_vfe.get(row["baseline_run"], math.nan)
            ratio = f" ({row['vfe'] / base:.1f}x clear)" if base > 0 else ""
            parts.append(f"VFE {row['vfe']:.2f}{ratio}")
        if not math.isnan(row["ssim"]):
            parts.append(f"SSIM {row['ssim']:.3f}")
        if not math.isnan(row["epsilon"]):
            parts.append(f"epsilon {format_value(row['epsilon'])}")
        notes.append(f"{row['label']}: " + ", ".join(parts) + ".")
    return notes


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


def write_report(rows: list[dict[str, Any]], out: Path, experiment: str, notes: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", COLUMNS, rows)
    plot_accuracy_against(rows, "vfe", out / "accuracy_vs_vfe.png")
    plot_accuracy_against(rows, "ssim", out / "accuracy_vs_ssim.png")
    plot_samples(rows, out / "samples.png")
    first = rows[0]
    lines = [
        f"# {experiment}: privacy methods compared on {first['dataset']}",
        "",
        f"Scale: {first['num_clients']} clients, {first['rounds']} rounds, data fraction {first['data_fraction']}, "
        f"model {first['model']}, seed {first['seed']} unless a row's setting says otherwise (one run per row; see "
        "`results.csv` for paths). Accuracy is the final federated evaluation on the clients' own (protected) test "
        "splits; "
        "its loss is against the clear run with the same settings (model, optimiser, data, seed), '–' where there is "
        "none. "
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
    lines += [
        "| setting | params | accuracy | loss (pp) | VFE | VFE ref | SSIM | PSNR | epsilon (unit) | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        epsilon = f"{format_value(r['epsilon'])} ({r['epsilon_unit']})" if r["epsilon_unit"] else "–"
        lines.append(
            f"| {r['label']} | {r['params']} | {format_value(r['accuracy'])} | "
            f"{format_value(r['accuracy_loss_pp'], 2)} | "
            f"{format_value(r['vfe'])} | {format_value(r['vfe_reference'])} | {format_value(r['ssim'])} | "
            f"{format_value(r['psnr'])} | {epsilon} | {format_value(r['wall_time_s'], 0)} |"
        )
    lines += ["", "## Findings", ""] + [f"- {n}" for n in findings(rows)]
    lines += privacy_section(rows)
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
    run.add_argument("--notes", default="")
    run.add_argument("overrides", nargs="+", help="fl_vmix Hydra overrides, sweeps with commas (after --)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            sweep = (args.runs_dir / args.experiment / args.part).resolve()
            command = [
                sys.executable,
                "-m",
                "fl_vmix",
                "--multirun",
                f"experiment={args.experiment}",
                *args.overrides,
                f"hydra.sweep.dir={sweep}",
            ]
            print("running:", " ".join(command), flush=True)
            subprocess.run(command, check=False)
            runs = find_runs([sweep.parent, *args.include])
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
