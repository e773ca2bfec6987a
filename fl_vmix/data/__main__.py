"""Command line for the data layer.

    python -m fl_vmix.data list
    python -m fl_vmix.data prepare --dataset cifar10 --root ../shared/data
    python -m fl_vmix.data stats --dataset cifar10 --root ../shared/data --num-partitions 10 \
        --scheme dirichlet --alpha 0.3 --seed 0 --plot labels.png

``stats`` prints per-client sizes (with the per-client train/test split) and label counts, checks
that every sample is in exactly one client, and with ``--plot`` saves a stacked bar chart of the
label distribution per client. Bad input exits with status 2 and a message naming the fix.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fl_vmix.data.errors import DataError
from fl_vmix.data.partition import CLASS_ASSIGNMENTS, SCHEMES, cached_partitions, client_split, label_counts
from fl_vmix.data.paths import resolve_cache_dir, resolve_data_root
from fl_vmix.data.sources import DATASETS, SPLITS, ImageArrays, load_dataset

if TYPE_CHECKING:
    from rich.table import Table

MAX_CLASS_COLUMNS = 20


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (see `list`)")
    parser.add_argument("--root", default=None, help="data root (default: $FL_VMIX_DATA, else ~/.cache/fl_vmix/data)")
    parser.add_argument(
        "--cache-dir", default=None, help="writable cache (default: $FL_VMIX_CACHE, else ~/.cache/fl_vmix)"
    )
    parser.add_argument("--no-download", action="store_true", help="never try to download missing files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fl_vmix.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list dataset names")
    prepare = sub.add_parser("prepare", help="decode a dataset into the cache (all splits) and report the time")
    _add_source_args(prepare)
    stats = sub.add_parser("stats", help="per-client sizes and label counts of a partitioning")
    _add_source_args(stats)
    stats.add_argument("--split", default="train", choices=SPLITS)
    stats.add_argument("--num-partitions", type=int, required=True)
    stats.add_argument("--scheme", default="iid", choices=SCHEMES)
    stats.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (dirichlet)")
    stats.add_argument("--classes-per-partition", type=int, default=2, help="classes per client (pathological)")
    stats.add_argument("--class-assignment", default="first-deterministic", choices=CLASS_ASSIGNMENTS)
    stats.add_argument("--min-partition-size", type=int, default=None, help="dirichlet minimum client size")
    stats.add_argument("--seed", type=int, default=0)
    stats.add_argument("--test-fraction", type=float, default=0.2, help="per-client held-out share")
    stats.add_argument("--plot", type=Path, default=None, help="save a stacked bar plot of labels per client here")
    return parser


def _print_list() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="datasets")
    table.add_column("name")
    table.add_column("description")
    for name in sorted(DATASETS):
        table.add_row(name, DATASETS[name].description)
    Console().print(table)


def _prepare(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    data = load_dataset(
        args.dataset, args.root, "train", cache_dir=args.cache_dir, download=False if args.no_download else None
    )
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_dataset(args.dataset, args.root, "train", cache_dir=args.cache_dir, download=False)
    again = time.perf_counter() - start
    print(
        f"{data.name}: train {data.images.shape} {len(data.classes)} classes; first load {first:.2f} s, "
        f"cached load {again * 1000:.1f} ms (root {resolve_data_root(args.root)}, cache "
        f"{resolve_cache_dir(args.cache_dir)})"
    )


def stats_table(data: ImageArrays, partitions: Sequence[np.ndarray], test_fraction: float, seed: int) -> Table:
    """A rich Table with one row per client: train/test/total size, classes present and label counts."""
    from rich.table import Table

    counts = label_counts(data.labels, partitions, data.num_classes)
    table = Table(title=f"{data.name}/{data.split}: {len(partitions)} clients")
    for column in ("client", "train", "test", "total", "classes"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    many = data.num_classes > MAX_CLASS_COLUMNS
    if many:
        table.add_column("top labels (count)", no_wrap=True)
    else:
        for name in data.classes:
            table.add_column(name[:10], justify="right", no_wrap=True, min_width=min(len(name), 10))
    for pid, (part, row) in enumerate(zip(partitions, counts)):
        train, test = client_split(part, test_fraction, seed=(seed, pid))
        cells = [str(pid), str(len(train)), str(len(test)), str(len(part)), str(int((row > 0).sum()))]
        if many:
            top = np.argsort(-row, kind="stable")[:5]
            cells.append(", ".join(f"{data.classes[c]} ({row[c]})" for c in top if row[c] > 0))
        else:
            cells += [str(v) for v in row]
        table.add_row(*cells)
    return table


def coverage_line(num_samples: int, partitions: Sequence[np.ndarray]) -> str:
    """'each sample in exactly one client' check, as one human-readable line."""
    seen = np.bincount(np.concatenate(partitions), minlength=num_samples)
    sizes = np.array([len(p) for p in partitions])
    return (
        f"samples in a client: {(seen > 0).sum()}/{num_samples}, in more than one: {(seen > 1).sum()}; "
        f"client size min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}"
    )


def save_plot(data: ImageArrays, partitions: Sequence[np.ndarray], path: Path, title: str) -> np.ndarray:
    """Stacked bar chart, one bar per client and one colour per class: flwr-datasets' label-distribution plot
    over our (cached) partitions. Returns the plotted counts, ``[clients, classes]``."""
    import datasets
    import matplotlib

    matplotlib.use("Agg")
    from flwr_datasets.partitioner import Partitioner
    from flwr_datasets.visualization import plot_label_distributions

    class Fixed(Partitioner):  # the partitions are computed (and cached) already: hand them over as they are
        @property
        def num_partitions(self) -> int:
            return len(partitions)

        def load_partition(self, partition_id: int) -> datasets.Dataset:
            return self.dataset.select(partitions[partition_id])

    features = datasets.Features({"label": datasets.ClassLabel(names=list(data.classes))})
    partitioner = Fixed()
    partitioner.dataset = datasets.Dataset.from_dict({"label": np.asarray(data.labels).tolist()}, features=features)
    width = max(6.0, 0.35 * len(partitions) + 3)
    figure, _, counts = plot_label_distributions(
        partitioner, "label", plot_type="bar", size_unit="absolute", figsize=(width, 4.5), title=title,
        legend=data.num_classes <= 20, legend_title="label",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return counts.to_numpy()


def _stats(args: argparse.Namespace) -> None:
    from rich.console import Console

    data = load_dataset(
        args.dataset, args.root, args.split, cache_dir=args.cache_dir, download=False if args.no_download else None
    )
    partitions = cached_partitions(
        data.labels,
        args.num_partitions,
        args.scheme,
        seed=args.seed,
        alpha=args.alpha,
        classes_per_partition=args.classes_per_partition,
        min_partition_size=args.min_partition_size,
        class_assignment=args.class_assignment,
        dataset_name=f"{data.name}/{args.split}",
        cache_dir=args.cache_dir,
    )
    table = stats_table(data, partitions, args.test_fraction, args.seed)
    console = Console()
    needed = Console(width=10_000).measure(table).maximum  # never squash the numbers into ellipses
    if needed > console.width:
        console = Console(width=needed)
    console.print(table)
    console.print(coverage_line(len(data), partitions))
    if args.plot is not None:
        detail = {"dirichlet": f", alpha={args.alpha}", "pathological": f", k={args.classes_per_partition}"}.get(
            args.scheme, ""
        )
        title = f"{data.name}/{args.split}: {args.scheme}{detail}, {args.num_partitions} clients, seed {args.seed}"
        save_plot(data, partitions, args.plot, title)
        console.print(f"plot saved to {args.plot}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with the fix on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            _print_list()
        elif args.command == "prepare":
            _prepare(args)
        else:
            _stats(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
