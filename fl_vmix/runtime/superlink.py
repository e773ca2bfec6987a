"""What the launching machine asks a SuperLink before and after ``flwr run`` (Deployment Engine).

``flwr run`` against a SuperLink that is down, untrusted or short of SuperNodes does not fail: it
retries, or the ServerApp waits for ``min_available_nodes`` forever. ``preflight`` turns each of
these into a message within seconds: the connection is missing, the SuperLink does not answer or
its certificate is rejected, or fewer than ``num_clients`` SuperNodes are online (with the states
Flower reports for the registered ones, so an unregistered or crashed SuperNode is visible).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fl_vmix.experiment import EngineSettings
from fl_vmix.runtime.connection import ConnectionSetupError, probe_superlink, read_connection

RUN_ID_PATTERN = re.compile(r"Successfully started run (\d+)")


def _flwr_json(flwr: str, args: list[str], env: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [flwr, *args, "--format", "json"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ConnectionSetupError(
            f"`flwr {' '.join(args)}` did not answer within {timeout_s:.0f} s: check the SuperLink"
        ) from err
    start = done.stdout.find("{")
    try:
        payload = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        payload = {}
    if done.returncode != 0 or not payload.get("success", False):
        detail = payload.get("error-message") or (done.stderr or done.stdout).strip()[-500:]
        raise ConnectionSetupError(f"`flwr {' '.join(args)}` failed: {detail}")
    return payload


def list_supernodes(
    flwr: str, connection: str, env: Mapping[str, str], timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The SuperNodes the SuperLink knows (``flwr supernode list --format json``): id and status."""
    return list(_flwr_json(flwr, ["supernode", "list", connection], env, timeout_s).get("nodes", []))


def wait_for_supernodes(
    flwr: str, connection: str, needed: int, wait_s: float, env: Mapping[str, str], poll_s: float = 2.0
) -> list[dict[str, Any]]:
    """Return once ``needed`` SuperNodes are online; ConnectionSetupError after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = list_supernodes(flwr, connection, env)
        online = [n for n in nodes if n.get("status") == "online"]
        if len(online) >= needed:
            return online
        if time.monotonic() >= deadline:
            states = ", ".join(f"{n.get('node-id')}: {n.get('status')}" for n in nodes) or "none"
            raise ConnectionSetupError(
                f"only {len(online)} of the {needed} SuperNodes this experiment needs (num_clients) are online after "
                f"{wait_s:.0f} s (SuperNodes known to the SuperLink: {states}). Start the missing ones with "
                "scripts/deploy/start_supernode.sh and register their public keys with "
                "scripts/deploy/register_supernodes.sh "
                "(an unregistered SuperNode exits with 'Exit Code: 305 ... Failed to activate SuperNode'; a wrong CA "
                "certificate keeps it retrying: check its log), or lower num_clients"
            )
        time.sleep(poll_s)


def preflight(flwr: str, engine: EngineSettings, num_clients: int, env: Mapping[str, str]) -> str:
    """Check the connection, the SuperLink and its SuperNodes; return a one-line status or raise."""
    if engine.connection is None or engine.connect_timeout_s is None or engine.wait_nodes_s is None:
        raise ConnectionSetupError(f"engine {engine.name!r} has no SuperLink to check: use engine=deployment")
    name = engine.connection
    home = env.get("FLWR_HOME")
    entry = read_connection(name, Path(home).expanduser() if home else None)
    address = str(entry["address"])
    insecure = bool(entry.get("insecure", False))
    latency = probe_superlink(address, entry.get("root-certificates"), insecure, timeout_s=engine.connect_timeout_s)
    online = wait_for_supernodes(flwr, name, num_clients, engine.wait_nodes_s, env)
    return f"SuperLink {address} answered in {latency * 1000:.0f} ms; {len(online)} SuperNode(s) online"


def run_id_in(log_text: str) -> int | None:
    match = RUN_ID_PATTERN.search(log_text)
    return int(match.group(1)) if match else None


def stop_run(flwr: str, run_id: int, connection: str, env: Mapping[str, str], timeout_s: float = 30.0) -> bool:
    """Ask the SuperLink to stop a run (so a timed-out run does not keep its ServerApp busy there)."""
    try:
        done = subprocess.run(
            [flwr, "stop", str(run_id), connection],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def run_status(flwr: str, run_id: int, connection: str, env: Mapping[str, str]) -> str | None:
    """``finished:completed``, ``running``, ... as ``flwr ls`` reports it; None if it cannot be read."""
    try:
        runs = _flwr_json(flwr, ["ls", connection, "--run-id", str(run_id)], env, 30.0).get("runs", [])
    except ConnectionSetupError:
        return None
    return str(runs[0].get("status")) if runs else None
