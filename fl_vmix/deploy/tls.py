"""TLS material for a SuperLink: a private CA and a server certificate, and checks that explain bad ones.

Flower's SuperLink serves its Fleet, Control and Runtime APIs on one HTTPS port and takes
``--ssl-ca-certfile ca.pem --ssl-certfile server.pem --ssl-keyfile server.key``; SuperNodes and the
``flwr`` CLI verify it with ``--root-certificates ca.pem`` / ``root-certificates = "ca.pem"``. The
certificate must name every address clients dial (SAN), or the handshake fails with a hostname
mismatch; ``127.0.0.1`` and ``localhost`` are always included so loopback setups work.

Written with the ``cryptography`` package (a Flower dependency), so no ``openssl`` binary is needed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca.key", "server.pem", "server.key"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class CertificateError(ValueError):
    """A certificate or key that a SuperLink, SuperNode or ``flwr`` would reject; says how to fix it."""


@dataclass(frozen=True)
class CertificatePaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: tuple[str, ...]
    not_after: dt.datetime


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 ECDSA: accepted by Python's ssl (uvicorn, httpx) and gRPC alike, and generated in microseconds.
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _unique_hosts(hosts: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    ordered: list[str] = []
    for host in [*LOOPBACK_HOSTS, *hosts]:
        host = host.strip()
        if not host:
            continue
        if host.startswith("[") or "://" in host or (host.count(":") == 1):
            raise CertificateError(
                f"host {host!r} is not a bare host name or IP address: drop the scheme, port and brackets"
            )
        if host not in ordered:
            ordered.append(host)
    return tuple(ordered)


def write_certificates(
    out: Path,
    hosts: list[str] | tuple[str, ...] = (),
    days: int = 365,
    valid_from: dt.datetime | None = None,
) -> CertificatePaths:
    """Create ``ca.pem``/``ca.key`` and a CA-signed ``server.pem``/``server.key`` for ``hosts`` in ``out``.

    ``valid_from`` (default: now minus one hour, for clock skew) exists so tests can make an expired pair.
    """
    if days < 1:
        raise CertificateError(f"days={days} is invalid: certificates need a validity of at least 1 day")
    names = _unique_hosts(hosts)
    out.mkdir(parents=True, exist_ok=True)
    start = valid_from or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    end = start + dt.timedelta(days=days)

    ca_key = _new_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fl_vmix"),
            x509.NameAttribute(NameOID.COMMON_NAME, "fl_vmix federation CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _new_key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fl_vmix"),
                    x509.NameAttribute(NameOID.COMMON_NAME, names[-1]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san_entry(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = CertificatePaths(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY, names, end)
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.ca_key, ca_key)
    _write_private(paths.server_key, server_key)
    return paths


def _load_cert(path: Path, role: str) -> x509.Certificate:
    if not Path(path).is_file():
        raise CertificateError(
            f"{role} {path} does not exist: create it with `python -m fl_vmix.deploy certs --out <dir>`"
        )
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as err:
        raise CertificateError(
            f"{role} {path} is not a PEM certificate ({err}): regenerate it with `python -m fl_vmix.deploy certs`"
        ) from err


def _check_dates(cert: x509.Certificate, path: Path, role: str, now: dt.datetime) -> None:
    fix = (
        "regenerate the certificates with `python -m fl_vmix.deploy certs --out <dir> --hosts ...` "
        "and restart the SuperLink"
    )
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{role} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: {fix}")
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{role} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (clock skew?): "
            f"fix this machine's clock or {fix}"
        )


def _hosts_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + list(san.get_values_for_type(x509.DNSName))


def check_certificates(
    ca_cert: Path,
    server_cert: Path | None = None,
    server_key: Path | None = None,
    host: str | None = None,
    now: dt.datetime | None = None,
) -> list[str]:
    """Raise CertificateError for what a TLS handshake would reject; return the server's SAN hosts.

    Checks: files exist and parse, neither certificate is expired or not yet valid, the server
    certificate is signed by the CA, the key belongs to the certificate, and ``host`` is in its SAN.
    """
    now = now or dt.datetime.now(dt.UTC)
    ca = _load_cert(ca_cert, "CA certificate")
    _check_dates(ca, ca_cert, "CA certificate", now)
    if server_cert is None:
        return []
    cert = _load_cert(server_cert, "server certificate")
    _check_dates(cert, server_cert, "server certificate", now)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise CertificateError(
            f"server certificate {server_cert} was not issued by the CA {ca_cert}: give SuperNodes and the flwr "
            "connection the ca.pem created together with server.pem (same `certs --out` folder)"
        ) from err
    if server_key is not None:
        try:
            key = serialization.load_pem_private_key(Path(server_key).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as err:
            raise CertificateError(
                f"server key {server_key} is unreadable ({err}): regenerate the certificates"
            ) from err
        ours = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if ours != theirs:
            raise CertificateError(
                f"server key {server_key} does not belong to {server_cert}: use the key created with it"
            )
    hosts = _hosts_of(cert)
    if host is not None and host not in hosts:
        raise CertificateError(
            f"server certificate {server_cert} is for {', '.join(hosts) or 'no host'}, not {host!r}: regenerate it "
            "with "
            f"`python -m fl_vmix.deploy certs --out <dir> --hosts {host}` or connect by one of those names"
        )
    return hosts
