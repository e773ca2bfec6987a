"""A Deployment Engine federation on loopback (127.0.0.1), for tests, benchmarks and trying it out.

It runs the same ``scripts/deploy/*.sh`` a real deployment uses (TLS, SuperNode authentication, the
SuperLink on loopback behind the Fleet-only gateway, ``--node-config`` with the node's own data folder
and key), on free ports chosen at start, with its own ``FLWR_HOME``. As on separate hosts, the operator
side exports data without keys and each node's owner side creates its VisualMixer key (``keygen``) in
its own folder before its SuperNode starts; the flwr connection (the operator's) dials the SuperLink's
loopback port, SuperNodes dial the gateway. Every process it starts is stopped by PID: the script's
process and everything below it (SuperExec, ServerApp and ClientApp processes), SIGTERM first,
SIGKILL after a grace period; ``leftover_pids`` finds anything that still runs with this federation's ``FLWR_HOME``.

    with LocalFederation(workdir, data_dir=exported, num_nodes=3) as fed:
        fed.start()                       # certs, auth keys, SuperLink, gateway, registration, keys, SuperNodes
        ... python -m fl_vmix engine=deployment engine.connection=<fed.connection>, env=fed.env ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from fl_vmix.apps.keys import create_key_file
from fl_vmix.deploy.auth import write_auth_keys
from fl_vmix.deploy.export import KEY_FILE
from fl_vmix.deploy.tls import write_certificates
from fl_vmix.runtime.connection import ConnectionSetupError, probe_superlink, write_connection
from fl_vmix.runtime.launcher import OFFLINE_ENV
from fl_vmix.runtime.processes import alive, descendants, free_port, stop_processes
from fl_vmix.runtime.superlink import wait_for_supernodes

PROJECT_DIR = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT_DIR / "scripts" / "deploy"


class FederationError(RuntimeError):
    """A loopback process did not come up; the message carries the end of its log."""


@dataclass
class Managed:
    name: str
    process: subprocess.Popen
    log: Path
    seen: set[int] = field(default_factory=set)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalFederation:
    """One SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1 (node i serves ``data_dir/client-<i>``)."""

    def __init__(
        self,
        workdir: Path,
        data_dir: Path,
        num_nodes: int,
        connection: str = "fl-vmix-local",
        python: str | None = None,
    ) -> None:
        if not (SCRIPTS / "start_superlink.sh").exists():
            raise FederationError(f"{SCRIPTS} not found: LocalFederation runs from a checkout of fl_vmix")
        self.workdir = Path(workdir).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.num_nodes = num_nodes
        self.connection = connection
        self.python = python or sys.executable
        self.flwr_home = self.workdir / "flwr_home"
        self.certs = self.workdir / "certs"
        self.auth = self.workdir / "auth"
        self.logs = self.workdir / "logs"
        self.port = free_port()  # the SuperLink: Control, Runtime and Fleet APIs, loopback only
        self.gateway_port = free_port()  # the gateway: Fleet API only, what SuperNodes dial
        self.clientappio_ports = [free_port() for _ in range(num_nodes)]
        self.superlink: Managed | None = None
        self.gateway: Managed | None = None
        self.supernodes: dict[int, Managed] = {}
        self.stopped: list[Managed] = []
        self.env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(self.flwr_home), "PYTHON": self.python}
        self.env["PATH"] = os.pathsep.join([str(Path(self.python).parent), self.env.get("PATH", "")])

    @property
    def address(self) -> str:
        """What SuperNodes (and anyone holding ca.pem) dial: the gateway."""
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def control_address(self) -> str:
        """The SuperLink itself, on loopback: the operator's flwr connection."""
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------------ setup
    def prepare(self) -> None:
        """Certificates, SuperNode key pairs and the flwr connection (no processes yet)."""
        for folder in (self.flwr_home, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        write_certificates(self.certs)
        write_auth_keys(self.auth, self.num_nodes)
        write_connection(
            self.connection, self.control_address, self.certs / "ca.pem", default=True, home=self.flwr_home
        )

    def _spawn(self, name: str, script: str, extra_env: dict[str, str]) -> Managed:
        log = self.logs / f"{name}.log"
        handle = log.open("a")
        try:
            process = subprocess.Popen(
                ["bash", str(SCRIPTS / script)],
                env={**self.env, **extra_env},
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                start_new_session=True,  # Ctrl-C in a terminal reaches the test, not the federation
            )
        finally:
            handle.close()
        return Managed(name, process, log)

    def _wait_up(self, managed: Managed, address: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                probe_superlink(address, self.certs / "ca.pem", timeout_s=2.0)
                return
            except ConnectionSetupError as err:
                if managed.process.poll() is not None or time.monotonic() > deadline:
                    raise FederationError(
                        f"{managed.name} did not come up ({err}); log:\n{_tail(managed.log)}"
                    ) from err
            time.sleep(0.5)

    def start_superlink(self, wait_s: float = 60.0) -> None:
        """The SuperLink on 127.0.0.1 (start_superlink.sh's default host), then the gateway in front of it."""
        self.superlink = self._spawn(
            "superlink",
            "start_superlink.sh",
            {"CERT_DIR": str(self.certs), "HOST": "127.0.0.1", "PORT": str(self.port)},
        )
        self._wait_up(self.superlink, self.control_address, wait_s)
        self.gateway = self._spawn(
            "gateway",
            "start_gateway.sh",
            {"CERT_DIR": str(self.certs), "LISTEN": self.address, "UPSTREAM": self.control_address},
        )
        self._wait_up(self.gateway, self.address, wait_s)

    def create_node_keys(self) -> None:
        """What each data owner does on its own host: its VisualMixer key in its folder (kept if it exists)."""
        for i in range(self.num_nodes):
            create_key_file(self.data_dir / f"client-{i}" / KEY_FILE)

    def register(self, nodes: list[int] | None = None) -> None:
        keys = [str(self.auth / f"supernode-{i}.pub") for i in (range(self.num_nodes) if nodes is None else nodes)]
        done = subprocess.run(
            ["bash", str(SCRIPTS / "register_supernodes.sh"), self.connection, *keys],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise FederationError(f"registering SuperNodes failed: {done.stderr or done.stdout}")

    def start_supernode(self, i: int, extra_env: dict[str, str] | None = None) -> Managed:
        """SuperNode i through the gateway; ``extra_env`` adds start_supernode.sh settings (TRUSTED_ENTITIES=...)."""
        managed = self._spawn(
            f"supernode-{i}",
            "start_supernode.sh",
            {
                "SUPERLINK": self.address,
                "CA_CERT": str(self.certs / "ca.pem"),
                "AUTH_KEY": str(self.auth / f"supernode-{i}"),
                "DATA_PATH": str(self.data_dir / f"client-{i}"),
                "CLIENTAPPIO_PORT": str(self.clientappio_ports[i]),
                **(extra_env or {}),
            },
        )
        self.supernodes[i] = managed
        return managed

    def wait_online(self, count: int | None = None, wait_s: float = 90.0) -> None:
        flwr = str(Path(self.python).with_name("flwr"))
        try:
            wait_for_supernodes(flwr, self.connection, self.num_nodes if count is None else count, wait_s, self.env)
        except ConnectionSetupError as err:
            logs = "\n".join(f"--- {m.name}:\n{_tail(m.log, 12)}" for m in self.supernodes.values())
            raise FederationError(f"{err}\n{logs}") from err

    def start(self, wait_s: float = 90.0) -> None:
        """Everything, in the order of the README: prepare, SuperLink + gateway, register, owners' keys, SuperNodes."""
        self.prepare()
        self.start_superlink()
        self.register()
        self.create_node_keys()
        for i in range(self.num_nodes):
            self.start_supernode(i)
        self.wait_online(wait_s=wait_s)

    # ------------------------------------------------------------------------------------- stop
    def _ours(self, pid: int) -> bool:
        """Alive and started with this federation's FLWR_HOME (so a reused PID is never signalled)."""
        try:
            return alive(pid) and f"FLWR_HOME={self.flwr_home}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False

    def _tree(self, managed: Managed) -> list[int]:
        managed.seen.update([managed.process.pid, *descendants(managed.process.pid)])
        return [p for p in sorted(managed.seen) if self._ours(p)]

    def _stop(self, managed: Managed, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
        pids = self._tree(managed)
        if sig == signal.SIGKILL:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            stop_processes(pids, grace_s=grace_s)
        try:
            managed.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            managed.process.kill()
            managed.process.wait(timeout=grace_s)
        self.stopped.append(managed)

    def stop_supernode(self, i: int) -> None:
        """Stop SuperNode i and its processes with SIGTERM, as its owner would."""
        self._stop(self.supernodes.pop(i))

    def kill_supernode(self, i: int) -> None:
        """SIGKILL SuperNode i with all its processes, as if its machine died."""
        self._stop(self.supernodes.pop(i), signal.SIGKILL)

    def stop(self) -> None:
        """Stop every process this federation started (SuperNodes, gateway, SuperLink), then any stray one by PID."""
        for i in list(self.supernodes):
            self._stop(self.supernodes.pop(i))
        if self.gateway is not None:
            self._stop(self.gateway)
            self.gateway = None
        if self.superlink is not None:
            self._stop(self.superlink)
            self.superlink = None
        stray = self.leftover_pids()
        if stray:
            stop_processes(stray)

    def leftover_pids(self) -> list[int]:
        """Live processes started for this federation (they all run with its FLWR_HOME)."""
        return sorted(
            int(e.name)
            for e in Path("/proc").iterdir()
            if e.name.isdigit() and int(e.name) != os.getpid() and self._ours(int(e.name))
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
