"""Grade an experiment's privacy settings by the strongest attacks; add the privacy axis to its report.

    python -m fl_vmix.evaluation.attack_grade --experiment cifar10_frontier --root ../shared/data
    python -m fl_vmix.evaluation.attack_grade --experiment retinamnist --root ../shared/data --victims 520
    python -m fl_vmix.evaluation.attack_grade --experiment demo_seeds --victims 64 --learned-budget-s 60 \\
        --out /tmp/demo_seeds_graded            # write somewhere else than experiments/results/<experiment>

Reads ``<results>/<experiment>/results.csv`` and its runs' ``config.json``; grades every distinct
image-level setting (dataset, method, public parameters: seeds, models and optimisers collapse) and
writes ``<out>/attacks/<setting>.json`` after every attack, then ``results.csv`` and ``report.md``
with the attack columns and ``accuracy_vs_attack_ssim.png``. Finished settings are skipped (``--force``
regrades them); one graded with other budgets is regraded in the attacks those budgets change (so every
setting of a report meets the same attacks), and an interrupted one resumes at the attack it was in.
``--list`` shows the settings and what would run.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fl_vmix.evaluation.attack_grade.config import STAGE_FIELDS, GradeConfig
from fl_vmix.evaluation.attack_grade.settings import GradeError, GradeSetting, experiment_settings
from fl_vmix.evaluation.privacy_axis import ATTACKS_DIR, load_grades

DEFAULTS = GradeConfig()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fl_vmix.evaluation.attack_grade",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--experiment", required=True, help="folder name under --results")
    p.add_argument("--results", type=Path, default=Path("experiments/results"))
    p.add_argument("--out", type=Path, default=None, help="where to write (default: the experiment's folder)")
    p.add_argument("--root", default=None, help="data root (default: the runs' dataset.root, then $FL_VMIX_DATA)")
    p.add_argument("--cache-dir", default=None, help="decoded-data cache (default: the runs' dataset.cache_dir)")
    p.add_argument("--only", nargs="+", default=None, help="grade only settings whose file stem matches a pattern")
    p.add_argument("--victims", type=int, default=DEFAULTS.victims)
    p.add_argument("--public", type=int, default=DEFAULTS.public, help="attacker's public images (training split)")
    p.add_argument("--learned-budget-s", type=float, default=DEFAULTS.learned_budget_s)
    p.add_argument("--learned-epochs", type=int, default=DEFAULTS.learned_epochs)
    p.add_argument("--widths", type=int, nargs="+", default=list(DEFAULTS.widths), help="U-Net widths")
    p.add_argument("--candidates", type=int, default=DEFAULTS.candidates, help="candidate search (0: skip)")
    p.add_argument("--candidate-rounds", type=int, default=DEFAULTS.candidate_rounds)
    p.add_argument("--classifier-epochs", type=int, default=DEFAULTS.classifier_epochs)
    p.add_argument("--classifier-budget-s", type=float, default=DEFAULTS.classifier_budget_s)
    p.add_argument("--recogniser-epochs", type=int, default=DEFAULTS.recogniser_epochs, help="0: skip")
    p.add_argument("--recogniser-budget-s", type=float, default=DEFAULTS.recogniser_budget_s)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    p.add_argument("--force", action="store_true", help="regrade finished settings")
    p.add_argument(
        "--regrade", action="store_true",
        help="allow regrading settings already graded in the output folder with other budgets (it overwrites "
        "their grades, hours of attacks); without it such a call stops and names them",
    )  # fmt: skip
    p.add_argument(
        "--rerun", nargs="+", default=[], choices=list(STAGE_FIELDS), metavar="ATTACK",
        help=f"run these attacks again on the selected settings, keeping the others ({', '.join(STAGE_FIELDS)}); "
        "e.g. after a grading on a busy machine, whose time budgets bought fewer steps",
    )  # fmt: skip
    p.add_argument("--list", action="store_true", help="list the settings and their state; grade nothing")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _selected(settings: list[GradeSetting], patterns: list[str] | None) -> list[GradeSetting]:
    if not patterns:
        return settings
    chosen = [s for s in settings if any(fnmatch.fnmatchcase(s.stem, p) or p == s.stem for p in patterns)]
    if not chosen:
        raise GradeError(f"--only {' '.join(patterns)} matches none of: {', '.join(s.stem for s in settings)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    experiment_dir = args.results / args.experiment
    out = args.out or experiment_dir
    try:
        settings, training = experiment_settings(experiment_dir)
        chosen = _selected(settings, args.only)
    except GradeError as err:
        print(f"attack_grade: {err}", file=sys.stderr)
        return 2
    config = grade_config(args)
    finished = load_grades(out)
    # A grade made with other budgets is regraded in the stages they change (the others are kept), so every
    # setting of one report meets the same attacks.
    stale = {stem: sorted({*config.changed_stages(grade), *args.rerun}) for stem, grade in finished.items()}
    todo = [s for s in chosen if args.force or s.stem not in finished or stale[s.stem]]
    for s in settings:
        state = "graded" if s.stem in finished and not stale[s.stem] else "not selected"
        if s in todo:
            state = f"to regrade ({', '.join(stale[s.stem])})" if stale.get(s.stem) else "to grade"
        log(f"{s.stem}: {state} (report settings: {', '.join(s.labels)})")
    for label in training:
        log(f"{label}: training-level DP, no image attack (its images are never obfuscated)")
    if args.list:
        return 0
    # Budgets other than those of the grades already there would silently overwrite them (the committed ones
    # in experiments/results/ included): that needs saying so. --force and --rerun already say so.
    overwritten = [s.stem for s in todo if s.stem in finished and s.stem in stale and stale[s.stem]]
    if overwritten and not (args.regrade or args.force or args.rerun):
        budgets = finished[overwritten[0]].get("command") or "other budgets"
        print(
            f"attack_grade: {len(overwritten)} setting(s) in {out} were graded with other budgets ({budgets}); "
            f"these budgets would regrade and overwrite them ({', '.join(overwritten[:3])}"
            f"{', ...' if len(overwritten) > 3 else ''}). Repeat their command to add settings with the same "
            f"budgets, pass --out <folder> to grade elsewhere, or --regrade to overwrite them; --list shows "
            "what would run",
            file=sys.stderr,
        )
        return 2
    if todo:
        command = "python -m fl_vmix.evaluation.attack_grade " + " ".join(shlex.quote(a) for a in argv)
        grade_all(args, config, todo, out, command)
    from fl_vmix.evaluation.attack_grade.update import update_report

    report = update_report(experiment_dir, out, args.experiment)
    log(f"wrote {report}, {out / 'results.csv'} and {out / ATTACKS_DIR}/")
    return 0


def grade_config(args: argparse.Namespace) -> GradeConfig:
    from fl_vmix.training.device import resolve_device

    return GradeConfig(
        victims=args.victims, public=args.public, learned_budget_s=args.learned_budget_s,
        learned_epochs=args.learned_epochs, widths=tuple(args.widths), candidates=args.candidates,
        candidate_rounds=args.candidate_rounds, classifier_epochs=args.classifier_epochs,
        classifier_budget_s=args.classifier_budget_s, recogniser_epochs=args.recogniser_epochs,
        recogniser_budget_s=args.recogniser_budget_s, seed=args.seed, device=str(resolve_device(args.device)),
    )  # fmt: skip


def grade_all(args: argparse.Namespace, config: GradeConfig, todo: list[GradeSetting], out: Path, command: str) -> None:
    from fl_vmix.evaluation.attack_grade.classifier import clear_classifier
    from fl_vmix.evaluation.attack_grade.data import load_grade_data
    from fl_vmix.evaluation.attack_grade.grade import grade_setting
    from fl_vmix.training.device import set_threads

    set_threads(args.threads)
    datasets: dict[str, tuple[Any, Any, Any]] = {}
    for i, setting in enumerate(todo, 1):
        if setting.dataset not in datasets:
            root, cache = args.root or setting.root, args.cache_dir or setting.cache_dir
            log(f"loading {setting.dataset}: {config.victims} victims, {config.public} public images")
            data = load_grade_data(
                setting.dataset, root, cache, victims=config.victims, public=config.public, seed=config.seed
            )
            model, training = clear_classifier(setting.dataset, data, config, cache, log)
            datasets[setting.dataset] = (data, model, training)
        data, model, training = datasets[setting.dataset]
        log(f"[{i}/{len(todo)}] {setting.stem}")
        began = time.perf_counter()
        record = grade_setting(setting, data, config, model, training, out / ATTACKS_DIR / f"{setting.stem}.json",
                               command, log, fresh=args.force, rerun=tuple(args.rerun))  # fmt: skip
        log(
            f"[{i}/{len(todo)}] {setting.stem}: attack SSIM {record['attack_ssim']:.3f} ({record['attack_ssim_by']}), "
            f"recognition {record['attack_recognition']:.3f} ({record['attack_recognition_by']}) in "
            f"{time.perf_counter() - began:.0f} s"
        )


if __name__ == "__main__":
    raise SystemExit(main())
