"""SuperNode preflight: every missing piece is named with its fix; Flower parses the node config we print."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_vmix.apps.keys import create_key_file
from fl_vmix.data.client import ClientData
from fl_vmix.data.export import export_client
from fl_vmix.deploy.__main__ import main
from fl_vmix.deploy.preflight import NodeSetupError, check_node, node_config_string


def _client_folder(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    data = ClientData(
        partition_id=1,
        num_partitions=3,
        train_images=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8),
        train_labels=np.arange(8) % 10,
        train_ids=np.arange(8),
        test_images=rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8),
        test_labels=np.arange(2),
        test_ids=np.arange(8, 10),
        classes=[str(c) for c in range(10)],
    )
    export_client(data, folder)
    create_key_file(folder / "client.key")
    return folder


def test_ready_node_reports_its_partition(tmp_path: Path) -> None:
    folder = _client_folder(tmp_path / "client-1")
    report = check_node(folder, folder / "client.key")
    assert (report.partition_id, report.num_partitions, report.train, report.test, report.key_bytes) == (1, 3, 8, 2, 32)
    assert report.load_ms < 1000 and report.warnings == ()


def test_every_problem_is_listed_with_its_fix(tmp_path: Path) -> None:
    with pytest.raises(NodeSetupError) as err:
        check_node(
            tmp_path / "nowhere", tmp_path / "no.key", auth_key=tmp_path / "no-auth", ca_cert=tmp_path / "no-ca.pem"
        )
    message = str(err.value)
    assert "data folder" in message and "python -m fl_vmix.deploy export" in message
    assert "keygen" in message and "auth-keys" in message and "certs --out" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(NodeSetupError, match="no exported client data"):
        check_node(tmp_path / "empty", tmp_path / "no.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_other_users_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    folder = _client_folder(tmp_path / "c")
    (folder / "client.key").chmod(mode)
    with pytest.raises(NodeSetupError, match=rf"client.key is open to other users \(mode {mode:o}\): chmod 600"):
        check_node(folder, folder / "client.key")
    (folder / "client.key").chmod(0o600)
    assert check_node(folder, folder / "client.key").warnings == ()


@pytest.mark.parametrize("size", [0, 16, 31, 33, 44])
def test_a_key_file_of_the_wrong_length_is_refused(tmp_path: Path, size: int) -> None:
    folder = _client_folder(tmp_path / "c")
    (folder / "client.key").write_bytes(b"k" * size)  # 44: a base64 text of a key, not the key
    with pytest.raises(NodeSetupError, match=rf"holds {size} bytes, not the 32 random bytes.*keygen"):
        check_node(folder, folder / "client.key")


def test_flower_parses_the_node_config(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    folder = _client_folder(tmp_path / "client 1")  # spaces survive the quoting
    text = node_config_string(folder, folder / "client.key")
    assert parse_config_args([text]) == {
        "data-path": str(folder.resolve()),
        "key-file": str((folder / "client.key").resolve()),
    }
    with pytest.raises(NodeSetupError, match="quote"):
        node_config_string(tmp_path / "it's", tmp_path / "k")


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _client_folder(tmp_path / "client-1")
    assert main(["check-node", "--data-path", str(folder), "--print-node-config"]) == 0
    assert capsys.readouterr().out.strip() == node_config_string(folder, folder / "client.key")
    assert main(["check-node", "--data-path", str(tmp_path / "missing")]) == 2
    assert "SuperNode setup is not ready" in capsys.readouterr().err
    assert main(["keygen", str(tmp_path / "k" / "client.key")]) == 0
    assert (tmp_path / "k" / "client.key").stat().st_size == 32
