"""Launch an experiment through ``flwr run`` and stop every process it started.

``flwr run`` starts a managed local SuperLink for simulations and leaves it running; no flwr command
stops it. Each launch therefore gives the SuperLink its own free ports and, when the run ends (or
fails, or times out), stops that SuperLink's whole process group by PID, Ray workers included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fl_vmix.apps.config import experiment_to_run_config

PROJECT_DIR = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Without this flwr reinstalls the app's dependencies from the network for every run.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "RAY_DEDUP_LOGS": "0",
}


@dataclass
class LaunchResult:
    returncode: int
    output_dir: Path
    summary: dict[str, Any] | None
    log_file: Path
    timed_out: bool
    interrupted: bool = False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flwr_executable() -> str:
    candidate = Path(sys.executable).with_name("flwr")
    return str(candidate) if candidate.exists() else "flwr"


def _pids_with_cmdline(fragment: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def stop_processes(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
            time.sleep(0.1)
        if not alive:
            return


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def stop_local_superlink(control_port: int) -> list[int]:
    """Stop the managed SuperLink bound to ``control_port`` and everything it spawned."""
    roots = _pids_with_cmdline(f"--control-api-address 127.0.0.1:{control_port}")
    pids = sorted({p for root in roots for p in [root, *_descendants(root)]})
    stop_processes(pids)
    return pids


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _finish_remote_run(engine: dict[str, Any], output_dir: Path, log_file: Path, env: dict[str, str]) -> bool:
    """No summary.json here after a deployment run: True if the run completed on the SuperLink.

    The ServerApp writes its outputs on the SuperLink host; on another machine they are not here.
    A run that did not complete (failed, timed out, interrupted) is stopped on the SuperLink, where it
    would otherwise keep its ServerApp waiting.
    """
    from fl_vmix.deploy.federation import run_id_in, run_status, stop_run

    run_id = run_id_in(log_file.read_text(errors="replace"))
    if run_id is None:
        return False
    flwr, connection = flwr_executable(), str(engine["connection"])
    status = run_status(flwr, run_id, connection, env)
    if status == "finished:completed":
        message = f"run {run_id} completed on the SuperLink; its outputs are in {output_dir} on the SuperLink host"
    elif status is not None and status.startswith("finished"):
        message = f"run {run_id} ended as {status!r} on the SuperLink (the ServerApp's log is above)"
    else:
        stopped = stop_run(flwr, run_id, connection, env)
        message = f"run {run_id} ended as {status!r}; {'stopped it' if stopped else 'could not stop it'} on the SuperLink"
    with log_file.open("a") as log:
        log.write(f"fl_vmix launcher: {message}\n")
    print(f"fl_vmix: {message}", file=sys.stderr)
    return status == "finished:completed"


def launch(
    cfg: dict[str, Any],
    output_dir: Path,
    on_progress: Callable[[list[dict[str, Any]]], None] | None = None,
    poll_s: float = 1.0,
) -> LaunchResult:
    """Run ``cfg`` with ``flwr run`` (simulation or deployment) and wait for it, showing progress."""
    output_dir.mkdir(parents=True, exist_ok=True)
    run_config_file = output_dir / "run_config.toml"
    run_config_file.write_text(tomli_w.dumps(experiment_to_run_config({**cfg, "output_dir": str(output_dir)})))
    env = {**os.environ}
    # flwr spawns flower-superlink and flwr-simulation by name: find the ones of this environment.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    engine = cfg["engine"]
    command = [flwr_executable(), "run", str(PROJECT_DIR)]
    control_port = None
    if engine["name"] == "simulation":
        control_port = free_port()
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
        command += [
            "--federation-config",
            f"num-supernodes={int(cfg['num_clients'])} client-resources-num-cpus={int(engine.get('num_cpus_per_client', 1))}",
        ]
    else:
        command.insert(3, str(engine["connection"]))
    command += ["--run-config", str(run_config_file), "--stream"]
    log_file = output_dir / "flwr.log"
    log_file.write_text("")
    remote_completed = False
    if engine["name"] != "simulation":
        # A SuperLink that is down, untrusted or short of SuperNodes makes `flwr run` retry or the
        # ServerApp wait forever: check first and fail within seconds, with the fix in the log.
        from fl_vmix.deploy.federation import preflight

        try:
            log_file.write_text(preflight(flwr_executable(), engine, int(cfg["num_clients"]), env) + "\n")
        except ValueError as err:
            log_file.write_text(f"deployment preflight failed: {err}\n")
            return LaunchResult(1, output_dir, None, log_file, False)
    timed_out = interrupted = False
    deadline = time.monotonic() + float(engine.get("timeout_s", 3600))
    with log_file.open("a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(PROJECT_DIR), start_new_session=True)
        try:
            while process.poll() is None:
                if on_progress is not None:
                    on_progress(read_json(output_dir / "metrics.json") or [])
                if (output_dir / "summary.json").exists():
                    # The ServerApp is done; `flwr run --stream` can lag behind by its log poll interval.
                    try:
                        process.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        pass
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            interrupted = True  # Ctrl-C: stop the run's processes below, keep what was recorded
        finally:
            if process.poll() is None:
                stop_processes([process.pid, *_descendants(process.pid)])
            if control_port is not None:
                stop_local_superlink(control_port)
            elif not (output_dir / "summary.json").exists():
                remote_completed = _finish_remote_run(engine, output_dir, log_file, env)
    if on_progress is not None:
        on_progress(read_json(output_dir / "metrics.json") or [])
    summary = read_json(output_dir / "summary.json")
    ok = ((summary is not None and summary.get("status") == "completed") or remote_completed) and not timed_out
    if interrupted:
        return LaunchResult(130, output_dir, summary, log_file, timed_out, interrupted=True)
    return LaunchResult(0 if ok else 1, output_dir, summary, log_file, timed_out)
