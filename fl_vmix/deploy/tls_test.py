"""Certificates: what Python's TLS stack (the one Flower's HTTPS SuperLink and clients use) accepts and rejects."""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fl_vmix.deploy.tls import (
    CertificateError,
    CertificatePaths,
    check_certificates,
    write_certificates,
)
from fl_vmix.runtime.connection import (
    SuperLinkUnreachable,
    SuperLinkUntrusted,
    probe_superlink,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return write_certificates(tmp_path_factory.mktemp("certs"), ["superlink.example.org", "10.0.0.5"])


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def https_server(cert: Path, key: Path) -> Iterator[str]:
    """A real HTTPS server on 127.0.0.1 answering /health, as a SuperLink does."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_files_modes_and_hosts(certs: CertificatePaths) -> None:
    assert certs.hosts == ("127.0.0.1", "localhost", "superlink.example.org", "10.0.0.5")
    assert certs.ca_key.stat().st_mode & 0o077 == 0 and certs.server_key.stat().st_mode & 0o077 == 0
    assert check_certificates(certs.ca_cert, certs.server_cert, certs.server_key, "10.0.0.5") == [
        "127.0.0.1",
        "10.0.0.5",
        "localhost",
        "superlink.example.org",
    ]


def test_handshake_verifies_with_the_ca(certs: CertificatePaths) -> None:
    with https_server(certs.server_cert, certs.server_key) as address:
        assert probe_superlink(address, certs.ca_cert, timeout_s=5) < 5


def test_other_ca_is_rejected_with_the_fix(certs: CertificatePaths, tmp_path: Path) -> None:
    other = write_certificates(tmp_path)
    with (
        https_server(certs.server_cert, certs.server_key) as address,
        pytest.raises(SuperLinkUntrusted, match="not signed by the root"),
    ):
        probe_superlink(address, other.ca_cert, timeout_s=5)
    with pytest.raises(CertificateError, match="not issued by the CA"):
        check_certificates(other.ca_cert, certs.server_cert)


def test_expired_certificate_is_named_expired(tmp_path: Path) -> None:
    old = write_certificates(tmp_path, days=1, valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
    with pytest.raises(CertificateError, match="expired on .* regenerate"):
        check_certificates(old.ca_cert, old.server_cert)
    with https_server(old.server_cert, old.server_key) as address, pytest.raises(SuperLinkUntrusted, match="expired"):
        probe_superlink(address, old.ca_cert, timeout_s=5)


def test_not_yet_valid_and_wrong_host_and_wrong_key(certs: CertificatePaths, tmp_path: Path) -> None:
    future = write_certificates(tmp_path / "future", valid_from=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    with pytest.raises(CertificateError, match="not valid before"):
        check_certificates(future.ca_cert)
    with pytest.raises(CertificateError, match="--hosts 192.168.1.9"):
        check_certificates(certs.ca_cert, certs.server_cert, host="192.168.1.9")
    with pytest.raises(CertificateError, match="does not belong"):
        check_certificates(certs.ca_cert, certs.server_cert, future.server_key)


def test_bad_inputs_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="does not exist: create it"):
        check_certificates(tmp_path / "nope.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        check_certificates(tmp_path / "junk.pem")
    with pytest.raises(CertificateError, match="bare host name"):
        write_certificates(tmp_path / "x", ["10.0.0.5:8000"])
    with pytest.raises(CertificateError, match="at least 1 day"):
        write_certificates(tmp_path / "x", days=0)


def test_probe_distinguishes_plain_http_and_nothing_listening(certs: CertificatePaths) -> None:
    from fl_vmix.runtime.processes import free_port

    with (
        https_server(certs.server_cert, certs.server_key) as address,
        pytest.raises(SuperLinkUntrusted, match="serves HTTPS"),
    ):
        probe_superlink(address, insecure=True, timeout_s=5)
    with pytest.raises(SuperLinkUnreachable, match="nothing listens"):
        probe_superlink(f"127.0.0.1:{free_port()}", certs.ca_cert, timeout_s=5)
