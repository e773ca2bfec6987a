"""``python -m fl_vmix.evaluation.attack_suite``: every attack against every privacy setting of finished runs."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from fl_vmix.evaluation.attack_suite.runner import run_suite
from fl_vmix.evaluation.attack_suite.settings import DEFAULT_SWEEP, SuiteSettings
from fl_vmix.evaluation.attack_suite.subjects import all_method_specs

DESCRIPTION = "Experiment-level privacy attacks: every attack against every privacy setting (docs/threat_model.md)."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fl_vmix.evaluation.attack_suite", description=DESCRIPTION)
    parser.add_argument(
        "--runs", nargs="+", type=Path, required=True, help="finished run folders (config.json, model.pt)"
    )
    parser.add_argument("--experiment", required=True, help="name of the output folder under --out")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--images", type=int, default=8, help="client images per setting (jigsaw, grid)")
    parser.add_argument(
        "--inversion-images", type=int, default=None, help="images inverted per setting (default: --images)"
    )
    parser.add_argument("--inversion-iterations", type=int, default=300)
    parser.add_argument("--inversion-batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--local-steps", type=int, nargs="+", default=[1])
    parser.add_argument("--local-lr", type=float, default=0.01)
    parser.add_argument("--tv-weight", type=float, default=0.1)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument(
        "--trained", action="store_true", help="also invert updates computed from each run's final model.pt"
    )
    parser.add_argument("--recognition-images", type=int, default=500)
    parser.add_argument("--refine-steps", type=int, default=None, help="jigsaw swap-refinement rounds (default 2N)")
    parser.add_argument("--sweep-images", type=int, default=16)
    parser.add_argument("--no-sweep", action="store_true", help="skip the VisualMixer jigsaw sweep")
    parser.add_argument("--grid-images", type=int, default=2)
    parser.add_argument(
        "--method",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME [KEY=VALUE ...]",
        help="also attack conf/privacy/NAME.yaml with overrides (repeatable)",
    )
    parser.add_argument("--all-methods", action="store_true", help="also attack every conf/privacy/*.yaml setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for the inversion optimisation")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared CPU two threads ran the inversion 15x slower)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SuiteSettings(
        images=args.images,
        inversion_images=args.inversion_images,
        inversion_iterations=args.inversion_iterations,
        inversion_batch_sizes=tuple(args.inversion_batch_sizes),
        local_steps=tuple(args.local_steps),
        local_lr=args.local_lr,
        tv_weight=args.tv_weight,
        inversion_restarts=args.restarts,
        attack_trained=args.trained,
        recognition_images=args.recognition_images,
        jigsaw_refine_steps=args.refine_steps,
        sweep=() if args.no_sweep else DEFAULT_SWEEP,
        sweep_images=args.sweep_images,
        grid_images=args.grid_images,
        seed=args.seed,
        device=args.device,
    )
    methods = list(args.method) + (all_method_specs() if args.all_methods else [])
    out = run_suite(args.runs, args.experiment, args.out, settings, methods)
    print(
        f"attack results in {out}: attacks.csv, attacks_grid.png, attacks.md"
        + (", jigsaw_sweep.csv" if settings.sweep else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
