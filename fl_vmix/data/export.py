"""Per-client data folders for the Deployment Engine: each SuperNode gets its own partition and nothing else.

A folder holds ``data.npz`` (the client's train/test images, labels and global sample ids, stored
uncompressed so a fresh ``flwr-clientapp`` process loads it in milliseconds) and ``meta.json``
(dataset, partition and class names). Keys are written next to it by the deploy tooling.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fl_vmix.data.client import ClientData, DatasetIdentity
from fl_vmix.data.errors import DataError

DATA_FILE, META_FILE = "data.npz", "meta.json"
_ARRAYS = ("train_images", "train_labels", "train_ids", "test_images", "test_labels", "test_ids")


def export_client(data: ClientData, folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write one client's data to ``folder`` (atomically: a half-written export is never loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{DATA_FILE}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **{name: getattr(data, name) for name in _ARRAYS})
    os.replace(tmp, folder / DATA_FILE)
    meta = {
        "partition_id": data.partition_id,
        "num_partitions": data.num_partitions,
        "classes": list(data.classes),
        # What the sample ids index: keyed methods bind it into their randomness, so a node must keep it.
        "dataset_identity": None if data.dataset is None else dataclasses.asdict(data.dataset),
        **(extra or {}),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_exported_client(folder: Path) -> ClientData:
    """A client's data from its exported folder, with an error that says how to create it."""
    folder = Path(folder)
    data_file, meta_file = folder / DATA_FILE, folder / META_FILE
    if not data_file.is_file() or not meta_file.is_file():
        raise DataError(
            f"no exported client data in {folder} (expected {DATA_FILE} and {META_FILE}): create it with "
            "`python -m fl_vmix.deploy export --out <dir> ...` and start the SuperNode with "
            "--node-config \"data-path='<dir>/client-<i>'\""
        )
    try:
        meta = json.loads(meta_file.read_text())
        with np.load(data_file) as arrays:
            values = {name: arrays[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"exported client data in {folder} is unreadable ({err}): export it again") from err
    identity = meta.get("dataset_identity")  # absent from folders exported before the randomness was bound to data
    return ClientData(
        partition_id=int(meta["partition_id"]),
        num_partitions=int(meta["num_partitions"]),
        classes=list(meta["classes"]),
        dataset=None if identity is None else DatasetIdentity(**identity),
        **values,
    )
