"""The paper's operating point at native resolution (fl_vmix.evaluation.operating_point), on real CIFAR-10.

    FL_VMIX_DATA=../shared/data python scripts/operating_point.py --victims 500 --public 10000 \
        --attack-epochs 2 --out experiments/results/operating_point

Applies the prototype's 224-px shuffle and the native candidates to the same random test images (the attack
grader's victims) and writes ``results.json`` (every score, the command, the commit, the hardware) and
``table.md`` to ``--out``. ``--attack-epochs 0`` skips the learned attack (seconds instead of minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from bench_vmix import hardware  # scripts/ is on sys.path when this file runs

from fl_vmix.evaluation.attack_grade.data import load_grade_data
from fl_vmix.evaluation.attack_grade.grade import commit
from fl_vmix.evaluation.attacks.learned import LearnedAttackConfig
from fl_vmix.evaluation.operating_point import NATIVE, PROTOTYPE, closest, measure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("FL_VMIX_DATA"), help="data folder (default $FL_VMIX_DATA)")
    parser.add_argument("--victims", type=int, default=500)
    parser.add_argument("--public", type=int, default=10000, help="the attacker's public training images")
    parser.add_argument("--attack-epochs", type=int, default=2, help="learned-attack epochs (0: no attack)")
    parser.add_argument(
        "--attack-widths", type=int, nargs="+", default=[32, 64, 128], help="the attack network's widths"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("outputs/operating_point"))
    return parser.parse_args(argv)


def table(rows: list[dict[str, object]], chosen: str) -> str:
    lines = [
        "| setting | region (original px) | SSIM obfuscated | SSIM thumbnail | SSIM learned attack | attack steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        learned = "-" if row["learned_ssim"] is None else f"{row['learned_ssim']:.3f}"
        steps = "-" if row["learned_steps"] is None else str(row["learned_steps"])
        name = f"**{row['label']}** (closest)" if row["label"] == chosen else str(row["label"])
        lines.append(
            f"| {name} | {row['region_original_px']:.2f} | {row['obfuscated_ssim']:.3f} | "
            f"{row['thumbnail_ssim']:.3f} | {learned} | {steps} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.root is None:
        sys.exit("no data folder: pass --root /path/to/data or set FL_VMIX_DATA (e.g. FL_VMIX_DATA=../shared/data)")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_grade_data("cifar10", args.root, None, victims=args.victims, public=args.public, seed=args.seed)
    attack = None
    if args.attack_epochs > 0:
        attack = LearnedAttackConfig(epochs=args.attack_epochs, widths=tuple(args.attack_widths), seed=args.seed)
    public = torch.from_numpy(data.public_images)
    rows = []
    for setting in (PROTOTYPE, *NATIVE):
        start = time.perf_counter()
        row = measure(
            setting, data.victims, data.victim_ids, public_images=public, public_ids=data.public_ids,
            attack=attack, seed=args.seed, log=lambda line: print(line, flush=True),
        )  # fmt: skip
        print(f"{row.label}: {row.as_dict()} ({time.perf_counter() - start:.0f} s)", flush=True)
        rows.append(row)
    chosen = closest(rows[0], rows[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python "
        + shlex.join(["scripts/operating_point.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": commit(paths=("fl_vmix", "scripts")),
        "hardware": f"{hardware(torch.device('cpu'))}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "data": data.describe(),
        "attack": None if attack is None else asdict(attack) | {"region_size": "per setting (its region on 32 px)"},
        "prototype": asdict(PROTOTYPE),
        "native": [asdict(s) for s in NATIVE],
        "rows": [row.as_dict() for row in rows],
        "closest_native": chosen.label,
    }
    rendered = table([row.as_dict() for row in rows], chosen.label)
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "table.md").write_text(rendered)
    print(rendered)
    print(f"closest native setting to the prototype's: {chosen.label}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
