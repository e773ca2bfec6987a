"""SuperNode authentication keys are accepted by Flower 1.42's own loaders (the CLI's and the SuperNode's)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fl_vmix.deploy.auth import (
    AuthKeyError,
    check_auth_key,
    write_auth_key,
    write_auth_keys,
)


def test_flower_loads_both_halves(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    (private, public), *_ = write_auth_keys(tmp_path, 2)
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert try_load_public_key(public)  # what `flwr supernode register` sends to the SuperLink
    key, _ = _try_setup_client_authentication(
        argparse.Namespace(auth_supernode_private_key=str(private), auth_supernode_public_key=None)
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert check_auth_key(private) == public.read_text().strip()


def test_existing_keys_are_kept_unless_overwritten(tmp_path: Path) -> None:
    _, public = write_auth_key(tmp_path / "node")
    first = public.read_text()
    assert write_auth_key(tmp_path / "node")[1].read_text() == first
    assert write_auth_key(tmp_path / "node", overwrite=True)[1].read_text() != first


def test_bad_keys_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(AuthKeyError, match="does not exist: create it with `python -m fl_vmix.deploy auth-keys"):
        check_auth_key(tmp_path / "missing")
    (tmp_path / "junk").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    with pytest.raises(AuthKeyError, match="not an unencrypted OpenSSH private key"):
        check_auth_key(tmp_path / "junk")
    with pytest.raises(AuthKeyError, match="at least one"):
        write_auth_keys(tmp_path, 0)
