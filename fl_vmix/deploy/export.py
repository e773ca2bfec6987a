"""Split a Hydra-configured experiment's data into one folder per SuperNode.

``client-<i>/`` holds ``data.npz`` + ``meta.json`` (client i's partition after ``dataset.data_fraction``,
exactly the rows the simulation engine gives client i). Nothing of any other client is in the folder:
copy ``client-<i>`` alone to data owner i's machine.

No VisualMixer key is written: a key the operator generated is a key the operator can keep, and
VisualMixer protects images only from whoever lacks the key. Each data owner creates its key on its own
host (``python -m fl_vmix.deploy keygen client-<i>/client.key``). ``write_keys=True`` (the CLI's
``--with-keys``) still writes ``client.key`` (32 random bytes, mode 0600, kept if it exists), for a
trial federation whose nodes all belong to the operator; the CLI warns that those keys protect nothing
from the operator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fl_vmix.apps.keys import create_key_file
from fl_vmix.data.export import DATA_FILE, export_client
from fl_vmix.experiment import Experiment
from fl_vmix.factory import client_data

KEY_FILE = "client.key"


@dataclass(frozen=True)
class ExportedClient:
    partition_id: int
    folder: Path
    key_file: Path | None  # None: the data owner creates it (keygen)
    train: int
    test: int
    size_bytes: int
    new_key: bool


def export_federation(experiment: Experiment, out: Path, write_keys: bool = False) -> list[ExportedClient]:
    """Write ``out/client-<i>`` for every client of ``experiment`` (with ``client.key`` only if ``write_keys``)."""
    out = Path(out).expanduser().resolve()
    num_clients = experiment.num_clients
    dataset = experiment.dataset
    extra = {
        "dataset": dataset.name,
        "scheme": experiment.partition.scheme,
        "seed": experiment.seed,
        "data_fraction": dataset.data_fraction,
        "test_fraction": dataset.test_fraction,
        "experiment": experiment.experiment,
    }
    exported = []
    for partition_id in range(num_clients):
        data = client_data(experiment, {"partition-id": partition_id, "num-partitions": num_clients})
        folder = out / f"client-{partition_id}"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # a data owner's images: not for other users of the machine
        export_client(data, folder, extra=extra)
        key_file = folder / KEY_FILE if write_keys else None
        new_key = key_file is not None and not key_file.exists()
        if new_key:
            create_key_file(folder / KEY_FILE)
        exported.append(
            ExportedClient(
                partition_id=partition_id,
                folder=folder,
                key_file=key_file,
                train=len(data.train_labels),
                test=len(data.test_labels),
                size_bytes=(folder / DATA_FILE).stat().st_size,
                new_key=new_key,
            )
        )
    return exported
