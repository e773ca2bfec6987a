"""Where a client's VisualMixer key comes from: the node, never the server.

A node's key policy comes from its own node configuration, never from the run configuration the
server sends (a server that could pick it could pick a key it can derive):

* ``key-file='/path/client.key'``: 32 random bytes that only that node reads (``python -m
  fl_vmix.deploy keygen``). This is the rule whenever the node config names a key file.
* ``simulation-keys='derived'`` or ``'random'`` in the node config: the node itself opts into a
  simulation key below (a test SuperNode without a key file of its own).
* a node config of exactly ``partition-id`` and ``num-partitions`` is what Flower's simulation gives
  every simulated node: the person running the simulation owns every node, so the experiment's
  ``engine.simulation_keys`` chooses. Any other node config (a SuperNode: ``data-path=...``) without a
  key file or its own ``simulation-keys`` is refused.

The simulation keys:

* ``derived`` (the simulation default): ``key = derive_subkey(PUBLIC_SIMULATION_MASTER, context_bytes(
  "fl_vmix.simulation-key", seed, partition_id))``, the keyed PRF of :mod:`fl_vmix.privacy.keyed` under
  a fixed master that is printed below and is **not secret**. The same command therefore gives the same
  shuffles, and the same numbers, on every machine. This is a simulation convenience for
  reproducibility only: anyone who knows the experiment's seed can derive every client's key, so
  such keys protect nothing against the server or any other reader of the config. Runs say so
  (:data:`DERIVED_KEYS_WARNING` in the console summary, ``summary.json`` and every report row).
* ``random``: each simulated node keeps 32 random bytes in a file of its own under
  ``$FL_VMIX_KEY_DIR`` (default ``$FLWR_HOME/fl_vmix-keys``, else ``~/.cache/fl_vmix/keys``; a folder
  created here is mode 0700), created on first use and reused, so reruns on the same machine are
  reproducible; deleting the folder gives every client a new key. Use it where the keys must be secret
  from whoever knows the seed.

The run configuration the server sends never carries a key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from fl_vmix.experiment import Experiment
from fl_vmix.privacy.keyed import context_bytes, derive_subkey
from fl_vmix.privacy.methods import method_parameters

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
NODE_POLICY_KEY = "simulation-keys"  # a node's own opt-in to a simulation key (node config)
SIMULATED_NODE_CONFIG = frozenset({"partition-id", "num-partitions"})  # all Flower's simulation gives a node
DERIVED_KEYS_WARNING = (
    "client keys derived from the public seed (engine.simulation_keys=derived): anyone with the run's config.json "
    "can derive every client's key and undo what the key protects, so this run is not a privacy result; rerun with "
    "engine.simulation_keys=random or on the Deployment Engine"
)
REPRODUCIBLE_NOISE_WARNING = (
    "DP noise reproducible (reproducible_noise=true): central DP's noise comes from the public seed and DP-SGD's noise "
    "and sampling from each client's key and the seed, so the DP guarantee does not hold against anyone who knows the "
    "seed (every client receives it) and, for DP-SGD, the client's key; rerun with reproducible_noise=false for a "
    "privacy result"
)
NOISE_FROM_ENTROPY = ("central_dp", "dp_sgd")  # methods whose noise comes from OS entropy unless reproducible_noise


def rests_on_key(method: str, reproducible_noise: bool) -> bool:
    """Whether ``method``'s protection rests on the client's key (DP-SGD's only when its noise is reproducible)."""
    if method == "dp_sgd":
        return reproducible_noise
    return "key" in method_parameters(method)


def run_warnings(experiment: Experiment) -> list[str]:
    """What the run's console summary, ``summary.json`` and report say about randomness anyone can regenerate."""
    method = experiment.privacy.method
    warnings = []
    derived = experiment.engine.name == "simulation" and experiment.engine.simulation_keys == "derived"
    if derived and rests_on_key(method, experiment.reproducible_noise):
        warnings.append(DERIVED_KEYS_WARNING)
    if experiment.reproducible_noise and method in NOISE_FROM_ENTROPY:
        warnings.append(REPRODUCIBLE_NOISE_WARNING)
    return warnings


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
            f"key file {path} does not exist: create one on this host with `python -m fl_vmix.deploy keygen {path}` "
            "(the data owner's own key: the operator never makes or sees it), then restart the SuperNode"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise NodeKeyError(
            f"key file {path} holds {len(key)} bytes, not the {KEY_BYTES} random bytes of a key (a text or truncated "
            f"file?): regenerate it with `python -m fl_vmix.deploy keygen {path}` on this host"
        )
    return key


def private_dir(path: Path) -> None:
    """Create the folder ``path`` (and its parents) if missing; a folder made here is mode 0700 whatever the umask."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:  # another process made it first
        return
    path.chmod(0o700)  # mkdir's mode passes through the umask


def create_key_file(path: Path) -> bytes:
    """Write a fresh random key (mode 0600, in a 0700 folder if it makes one); if another process wins the race,
    use its key."""
    private_dir(path.parent)
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


def node_policy(node_config: dict[str, Any], simulation_keys: str | None) -> str:
    """Where this node's key comes from: ``node`` (its key file), ``derived`` or ``random``.

    Decided by the node's own config; the experiment's ``simulation_keys`` (which the server sends) counts only
    for a node whose config is exactly the one Flower's simulation gives.
    """
    if "key-file" in node_config:
        return "node"
    own = node_config.get(NODE_POLICY_KEY)
    if own is not None:
        if own not in ("derived", "random"):
            raise NodeKeyError(
                f"node config {NODE_POLICY_KEY}={own!r} is invalid: use 'random' or 'derived', or give the node "
                "key-file='...' (python -m fl_vmix.deploy keygen)"
            )
        return str(own)
    if set(node_config) != SIMULATED_NODE_CONFIG:
        raise NodeKeyError(
            "this SuperNode has no key of its own: create one on this host with `python -m fl_vmix.deploy keygen "
            "<path>` and start the SuperNode with --node-config \"data-path='...' key-file='<path>'\" (a test node may "
            f"instead opt in with {NODE_POLICY_KEY}='random'); the server's engine.simulation_keys does not choose a "
            "SuperNode's key"
        )
    if simulation_keys not in (None, "derived", "random"):
        raise NodeKeyError(f"engine.simulation_keys={simulation_keys!r} is invalid: use derived or random")
    return simulation_keys or "random"


def node_key(node_config: dict[str, Any], seed: int = 0, simulation_keys: str | None = "random") -> bytes:
    """The client's key under :func:`node_policy`: its node's key file, else a simulation key.

    ``seed`` is the experiment's seed (it only matters for ``derived`` keys).
    """
    policy = node_policy(node_config, simulation_keys)
    if policy == "node":
        return read_key_file(Path(str(node_config["key-file"])).expanduser())
    partition = node_config.get("partition-id")
    if partition is None:
        raise NodeKeyError(
            f"this node opted into simulation keys ({NODE_POLICY_KEY}) but has no 'partition-id' in its node config "
            "to name its key: add partition-id=<i>, or give it key-file='...'"
        )
    if policy == "derived":
        return derived_simulation_key(seed, int(partition))
    path = simulation_key_dir() / f"node-{int(partition)}.key"
    return read_key_file(path) if path.exists() else create_key_file(path)
