"""Checks that stop a bad experiment before its first round, and the client's data lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fl_vmix.apps.config import ConfigError


def _number(cfg: dict[str, Any], key: str, low: float, high: float | None = None, integer: bool = False) -> None:
    value = cfg.get(key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key}={value!r} is invalid: set {key} to {'an integer' if integer else 'a number'} {bounds}")


KNOWN_SHAPES = {"cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}


def dataset_shape(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(num_classes, channels, image side) of the configured dataset.

    Known datasets answer without data (a Deployment Engine server holds none); others are read
    from the (cached) training split.
    """
    name = cfg["dataset"]["name"]
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    import medmnist

    if name in medmnist.INFO:
        info = medmnist.INFO[name]
        return len(info["label"]), int(info["n_channels"]), 28
    from fl_vmix.data import load_dataset

    data = load_dataset(name, cfg["dataset"].get("root"), "train", cache_dir=cfg["dataset"].get("cache_dir"))
    return len(data.classes), int(data.images.shape[1]), int(data.images.shape[-1])


def validate_experiment(cfg: dict[str, Any], check_data: bool | None = None) -> None:
    """Raise ConfigError naming the setting and the fix; with ``check_data`` the data must be present.

    ``check_data=None`` checks data only in the simulation engine: on the Deployment Engine the
    ServerApp runs on the SuperLink host, which holds no client data (each SuperNode has its own).
    """
    if check_data is None:
        check_data = cfg.get("engine", {}).get("name", "simulation") == "simulation"
    from fl_vmix.apps.server_app import STRATEGIES
    from fl_vmix.apps.task import OPTIMIZERS, build_image_privacy, model_from_config

    _number(cfg, "num_clients", 1, integer=True)
    _number(cfg, "num_rounds", 1, integer=True)
    _number(cfg, "local_epochs", 1, integer=True)
    _number(cfg, "batch_size", 1, integer=True)
    _number(cfg, "fraction_train", 1e-9, 1.0)
    _number(cfg, "fraction_evaluate", 0.0, 1.0)
    _number(cfg, "min_success_fraction", 0.0, 1.0)
    if cfg["strategy"]["name"] not in STRATEGIES:
        raise ConfigError(f"unknown strategy {cfg['strategy']['name']!r}: choose one of {', '.join(STRATEGIES)}")
    if cfg["optimizer"]["name"] not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg['optimizer']['name']!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not float(cfg["optimizer"].get("lr", 0)) > 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {cfg['optimizer'].get('lr')}")
    num_classes, channels, size = dataset_shape(cfg)
    model = model_from_config(cfg, num_classes, channels, size)
    # Run the privacy transform and the model once on a tiny batch of the dataset's shape: invalid
    # parameters (a region larger than the image, a target below 1, ...) fail here, not in round 1.
    transform = build_image_privacy(cfg["privacy"], b"validation-key-not-used-by-clients")
    probe = torch.linspace(0, 1, 2 * channels * size * size).view(2, channels, size, size)
    with torch.no_grad():
        model.eval()
        model(transform(probe, torch.tensor([0, 1]), 0))
    if check_data:
        client_data_for(cfg, {"partition-id": 0, "num-partitions": int(cfg["num_clients"])})


def client_data_for(cfg: dict[str, Any], node_config: dict[str, Any]):  # noqa: ANN201 - ClientData
    """The node's own data: its exported folder (Deployment Engine) or its partition (simulation)."""
    from fl_vmix.data import load_client_data
    from fl_vmix.data.export import load_exported_client

    if "data-path" in node_config:
        return load_exported_client(Path(str(node_config["data-path"])).expanduser())
    dataset, partition = cfg["dataset"], cfg["partition"]
    data = load_client_data(
        dataset["name"],
        partition_id=int(node_config["partition-id"]),
        num_partitions=int(node_config["num-partitions"]),
        scheme=partition["scheme"],
        seed=int(cfg["seed"]),
        alpha=float(partition.get("alpha", 0.5)),
        classes_per_partition=int(partition.get("classes_per_client", 2)),
        test_fraction=float(dataset.get("test_fraction", 0.2)),
        root=dataset.get("root"),
        cache_dir=dataset.get("cache_dir"),
    )
    return subsample(data, float(dataset.get("data_fraction", 1.0)), int(cfg["seed"]))


def subsample(data, fraction: float, seed: int):  # noqa: ANN001, ANN201 - ClientData in and out
    """Keep a seeded ``fraction`` of a client's train and test rows (quick runs on a share of the data)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"dataset.data_fraction={fraction} is invalid: use a fraction in (0, 1]")
    if fraction == 1:
        return data
    import dataclasses

    import numpy as np

    rng = np.random.default_rng([seed, data.partition_id, 0x5AB])

    def keep(n: int) -> np.ndarray:
        return np.sort(rng.permutation(n)[: max(1, int(round(fraction * n)))]) if n else np.arange(0)

    train, test = keep(len(data.train_labels)), keep(len(data.test_labels))
    return dataclasses.replace(
        data,
        train_images=data.train_images[train], train_labels=data.train_labels[train], train_ids=data.train_ids[train],
        test_images=data.test_images[test], test_labels=data.test_labels[test], test_ids=data.test_ids[test],
    )
