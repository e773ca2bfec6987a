"""Export: each client folder holds exactly that client's simulation partition, and no key unless asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_vmix.data.conftest import write_cifar_tree
from fl_vmix.data.export import load_exported_client
from fl_vmix.deploy.__main__ import main
from fl_vmix.deploy.export import export_federation
from fl_vmix.experiment import compose
from fl_vmix.factory import client_data


def test_folders_match_the_simulation_partitions(tmp_path: Path) -> None:
    root = write_cifar_tree(tmp_path / "root" / "cifar10-jpg", {"train": 6, "test": 1}).parent
    overrides = [
        "num_clients=3",
        "dataset.data_fraction=0.5",
        f"dataset.root={root}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
    ]
    cfg = compose(overrides)
    clients = export_federation(cfg, tmp_path / "fed")
    seen_ids: list[np.ndarray] = []
    for client in clients:
        assert sorted(p.name for p in client.folder.iterdir()) == ["data.npz", "meta.json"], "the owner makes the key"
        assert client.key_file is None and client.folder.stat().st_mode & 0o077 == 0
        exported = load_exported_client(client.folder)
        simulated = client_data(cfg, {"partition-id": client.partition_id, "num-partitions": 3})
        assert exported.partition_id == client.partition_id
        # A deployed node binds the same data identity into its randomness as the simulated client would.
        assert exported.dataset is not None and exported.dataset == simulated.dataset
        np.testing.assert_array_equal(exported.train_ids, simulated.train_ids)
        np.testing.assert_array_equal(exported.test_images, simulated.test_images)
        seen_ids.append(exported.train_ids)
    assert len(np.unique(np.concatenate(seen_ids))) == sum(len(i) for i in seen_ids), "no sample in two folders"
    assert main(["export", "--out", str(tmp_path / "cli"), *overrides]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["client-0", "client-1", "client-2"]
    assert not list((tmp_path / "cli").glob("*/client.key"))


def test_keys_only_with_the_explicit_flag_and_a_warning(tmp_path: Path, capsys) -> None:
    root = write_cifar_tree(tmp_path / "root" / "cifar10-jpg", {"train": 6, "test": 1}).parent
    overrides = ["num_clients=2", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}"]
    clients = export_federation(compose(overrides), tmp_path / "fed", write_keys=True)
    keys = set()
    for client in clients:
        assert client.key_file is not None and client.new_key and client.key_file.stat().st_mode & 0o077 == 0
        keys.add(client.key_file.read_bytes())
    assert len(keys) == 2, "every client has its own key"
    again = export_federation(compose(overrides), tmp_path / "fed", write_keys=True)
    assert not any(c.new_key for c in again) and {c.key_file.read_bytes() for c in again if c.key_file} == keys, (
        "re-export keeps keys"
    )
    assert main(["export", "--out", str(tmp_path / "cli"), "--with-keys", *overrides]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "WARNING" in err and "NOT hidden from you (the operator)" in err and "keygen" in err
    assert len(list((tmp_path / "cli").glob("*/client.key"))) == 2
    assert main(["export", "--out", str(tmp_path / "cli"), *overrides]) == 0
    assert "still hold a client.key from an earlier export" in " ".join(capsys.readouterr().err.split())
