"""A short federated run with and without VisualMixer on one device: rounds per second and accuracy.

    python scripts/bench_gpu.py --data ../shared/data                       # ResNet-18, CIFAR-10, CUDA
    python scripts/bench_gpu.py --device cpu --model cnn --data-fraction 0.02 --rounds 1   # a CPU smoke run
    python scripts/bench_gpu.py --preset prototype_cifar10 --model resnet18 --amp bf16 --data-fraction 0.1 --rounds 2

Runs ``python -m fl_vmix preset=paper_cifar10`` (ResNet-18 on all of CIFAR-10, 10 clients; ``--preset
prototype_cifar10``: the authors' 224-px protocol) for ``--rounds`` rounds, once with ``privacy=none`` and once
with the preset's VisualMixer (``visualmixer_prototype`` for the prototype preset), on ``--device`` with
``--gpus-per-client`` of a GPU per client, and prints (and writes to ``--out``/bench_gpu.json) each
run's mean round time (rounds/s), its first-round time (protection and start-up included) and its
final accuracy. The runs' folders stay in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(out: Path, privacy: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, object]:
    folder = out / privacy
    overrides = [
        f"preset={args.preset}",
        f"num_rounds={args.rounds}",
        f"model={args.model}",
        f"privacy={privacy}",
        f"device={args.device}",
        f"amp={args.amp}",
        f"dataset.data_fraction={args.data_fraction}",
        f"engine.num_gpus_per_client={args.gpus_per_client if args.device != 'cpu' else 0.0}",
        f"engine.num_cpus_per_client={args.cpus_per_client}",
        f"output_dir={folder}",
    ]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fl_vmix", *overrides], env=env, capture_output=True, text=True)
    whole = time.perf_counter() - start
    summary_path = folder / "summary.json"
    if done.returncode != 0 or not summary_path.exists():
        raise SystemExit(f"{privacy} run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads(summary_path.read_text())
    rounds = [r for r in json.loads((folder / "metrics.json").read_text()) if r["round"] > 0]
    times = [float(r["round_time_s"]) for r in rounds]
    later = times[1:] or times
    return {
        "privacy": privacy,
        "device": args.device,
        "rounds": len(times),
        "first_round_s": times[0],
        "mean_round_s": sum(later) / len(later),
        "rounds_per_s": len(later) / sum(later),
        "final_accuracy": summary["final_accuracy"],
        "whole_command_s": whole,
        "run_dir": str(folder),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--preset", default="paper_cifar10", choices=["paper_cifar10", "prototype_cifar10"])
    parser.add_argument("--out", type=Path, default=None, help="run folders and bench_gpu.json (default: a temp dir)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-fraction", type=float, default=1.0)
    parser.add_argument("--gpus-per-client", type=float, default=0.5)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="fl_vmix_bench_gpu_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FL_VMIX_DATA": str(args.data.resolve())}
    shuffle = "visualmixer_prototype" if args.preset == "prototype_cifar10" else "visualmixer"
    results = [run(out, privacy, args, env) for privacy in ("none", shuffle)]
    (out / "bench_gpu.json").write_text(json.dumps(results, indent=2))
    print("| privacy | device | rounds | first round (s) | later rounds (s) | rounds/s | final accuracy |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['privacy']} | {r['device']} | {r['rounds']} | {r['first_round_s']:.1f} | {r['mean_round_s']:.1f} | "
            f"{r['rounds_per_s']:.4f} | {r['final_accuracy']:.3f} |"
        )
    print(f"results in {out}/bench_gpu.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
