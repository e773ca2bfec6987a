"""Checks a SuperNode host runs before ``flower-supernode`` starts, so bad setup fails at once and clearly.

Without them a SuperNode with a missing data folder or key starts fine and only its ClientApp
fails, once per message, with the error in the server's log; a wrong certificate or an unregistered
key makes ``flower-supernode`` retry. ``scripts/deploy/start_supernode.sh`` runs
``python -m fl_vmix.deploy check-node`` first and stops with the message below.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from fl_vmix.apps.keys import NodeKeyError, read_key_file
from fl_vmix.data.errors import DataError
from fl_vmix.data.export import load_exported_client


class NodeSetupError(ValueError):
    """A SuperNode host that is not ready; lists every problem with its fix."""


@dataclass(frozen=True)
class NodeReport:
    partition_id: int
    num_partitions: int
    train: int
    test: int
    classes: int
    load_ms: float
    key_bytes: int
    warnings: tuple[str, ...]


def node_config_string(data_path: Path, key_file: Path) -> str:
    """The ``--node-config`` value for ``flower-supernode`` (TOML-quoted absolute paths)."""
    parts = []
    for name, value in (("data-path", data_path), ("key-file", key_file)):
        text = str(Path(value).expanduser().resolve())
        if "'" in text or "\n" in text:
            raise NodeSetupError(
                f"{name} {text!r} contains a quote or newline, which --node-config cannot carry: move it"
            )
        parts.append(f"{name}='{text}'")
    return " ".join(parts)


def check_node(
    data_path: Path,
    key_file: Path,
    auth_key: Path | None = None,
    ca_cert: Path | None = None,
) -> NodeReport:
    """Raise NodeSetupError naming every problem (data, key, auth key, CA) or report what the node holds.

    ``load_ms`` is the time to load the exported folder, which every ClientApp process pays per
    message on the Deployment Engine.
    """
    problems: list[str] = []
    warnings: list[str] = []
    data = None
    load_ms = float("nan")
    data_path, key_file = Path(data_path).expanduser(), Path(key_file).expanduser()
    if not data_path.is_dir():
        problems.append(
            f"data folder {data_path} does not exist: copy this node's client-<i> folder from "
            "`python -m fl_vmix.deploy export --out <dir>` here and pass it as DATA_PATH / data-path"
        )
    else:
        try:
            start = time.perf_counter()
            data = load_exported_client(data_path)
            load_ms = (time.perf_counter() - start) * 1000
        except DataError as err:
            problems.append(str(err))
    key = b""
    try:
        key = read_key_file(key_file)
    except NodeKeyError as err:
        problems.append(str(err))
    if key and os.name == "posix" and key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Another user of this host could copy the key and undo the node's protection: not a node to start.
        problems.append(
            f"key file {key_file} is open to other users (mode {stat.S_IMODE(key_file.stat().st_mode):o}): "
            f"chmod 600 {key_file}"
        )
    if auth_key is not None:
        from fl_vmix.deploy.auth import AuthKeyError, check_auth_key

        try:
            check_auth_key(auth_key)
        except AuthKeyError as err:
            problems.append(str(err))
    if ca_cert is not None:
        from fl_vmix.deploy.tls import CertificateError, check_certificates

        try:
            check_certificates(Path(ca_cert).expanduser())
        except CertificateError as err:
            problems.append(str(err))
    if problems:
        raise NodeSetupError("SuperNode setup is not ready:\n  - " + "\n  - ".join(problems))
    assert data is not None
    return NodeReport(
        partition_id=data.partition_id,
        num_partitions=data.num_partitions,
        train=len(data.train_labels),
        test=len(data.test_labels),
        classes=len(data.classes),
        load_ms=load_ms,
        key_bytes=len(key),
        warnings=tuple(warnings),
    )
