"""Round time of the same small experiment on Flower's simulation engine and on its Deployment Engine.

    python scripts/bench_engines.py --data ../shared/data [--rounds 3 --clients 3 --fraction 0.05]
        [--out docs/figures/engines.png --overwrite-tracked]

Simulation: ``python -m fl_vmix`` (managed local SuperLink, Ray workers that live for the whole run).
Deployment: a loopback federation (``fl_vmix.deploy.local.LocalFederation``: one SuperLink and one
SuperNode per client, TLS and SuperNode authentication, started by ``scripts/deploy/*.sh``), each
SuperNode with only its exported folder, and ``python -m fl_vmix engine=deployment``. Same Hydra
overrides, same seed. Round times come from each run's ``metrics.csv`` (``round_time_s``: from sending
the round's training messages to the end of its evaluation). Also measured: what a fresh ClientApp
process pays on the Deployment Engine (importing the app; loading the exported folder).

Prints a table and, as the last line, a JSON object; saves a bar chart. All processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tracked_outputs import FLAG, check_output  # noqa: E402 - scripts/, next to this file

from fl_vmix.runtime.launcher import OFFLINE_ENV  # noqa: E402 - runs from a checkout without install
from fl_vmix.runtime.processes import descendants, stop_processes  # noqa: E402


def run_cli(args: list[str], env: dict[str, str], out: Path, timeout_s: float) -> tuple[float, dict]:
    start = time.perf_counter()
    with (out.parent / f"{out.name}.out").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fl_vmix", *args, f"hydra.run.dir={out}"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout_s)
        finally:
            if process.poll() is None:
                stop_processes([process.pid, *descendants(process.pid)])
                process.wait(timeout=30)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    if code != 0 or summary.get("status") != "completed":
        raise SystemExit(
            f"run in {out} failed (exit {code}); see {out.parent / (out.name + '.out')} and {out / 'flwr.log'}"
        )
    return wall, summary


def round_times(out: Path) -> list[float]:
    with (out / "metrics.csv").open() as handle:
        return [float(row["round_time_s"]) for row in csv.DictReader(handle)]


def cold_start(data_path: Path, env: dict[str, str]) -> dict[str, float]:
    """What each ClientApp process pays on the Deployment Engine: interpreter + imports, then the data."""
    code = (
        "import time; t=time.perf_counter(); import fl_vmix.apps.client_app; i=time.perf_counter()-t;"
        "from fl_vmix.data.export import load_exported_client; from pathlib import Path;"
        f"t=time.perf_counter(); d=load_exported_client(Path({str(data_path)!r})); l=time.perf_counter()-t;"
        "print(i, l)"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300
    )
    total = time.perf_counter() - start
    imports, load = map(float, done.stdout.split())
    return {"process_s": total, "import_clientapp_s": imports, "load_exported_ms": load * 1000}


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4), dpi=120, gridspec_kw={"width_ratios": [2, 1]})
    engines = list(results)
    rounds = len(results[engines[0]]["round_times_s"])
    width = 0.8 / len(engines)
    for k, engine in enumerate(engines):
        xs = [r + 1 + (k - (len(engines) - 1) / 2) * width for r in range(rounds)]
        left.bar(xs, results[engine]["round_times_s"], width=width, label=engine)
    top = max(t for e in engines for t in results[e]["round_times_s"])
    left.set(
        xlabel="round",
        ylabel="round time (s)",
        xticks=range(1, rounds + 1),
        title="time per round",
        ylim=(0, top * 1.3),
    )
    left.legend(fontsize=8, ncol=len(engines), loc="upper center")
    left.grid(axis="y", alpha=0.3)
    walls = [results[e]["wall_s"] for e in engines]
    right.bar(engines, walls, color=["C0", "C1"][: len(engines)])
    right.set(ylabel="seconds", title="whole command (wall)")
    right.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="data root with cifar10-jpg.tar.xz"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.05, help="dataset.data_fraction")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/engines.png"), help="the bar chart, a .png (default: outputs/)"
    )
    parser.add_argument(FLAG, action="store_true", help="allow --out to replace a figure git tracks")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    check_output(args.out, args.overwrite_tracked, ".png")  # before minutes of runs, not after

    from fl_vmix.deploy.export import export_federation
    from fl_vmix.deploy.local import LocalFederation
    from fl_vmix.experiment import compose

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fl_vmix_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = [f"num_clients={args.clients}", f"num_rounds={args.rounds}", f"dataset.data_fraction={args.fraction}"]
    base_env = {
        **os.environ,
        **OFFLINE_ENV,
        "FL_VMIX_DATA": str(args.data.resolve()),
        "FL_VMIX_CACHE": str(work / "cache"),
    }
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}

    sim_env = {**base_env, "FLWR_HOME": str(work / "sim_home"), "FL_VMIX_KEY_DIR": str(work / "sim_keys")}
    run_cli(
        ["num_rounds=1", f"num_clients={args.clients}", f"dataset.data_fraction={args.fraction}"],
        sim_env,
        work / "warmup",
        args.timeout,
    )  # fills the data cache
    wall, summary = run_cli(overrides, sim_env, work / "simulation", args.timeout)
    results["simulation"] = {
        "wall_s": wall,
        "round_times_s": round_times(work / "simulation"),
        "final_accuracy": summary["final_accuracy"],
    }

    cfg = compose([*overrides, f"dataset.root={args.data.resolve()}", f"dataset.cache_dir={work / 'cache'}"])
    export_federation(cfg, work / "fed")
    with LocalFederation(work / "loopback", work / "fed", args.clients) as fed:
        start = time.perf_counter()
        fed.start()
        startup = time.perf_counter() - start
        wall, summary = run_cli(
            ["engine=deployment", f"engine.connection={fed.connection}", *overrides],
            {**fed.env, "FL_VMIX_CACHE": str(work / "cache")},
            work / "deployment",
            args.timeout,
        )
        results["deployment"] = {
            "wall_s": wall,
            "round_times_s": round_times(work / "deployment"),
            "final_accuracy": summary["final_accuracy"],
            "federation_startup_s": startup,
        }
        cold = cold_start(work / "fed" / "client-0", fed.env)
    leftover = fed.leftover_pids()

    print(f"{'engine':<12}{'mean round (s)':>16}{'rounds (s)':>28}{'wall (s)':>10}{'final acc':>11}")
    for engine, r in results.items():
        mean = sum(r["round_times_s"]) / len(r["round_times_s"])
        r["mean_round_s"] = mean
        rounds = " ".join(f"{t:.1f}" for t in r["round_times_s"])
        print(f"{engine:<12}{mean:>16.1f}{rounds:>28}{r['wall_s']:>10.1f}{r['final_accuracy']:>11.4f}")
    print(
        f"deployment federation startup (certs, keys, SuperLink, registration, {args.clients} SuperNodes online): "
        f"{results['deployment']['federation_startup_s']:.1f} s"
    )
    print(
        f"fresh ClientApp process: {cold['process_s']:.2f} s in all, import of the ClientApp "
        f"{cold['import_clientapp_s']:.2f} s, exported folder loaded in {cold['load_exported_ms']:.1f} ms"
    )
    cpu = os.cpu_count()
    title = (
        f"fl_vmix, CIFAR-10 {args.fraction:g} of data, {args.clients} clients, VisualMixer, {cpu} CPU cores "
        f"(load {load_before:.1f} at start)"
    )
    plot(results, args.out, title)
    print(f"figure: {args.out}")
    print(
        json.dumps(
            {
                "config": overrides,
                "cpu_count": cpu,
                "loadavg_start": load_before,
                "loadavg_end": os.getloadavg()[0],
                "results": results,
                "clientapp_cold_start": cold,
                "leftover_pids": leftover,
                "figure": str(args.out),
            }
        )
    )


if __name__ == "__main__":
    main()
