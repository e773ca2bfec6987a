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

from fl_vmix.apps.config import compose_config
from fl_vmix.apps.task import build_image_privacy, evaluate_model, model_from_config, obfuscate, optimizer_from_config, seed_for, train_epochs
from fl_vmix.apps.validate import client_data_for, dataset_shape

CONDITIONS = {
    "none": ["privacy=none"],
    "visualmixer_static": ["privacy=visualmixer", "privacy.mode=static"],
    "visualmixer_dynamic": ["privacy=visualmixer", "privacy.mode=dynamic"],
}


def client_round(cfg: dict, data, transform, cached, server_round: int, region: int) -> tuple[float, tuple]:
    """Seconds of one client's round, as the ClientApp does it: obfuscate on first use (and every
    round in dynamic mode), train, evaluate. ``cached`` holds the (train, test) splits of earlier rounds."""
    start = time.perf_counter()
    if cached is None:
        test = obfuscate(transform, data.test_images, data.test_labels, data.test_ids, epoch=0, region_size=region)
        train = obfuscate(transform, data.train_images, data.train_labels, data.train_ids, epoch=0, region_size=region)
    else:
        train, test = cached
        if cfg["privacy"].get("mode") == "dynamic":
            train = obfuscate(transform, data.train_images, data.train_labels, data.train_ids, epoch=server_round, region_size=region)
    num_classes, channels, size = dataset_shape(cfg)
    torch.manual_seed(cfg["seed"])
    model = model_from_config(cfg, num_classes, channels, size)
    train_epochs(model, train, optimizer_from_config(model.parameters(), cfg["optimizer"]), epochs=int(cfg["local_epochs"]),
                 batch_size=int(cfg["batch_size"]), seed=seed_for(cfg["seed"], data.partition_id, server_round))
    evaluate_model(model, test.images, test.labels)
    return time.perf_counter() - start, (train, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = {name: compose_config([*extra, *args.overrides]) for name, extra in CONDITIONS.items()}
    base = configs["none"]
    clients = [client_data_for(base, {"partition-id": i, "num-partitions": base["num_clients"]}) for i in range(base["num_clients"])]
    key = b"benchmark-key-0123456789abcdef01"
    times: dict[str, dict[int, list[float]]] = {name: {r: [] for r in range(1, args.rounds + 1)} for name in configs}
    for _ in range(args.repeats):
        cache: dict[str, dict[int, object]] = {name: {} for name in configs}
        for server_round in range(1, args.rounds + 1):
            for name, cfg in configs.items():  # interleaved: drift in machine load hits all conditions
                transform = build_image_privacy(cfg["privacy"], key)
                region = int(cfg["privacy"].get("region_size", 8))
                total = 0.0
                for data in clients:
                    seconds, split = client_round(cfg, data, transform, cache[name].get(data.partition_id), server_round, region)
                    cache[name][data.partition_id] = split
                    total += seconds
                times[name][server_round].append(total)
    median = {name: {r: statistics.median(v) for r, v in per_round.items()} for name, per_round in times.items()}
    table = Table(title=f"client work per round ({base['num_clients']} clients, {base['dataset']['name']}, {base['model']['name']}; median of {args.repeats})")
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
    result["static_steady_ratio"] = round(statistics.mean(result[f"visualmixer_static_round{r}_ratio"] for r in later), 4) if args.rounds > 1 else float("nan")
    result["dynamic_ratio"] = round(statistics.mean(result[f"visualmixer_dynamic_round{r}_ratio"] for r in range(1, args.rounds + 1)), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
