"""The ``flwr`` CLI's connection to a SuperLink, and a probe that fails fast when it cannot work.

``flwr run <project> <name>`` reads ``[superlink.<name>]`` from ``$FLWR_HOME/config.toml`` (default
``~/.flwr``): ``address`` (the SuperLink's HTTPS port, which serves its Control API),
``root-certificates`` (the CA that signed the SuperLink's certificate, an absolute path: flwr reads it
relative to its working directory) or ``insecure = true``. Keep connections out of ``pyproject.toml``:
flwr rewrites that file.

Without a probe, a wrong address or certificate makes ``flwr run`` retry for a long time; the probe
makes one HTTPS request to the SuperLink's ``/health`` route within a few seconds and turns each
failure into a message that names the fix.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import tomli_w

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

CONFIG_FILE = "config.toml"


class ConnectionSetupError(ValueError):
    """A SuperLink connection that cannot work (missing, unreachable, untrusted); says how to fix it."""


class SuperLinkUnreachable(ConnectionSetupError):
    """Nothing answers at the address (yet): a SuperNode may wait for it, a launcher should not."""


class SuperLinkUntrusted(ConnectionSetupError):
    """The TLS handshake fails: retrying cannot help until certificates or the connection change."""


def flwr_home() -> Path:
    """Flower's home folder, as the flwr CLI resolves it (``$FLWR_HOME``, else ``~/.flwr``)."""
    value = os.environ.get("FLWR_HOME")
    return Path(value).expanduser() if value else Path.home() / ".flwr"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts; ValueError names the expected form."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if "/" in host or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConnectionSetupError(
            f"SuperLink address {address!r} is not HOST:PORT (e.g. 10.0.0.5:8000): fix the address"
        )
    return host, int(port)


def write_connection(
    name: str,
    address: str,
    root_cert: Path | None = None,
    insecure: bool = False,
    default: bool = False,
    home: Path | None = None,
) -> Path:
    """Add or replace ``[superlink.<name>]`` in ``<home>/config.toml`` and return the file's path."""
    split_address(address)
    if insecure == (root_cert is not None):
        raise ConnectionSetupError(
            "give exactly one of --root-cert CA.pem (TLS) or --insecure (plain HTTP, loopback tests only)"
        )
    path = (home or flwr_home()) / CONFIG_FILE
    config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    entry: dict[str, Any] = {"address": address}
    if root_cert is not None:
        root_cert = Path(root_cert).expanduser().resolve()
        if not root_cert.is_file():
            raise ConnectionSetupError(
                f"root certificate {root_cert} does not exist: pass the ca.pem written by `python -m fl_vmix.deploy "
                "certs`"
            )
        entry["root-certificates"] = str(root_cert)
    else:
        entry["insecure"] = True
    superlink = config.setdefault("superlink", {})
    superlink[name] = entry
    if default or "default" not in superlink:
        superlink["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(tomli_w.dumps(config))
    os.replace(tmp, path)
    return path


def read_connection(name: str, home: Path | None = None) -> dict[str, Any]:
    """The ``[superlink.<name>]`` table, or ConnectionSetupError saying how to create it."""
    path = (home or flwr_home()) / CONFIG_FILE
    fix = (
        f"create it with `python -m fl_vmix.deploy connection --name {name} --address HOST:PORT --root-cert ca.pem` "
        f"(FLWR_HOME={path.parent})"
    )
    if not path.exists():
        raise ConnectionSetupError(f"no Flower configuration at {path}, so no SuperLink connection {name!r}: {fix}")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConnectionSetupError(f"{path} is not valid TOML ({err}): fix or delete it, then {fix}") from err
    entry = config.get("superlink", {}).get(name)
    if not isinstance(entry, dict) or not entry.get("address"):
        raise ConnectionSetupError(f"SuperLink connection {name!r} is not in {path}: {fix}")
    return entry


def probe_superlink(
    address: str, root_cert: Path | str | None = None, insecure: bool = False, timeout_s: float = 5.0
) -> float:
    """One HTTPS ``GET /health`` to the SuperLink; return its latency in seconds or raise ConnectionSetupError.

    Distinguishes: nothing listening, no route/DNS, timeout, a TLS failure (untrusted, expired or
    wrong-host certificate, or a plain-HTTP server), and a server that is not a SuperLink.
    """
    host, port = split_address(address)
    start = time.perf_counter()
    context = None
    if not insecure:
        if root_cert is not None and not Path(root_cert).expanduser().is_file():
            raise ConnectionSetupError(
                f"root certificate {root_cert} does not exist: point the connection at the SuperLink's ca.pem"
            )
        context = ssl.create_default_context(cafile=str(Path(root_cert).expanduser()) if root_cert else None)
    connection: http.client.HTTPConnection = (
        http.client.HTTPConnection(host, port, timeout=timeout_s)
        if insecure
        else http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
    )
    where = f"SuperLink at {address}"
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
    except ssl.SSLCertVerificationError as err:
        reason = err.verify_message or str(err)
        if "expired" in reason:
            fix = "its certificate has expired: regenerate it (`python -m fl_vmix.deploy certs`), restart the SuperLink"
        elif "mismatch" in reason or "match" in reason:
            fix = (
                f"its certificate does not name {host!r}: regenerate it with "
                f"`python -m fl_vmix.deploy certs --hosts {host}` and restart the SuperLink"
            )
        else:
            fix = (
                "its certificate is not signed by the root certificate of this connection: "
                "use the ca.pem created with the SuperLink's server.pem"
            )
        raise SuperLinkUntrusted(f"TLS verification of the {where} failed ({reason}): {fix}") from err
    except ssl.SSLError as err:
        raise SuperLinkUntrusted(
            f"TLS handshake with the {where} failed ({err.reason or err}): is it running with "
            "--ssl-certfile/--ssl-keyfile "
            "(scripts/deploy/start_superlink.sh)? Plain-HTTP SuperLinks need `insecure = true` in the connection"
        ) from err
    except ConnectionResetError as err:  # http.client.RemoteDisconnected included
        if not insecure:
            raise SuperLinkUnreachable(
                f"the {where} reset the connection ({err}): check that it runs and the address is right"
            ) from err
        raise SuperLinkUntrusted(
            f"the {where} closed the plain-HTTP connection: it probably serves HTTPS; set root-certificates (the "
            "SuperLink's "
            "ca.pem) instead of insecure = true in the connection"
        ) from err
    except ConnectionRefusedError as err:
        raise SuperLinkUnreachable(
            f"nothing listens at the {where} (connection refused): start it with scripts/deploy/start_superlink.sh "
            "or fix the address in $FLWR_HOME/config.toml"
        ) from err
    except TimeoutError as err:
        raise SuperLinkUnreachable(
            f"the {where} did not answer within {timeout_s:.0f} s: check the host, the port and firewalls between "
            "here and there"
        ) from err
    except socket.gaierror as err:
        raise SuperLinkUnreachable(
            f"cannot resolve host {host!r} of the {where} ({err}): fix the address in $FLWR_HOME/config.toml"
        ) from err
    except OSError as err:
        raise SuperLinkUnreachable(
            f"cannot reach the {where} ({err}): check the address, the network and that the SuperLink runs"
        ) from err
    finally:
        connection.close()
    if response.status != 200:
        raise ConnectionSetupError(
            f"{address} answered /health with HTTP {response.status}: it is not a Flower 1.42 SuperLink; fix the "
            "address or port"
        )
    return time.perf_counter() - start
