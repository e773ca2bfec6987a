"""SuperNode authentication keys in the formats Flower 1.42 reads.

With ``flower-superlink --enable-supernode-auth`` a SuperLink only accepts SuperNodes whose public key
was registered beforehand (``flwr supernode register <key.pub> <connection>``). Each SuperNode signs
its requests with the matching private key (``flower-supernode --auth-supernode-private-key <key>``).
Flower loads the private key with ``load_ssh_private_key`` and requires an elliptic-curve key, and the
CLI loads the public key with ``load_ssh_public_key`` on a NIST curve (P-384 in Flower's docs): the
files below are exactly what ``ssh-keygen -t ecdsa -b 384 -N '' -f supernode-<i>`` would write.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class AuthKeyError(ValueError):
    """A SuperNode authentication key that Flower would reject; says how to fix it."""


def write_auth_key(private_path: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write an ECDSA P-384 key pair: ``private_path`` (OpenSSH private key, mode 0600) and ``.pub``."""
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists() and not overwrite:
        check_auth_key(private_path)
        if not public_path.exists():
            public_path.write_bytes(_public_bytes(_load_private(private_path)) + b"\n")
        return private_path, public_path
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    private_path.unlink(missing_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(_public_bytes(key) + b"\n")
    return private_path, public_path


def write_auth_keys(out: Path, count: int, overwrite: bool = False) -> list[tuple[Path, Path]]:
    """``out/supernode-<i>`` and ``out/supernode-<i>.pub`` for i in 0..count-1 (existing keys are kept)."""
    if count < 1:
        raise AuthKeyError(f"--n {count} is invalid: generate at least one SuperNode key")
    return [write_auth_key(Path(out) / f"supernode-{i}", overwrite=overwrite) for i in range(count)]


def _public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, UnsupportedAlgorithm, TypeError) as err:
        raise AuthKeyError(
            f"{path} is not an unencrypted OpenSSH private key ({err}): create one with "
            "`python -m fl_vmix.deploy auth-keys --out <dir> --n <N>`"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AuthKeyError(
            f"{path} holds a {type(key).__name__}; Flower needs an ECDSA key: create one with `python -m "
            "fl_vmix.deploy auth-keys`"
        )
    return key


def check_auth_key(private_path: Path) -> str:
    """Raise AuthKeyError unless Flower can load the private key; return its public key line."""
    path = Path(private_path)
    if not path.is_file():
        raise AuthKeyError(
            f"SuperNode authentication key {path} does not exist: create it with "
            "`python -m fl_vmix.deploy auth-keys --out <dir> --n <N>` and register its .pub file with "
            "`flwr supernode register <key>.pub <connection>`"
        )
    return _public_bytes(_load_private(path)).decode()
