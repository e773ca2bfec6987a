"""The flwr connection entry: written by fl_vmix, read back by Flower's own parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_vmix.runtime.connection import (
    ConnectionSetupError,
    read_connection,
    split_address,
    write_connection,
)
from fl_vmix.runtime.superlink import run_id_in


def test_flower_reads_the_connection_we_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder")
    home = tmp_path / "home"
    write_connection("fl-vmix", "10.0.0.5:8000", ca, home=home)
    write_connection("loop", "127.0.0.1:9000", insecure=True, home=home)
    monkeypatch.setenv("FLWR_HOME", str(home))
    conn = read_superlink_connection("fl-vmix")
    assert (conn.address, conn.root_certificates, conn.insecure) == ("10.0.0.5:8000", str(ca.resolve()), False)
    assert read_superlink_connection(None).name == "fl-vmix", "the first connection becomes the default"
    assert read_superlink_connection("loop").insecure is True
    assert read_connection("loop")["address"] == "127.0.0.1:9000"


def test_connection_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConnectionSetupError, match="python -m fl_vmix.deploy connection --name x"):
        read_connection("x", home=tmp_path)
    write_connection("y", "127.0.0.1:1", insecure=True, home=tmp_path)
    with pytest.raises(ConnectionSetupError, match="'x' is not in"):
        read_connection("x", home=tmp_path)
    with pytest.raises(ConnectionSetupError, match="exactly one of"):
        write_connection("z", "127.0.0.1:1", home=tmp_path)
    with pytest.raises(ConnectionSetupError, match="does not exist"):
        write_connection("z", "127.0.0.1:1", tmp_path / "missing.pem", home=tmp_path)
    for bad in ("10.0.0.5", "http://10.0.0.5:8000", "host:0", ":80"):
        with pytest.raises(ConnectionSetupError, match="HOST:PORT"):
            split_address(bad)
    assert split_address("[::1]:8000") == ("::1", 8000)


def test_run_id_is_found_in_flwr_output() -> None:
    assert run_id_in("Using SuperLink: x\nSuccessfully started run 6284173697617393928\n") == 6284173697617393928
    assert run_id_in("nothing") is None
