"""VisualMixer's training overhead: one federated round's client work with and without it, same run.

    python scripts/bench_overhead.py [--rounds 3] [--repeats 3] [hydra overrides...]

Runs the ClientApp's own steps (load the partition, obfuscate, train the local epochs, evaluate) for
every client of the default experiment on this machine, one thread per client as in the simulation,
for privacy=none, VisualMixer static (shuffle once, reuse every round) and VisualMixer dynamic (new
shuffle every round). Conditions are interleaved and each figure is the median over repeats. Prints
a table and, as its last line, a JSON object with the round times and their ratios to privacy=none
(target: at most 1.05). The Flower/Ray messaging around a round is the same in every condition and
is left out, which makes these ratios an upper bound on the overhead of a whole round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from fl_vmix.experiment import Experiment, compose
from fl_vmix.factory import client_data, initial_model, local_client
from fl_vmix.privacy.similarity import mean_ssim_psnr
from fl_vmix.training.client import LocalClient

CONDITIONS = {
    "none": ["privacy=none"],
    "visualmixer_static": ["privacy=visualmixer", "privacy.mode=static"],
    "visualmixer_dynamic": ["privacy=visualmixer", "privacy.mode=dynamic"],
}
KEY = b"benchmark-key-0123456789abcdef01"


def client_round(client: LocalClient, experiment: Experiment, weights: dict, server_round: int) -> float:
    """Seconds of one client's round, as the ClientApp runs it: the LocalClient protects its splits on
    first use (and the training split every round in dynamic mode), trains, and evaluates."""
    start = time.perf_counter()
    result = client.train(weights, server_round, epochs=experiment.local_epochs)
    client.evaluate(result.weights)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # Modules the client imports on first use (SSIM's torchmetrics): load them before timing, or the first
    # condition of round 1 pays for them alone.
    mean_ssim_psnr(torch.rand(1, 3, 16, 16), torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    configs = {name: compose([*extra, *args.overrides]) for name, extra in CONDITIONS.items()}
    base = configs["none"]
    datasets = [
        client_data(base, {"partition-id": i, "num-partitions": base.num_clients}) for i in range(base.num_clients)
    ]
    weights = {name: initial_model(experiment).state_dict() for name, experiment in configs.items()}
    times: dict[str, dict[int, list[float]]] = {name: {r: [] for r in range(1, args.rounds + 1)} for name in configs}
    for _ in range(args.repeats):
        # Fresh clients every repeat: round 1 pays for protecting the data, as in a new run.
        clients = {
            name: [local_client(experiment, data, KEY) for data in datasets] for name, experiment in configs.items()
        }
        for server_round in range(1, args.rounds + 1):
            for name, experiment in configs.items():  # interleaved: drift in machine load hits all conditions
                total = sum(client_round(c, experiment, weights[name], server_round) for c in clients[name])
                times[name][server_round].append(total)
    median = {name: {r: statistics.median(v) for r, v in per_round.items()} for name, per_round in times.items()}
    title = (
        f"client work per round ({base.num_clients} clients, {base.dataset.name}, {base.model.name}; "
        f"median of {args.repeats})"
    )
    table = Table(title=title)
    table.add_column("condition")
    for r in range(1, args.rounds + 1):
        table.add_column(f"round {r} s", justify="right")
        table.add_column(f"ratio r{r}", justify="right")
    result: dict[str, float] = {}
    for name in configs:
        cells = []
        for r in range(1, args.rounds + 1):
            ratio = median[name][r] / median["none"][r]
            cells += [f"{median[name][r]:.2f}", f"{ratio:.3f}"]
            result[f"{name}_round{r}_s"] = round(median[name][r], 4)
            result[f"{name}_round{r}_ratio"] = round(ratio, 4)
        table.add_row(name, *cells)
    Console().print(table)
    later = range(2, args.rounds + 1)
    result["static_steady_ratio"] = (
        round(statistics.mean(result[f"visualmixer_static_round{r}_ratio"] for r in later), 4)
        if args.rounds > 1
        else float("nan")
    )
    result["dynamic_ratio"] = round(
        statistics.mean(result[f"visualmixer_dynamic_round{r}_ratio"] for r in range(1, args.rounds + 1)), 4
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
