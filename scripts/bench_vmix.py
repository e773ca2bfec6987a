"""Throughput of VFE and VisualMixer next to the floor of one precomputed torch.gather, same tensors.

    python scripts/bench_vmix.py [--device cpu|cuda] [--repeats 10] [--record RELEASE]

Prints a table and, as its last line, one JSON object with the figures. ``--record RELEASE`` also appends
them as a row of ``experiments/results/bench_vmix/results.csv`` (with the release label, date, commit, hardware and
load average), from which ``scripts/readme_tables.py`` writes the README's speed table.
Images are synthetic but photograph-like (smooth shapes plus texture); when CIFAR-10 is in the data root
($FL_VMIX_DATA), 512 real test images go through target mode too (their level selection does more work: about
half of them need the finer block size). Fresh sample ids every repeat, so every permutation is freshly drawn
from the keyed PRF (as in training). The CPU path runs Numba kernels with as many threads as torch
(``torch.set_num_threads``); the first call compiles them (cached on disk), and the warm-up call of
every measure keeps compilation out of the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from fl_vmix.privacy import VisualMixer, vfe

BENCH_KEY = bytes(range(32))  # a fixed benchmark key (never a default anywhere else)
RECORD = Path(__file__).resolve().parents[1] / "experiments" / "results" / "bench_vmix" / "results.csv"


def photo_like(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shapes = F.interpolate(
        torch.rand(batch, 3, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False
    )
    texture = 0.05 * torch.randn(batch, 3, size, size, generator=g)
    return (shapes + texture).clamp(0, 1)


def real_cifar10(count: int) -> torch.Tensor | None:
    """The first ``count`` CIFAR-10 test images (0-1 floats) when the data is on this machine, else None.

    Real photographs need the finer block size in about half the images at the default target (the synthetic
    ones in none), so the target-mode figure on them is the one to expect in training."""
    from fl_vmix.data.errors import DataError
    from fl_vmix.data.sources import load_dataset

    try:
        images = load_dataset("cifar10", split="test", download=False).images[:count]
    except DataError as error:
        print(f"real CIFAR-10 not measured: {str(error).splitlines()[0]}")
        return None
    return torch.from_numpy(images.copy()).float().div(255.0)


def hardware(device: torch.device) -> str:
    """What ran the figures: the GPU's name, or the CPU's model (as the kernel reports it), the instruction set
    torch's CPU kernels use (``AVX512``, ``AVX2``, ...) and how many cores the machine has. Figures compare only on
    the same hardware."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((v for k, _, v in (line.partition(":") for line in lines) if k.strip() == "model name"), "")
    model = model.strip() or platform.processor() or platform.machine()
    model = " ".join(model.replace("(R)", "").replace("(TM)", "").split())
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores"


def timed(functions: dict[str, Callable[[int], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, after one warm-up call each. Calls are interleaved
    (round-robin), so a floor and the measures it divides see the same machine load."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for fn in functions.values():
        fn(0)
    for i in range(1, repeats + 1):
        for name, fn in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and Numba)")
    parser.add_argument("--record", metavar="RELEASE", help="append the figures to experiments/results/bench_vmix")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict[str, float | str] = {
        "device": str(device),
        "hardware": hardware(device),
        "threads": torch.get_num_threads(),
    }

    small = photo_like(512, 32).to(device)
    cifar = real_cifar10(512)
    cifar = cifar.to(device) if cifar is not None else None
    flat = small.view(512, -1)
    index = torch.stack(
        [torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(i)) for i in range(512)]
    ).to(device)
    mixer32 = VisualMixer(BENCH_KEY, region_size=8, block_sizes=(2, 1), target_ratio=3.0)  # the default
    fixed32 = VisualMixer(BENCH_KEY, region_size=8, block_sizes=(1,), target_ratio=None)
    ids = torch.arange(512, device=device)
    t = timed(
        {
            "gather": lambda i: flat.gather(1, index),
            "mix": lambda i: mixer32(small, ids + 512 * i),  # fresh ids: fresh permutations every call
            "fixed": lambda i: fixed32(small, ids + 512 * i),
            "vfe": lambda i: vfe(small, 8, "corrected"),
            **({"cifar10": lambda i: mixer32(cifar, ids + 512 * i)} if cifar is not None else {}),
        },
        args.repeats,
        device,
    )
    results.update(
        gather_32_img_per_s=512 / t["gather"],
        vmix_32_img_per_s=512 / t["mix"],
        vmix_fixed_32_img_per_s=512 / t["fixed"],
        vfe_32_img_per_s=512 / t["vfe"],
        vmix_32_over_gather=t["mix"] / t["gather"],
        vmix_fixed_32_over_gather=t["fixed"] / t["gather"],
    )
    if cifar is not None:
        results.update(
            vmix_32_cifar10_img_per_s=512 / t["cifar10"], vmix_32_cifar10_over_gather=t["cifar10"] / t["gather"]
        )

    large = photo_like(128, 224, seed=1).to(device)
    flat = large.view(128, -1)
    index = torch.stack(
        [torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(i)) for i in range(128)]
    ).to(device)
    mixer224 = VisualMixer(BENCH_KEY, region_size=16, block_sizes=(8, 4, 2), target_ratio=2.0)
    ids = torch.arange(128, device=device)
    t = timed(
        {
            "gather": lambda i: flat.gather(1, index),
            "mix": lambda i: mixer224(large, ids + 128 * i),
            "vfe": lambda i: vfe(large, 14, "reference"),
        },
        max(3, args.repeats // 2),
        device,
    )
    results.update(
        gather_224_s_per_batch=t["gather"],
        vmix_224_s_per_batch=t["mix"],
        vfe_224_s_per_batch=t["vfe"],
        vmix_224_over_gather=t["mix"] / t["gather"],
    )

    table = Table(title=f"VisualMixer benchmark on {device} ({results['threads']} threads)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}))
    if args.record:
        record(args.record, results, load_at_start)


def record(release: str, results: dict[str, float | str], load_at_start: float, path: Path = RECORD) -> None:
    """Append one run to the results file ``path`` (new columns: refuse, name the fix)."""
    import fl_vmix
    from fl_vmix.evaluation.attack_grade.grade import commit

    row = {
        "release": release,
        "date": date.today().isoformat(),
        # the code measured (PYTHONPATH may point at another checkout than this script's), -dirty if its code or
        # scripts are edited (not its results: a recorded run would make the next one dirty)
        "commit": commit(Path(fl_vmix.__file__).parents[1], paths=("fl_vmix", "scripts")),
        "load_at_start": round(load_at_start, 2),
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = path.is_file() and path.stat().st_size > 0
    if exists:
        with path.open() as handle:
            fields = next(csv.reader(handle))
        if set(row) - set(fields):
            raise SystemExit(f"{path} has no columns {sorted(set(row) - set(fields))}: add them to its header")
    else:
        fields = list(row)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        if not exists:
            writer.writeheader()
        writer.writerow(row)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
