"""Where a client's VisualMixer key comes from: the node, never the server.

**Deployment Engine.** A SuperNode names its key file in its node configuration
(``key-file='/path/client.key'``, written by ``python -m fl_vmix.deploy export``): 32 random bytes that
only that node reads. This is the rule whenever the node config names a key file.

**Simulation** (nodes only get ``partition-id`` and ``num-partitions``), by ``engine.simulation_keys``:

* ``derived`` (default): ``key = derive_subkey(PUBLIC_SIMULATION_MASTER, context_bytes(
  "fl_vmix.simulation-key", seed, partition_id))``, the keyed PRF of :mod:`fl_vmix.privacy.keyed` under
  a fixed master that is printed below and is **not secret**. The same command therefore gives the same
  shuffles, and the same numbers, on every machine. This is a simulation convenience for
  reproducibility only: anyone who knows the experiment's seed can derive every client's key, so
  such keys protect nothing against the server or any other reader of the config. Runs record it
  (``engine.simulation_keys`` in ``config.json``, ``"keys"`` in ``summary.json``).
* ``random``: each simulated node keeps 32 random bytes in a file of its own under
  ``$FL_VMIX_KEY_DIR`` (default ``$FLWR_HOME/fl_vmix-keys``, else ``~/.cache/fl_vmix/keys``), created on
  first use and reused, so reruns on the same machine are reproducible; deleting the folder gives every
  client a new key. Use it where the keys must be secret from whoever knows the seed.

The run configuration the server sends never carries a key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from fl_vmix.privacy.keyed import context_bytes, derive_subkey

KEY_BYTES = 32
# Public by design (see the module docstring): the master of derived simulation keys. Changing it
# changes every derived key, and with it every VisualMixer number of a simulation.
PUBLIC_SIMULATION_MASTER = b"fl_vmix public simulation master"  # 32 bytes, published here on purpose
SIMULATION_KEY_CONTEXT = "fl_vmix.simulation-key"
# What summary.json says about a run's client keys, by where they came from.
KEY_ORIGINS = {
    "derived": "derived from the public seed (not secret)",
    "random": "random key files per simulated node ($FL_VMIX_KEY_DIR)",
    "node": "each SuperNode's key file",
}


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


def derived_simulation_key(seed: int, partition_id: int) -> bytes:
    """The public, reproducible key of simulated partition ``partition_id`` in a run with ``seed`` (not secret)."""
    return derive_subkey(PUBLIC_SIMULATION_MASTER, context_bytes(SIMULATION_KEY_CONTEXT, int(seed), int(partition_id)))


def key_origin(node_config: dict[str, Any], simulation_keys: str | None) -> str:
    """``node`` (a key file named by the node), else the simulation's ``derived`` or ``random``."""
    if "key-file" in node_config:
        return "node"
    return simulation_keys or "random"


def node_key(node_config: dict[str, Any], seed: int = 0, simulation_keys: str | None = "random") -> bytes:
    """The client's key: its node's key file, else its simulation key (``derived`` or ``random``).

    ``seed`` is the experiment's seed (it only matters for ``derived`` keys).
    """
    if "key-file" in node_config:
        return read_key_file(Path(str(node_config["key-file"])).expanduser())
    partition = node_config.get("partition-id")
    if partition is None:
        raise NodeKeyError(
            "this node has neither 'key-file' nor 'partition-id' in its node config: start the SuperNode with "
            "--node-config \"data-path='...' key-file='...'\""
        )
    if simulation_keys == "derived":
        return derived_simulation_key(seed, int(partition))
    if simulation_keys not in (None, "random"):
        raise NodeKeyError(f"engine.simulation_keys={simulation_keys!r} is invalid: use derived or random")
    path = simulation_key_dir() / f"node-{int(partition)}.key"
    return read_key_file(path) if path.exists() else create_key_file(path)
