"""Where a client's secret VisualMixer key comes from: the node, never the server.

A SuperNode names its key file in its node configuration (``key-file='/path/client.key'``, written by
``python -m fl_vmix.deploy export``). In the simulation engine nodes only get ``partition-id`` and
``num-partitions``, so each simulated node keeps a random 32-byte key in a file of its own under
``$FL_VMIX_KEY_DIR`` (default ``$FLWR_HOME/fl_vmix-keys``, else ``~/.cache/fl_vmix/keys``), created
on first use. Re-running on the same machine reuses the keys, so runs are reproducible; deleting the
folder gives every client a new key. The run configuration the server sends is never consulted.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

KEY_BYTES = 32


class NodeKeyError(ValueError):
    """A node's key is missing or unreadable; the message says how to provide it."""


def simulation_key_dir() -> Path:
    if os.environ.get("FL_VMIX_KEY_DIR"):
        return Path(os.environ["FL_VMIX_KEY_DIR"]).expanduser()
    if os.environ.get("FLWR_HOME"):
        return Path(os.environ["FLWR_HOME"]).expanduser() / "fl_vmix-keys"
    return Path.home() / ".cache" / "fl_vmix" / "keys"


def read_key_file(path: Path) -> bytes:
    if not path.is_file():
        raise NodeKeyError(
            f"key file {path} does not exist: create one with `python -m fl_vmix.deploy keygen {path}` "
            "(or export the client's folder with `python -m fl_vmix.deploy export`), then restart the SuperNode"
        )
    key = path.read_bytes()
    if len(key) < 16:
        raise NodeKeyError(
            f"key file {path} holds {len(key)} bytes; a key needs at least 16 random bytes: regenerate it"
        )
    return key


def create_key_file(path: Path) -> bytes:
    """Write a fresh random key; if another process wins the race, use its key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def node_key(node_config: dict[str, Any]) -> bytes:
    """The client's key from its node configuration (deployment) or its simulation key file."""
    if "key-file" in node_config:
        return read_key_file(Path(str(node_config["key-file"])).expanduser())
    partition = node_config.get("partition-id")
    if partition is None:
        raise NodeKeyError(
            "this node has neither 'key-file' nor 'partition-id' in its node config: start the SuperNode with "
            "--node-config \"data-path='...' key-file='...'\""
        )
    path = simulation_key_dir() / f"node-{int(partition)}.key"
    return read_key_file(path) if path.exists() else create_key_file(path)
