"""Launch an experiment through ``flwr run`` and stop every process it started.

``flwr run`` starts a managed local SuperLink for simulations and leaves it running; no flwr command
stops it. Each launch therefore gives the SuperLink its own free ports and, when the run ends (or
fails, or times out, or is interrupted), stops that SuperLink's whole process tree by PID, Ray
workers included. On the Deployment Engine the SuperLink is checked first (:func:`preflight`) and a
run that did not complete is stopped there. A resumed run (``resume``) continues in its folder: its
log is appended to, and the summary of the attempt that stopped is removed first (the launcher waits
for a new one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fl_vmix.experiment import Experiment, to_run_config
from fl_vmix.recording import read_json
from fl_vmix.runtime.flower_app import flower_app_dir
from fl_vmix.runtime.processes import descendants, free_port, stop_local_superlink, stop_processes
from fl_vmix.runtime.superlink import preflight, run_id_in, run_status, stop_run

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Without this flwr reinstalls the app's dependencies from the network for every run.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "RAY_DEDUP_LOGS": "0",
}
STREAM_LAG_S = 15.0  # `flwr run --stream` may lag the ServerApp's end by its log poll interval


@dataclass(frozen=True)
class LaunchResult:
    returncode: int  # 0 completed, 1 failed or timed out, 130 interrupted
    output_dir: Path
    summary: dict[str, Any] | None
    log_file: Path
    timed_out: bool
    interrupted: bool = False


@dataclass(frozen=True)
class LaunchPlan:
    """What :func:`launch` runs: the ``flwr run`` command, its environment and where it logs."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_file: Path
    control_port: int | None  # the managed local SuperLink's control port (simulation only)


def flwr_executable() -> str:
    candidate = Path(sys.executable).with_name("flwr")
    return str(candidate) if candidate.exists() else "flwr"


def plan_launch(
    experiment: Experiment, output_dir: Path, flwr: str | None = None, app_dir: Path | None = None
) -> LaunchPlan:
    """Write the run config into ``output_dir`` and assemble the ``flwr run`` command for ``experiment``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    run_config_file = output_dir / "run_config.toml"
    run_config_file.write_text(tomli_w.dumps(to_run_config(experiment.replace(output_dir=str(output_dir)))))
    env = {**os.environ}
    # flwr spawns flower-superlink and flwr-simulation by name: find the ones of this environment.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    app = app_dir or flower_app_dir()
    engine = experiment.engine
    command = [flwr or flwr_executable(), "run", str(app)]
    control_port = None
    if engine.name == "simulation":
        control_port = free_port()
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
        federation = (
            f"num-supernodes={experiment.num_clients} client-resources-num-cpus={engine.num_cpus_per_client} "
            f"client-resources-num-gpus={engine.num_gpus_per_client}"
        )
        command += ["--federation-config", federation]
    else:
        command.append(str(engine.connection))
    command += ["--run-config", str(run_config_file), "--stream"]
    return LaunchPlan(command, env, app, output_dir / "flwr.log", control_port)


def _finish_remote_run(
    experiment: Experiment, output_dir: Path, log_file: Path, env: dict[str, str], flwr: str
) -> bool:
    """No summary.json here after a deployment run: True if the run completed on the SuperLink.

    The ServerApp writes its outputs on the SuperLink host; on another machine they are not here.
    A run that did not complete (failed, timed out, interrupted) is stopped on the SuperLink, where it
    would otherwise keep its ServerApp waiting.
    """
    run_id = run_id_in(log_file.read_text(errors="replace"))
    if run_id is None:
        return False
    connection = str(experiment.engine.connection)
    status = run_status(flwr, run_id, connection, env)
    if status == "finished:completed":
        message = f"run {run_id} completed on the SuperLink; its outputs are in {output_dir} on the SuperLink host"
    elif status is not None and status.startswith("finished"):
        message = f"run {run_id} ended as {status!r} on the SuperLink (the ServerApp's log is above)"
    else:
        stopped = stop_run(flwr, run_id, connection, env)
        message = (
            f"run {run_id} ended as {status!r}; {'stopped it' if stopped else 'could not stop it'} on the SuperLink"
        )
    with log_file.open("a") as log:
        log.write(f"fl_vmix launcher: {message}\n")
    print(f"fl_vmix: {message}", file=sys.stderr)
    return status == "finished:completed"


def launch(
    experiment: Experiment,
    output_dir: Path,
    on_progress: Callable[[list[dict[str, Any]]], None] | None = None,
    poll_s: float = 1.0,
    flwr: str | None = None,
    app_dir: Path | None = None,
) -> LaunchResult:
    """Run ``experiment`` with ``flwr run`` (simulation or deployment) and wait for it, showing progress."""
    flwr = flwr or flwr_executable()
    plan = plan_launch(experiment, output_dir, flwr, app_dir)
    log_file = plan.log_file
    if experiment.resume:
        (output_dir / "summary.json").unlink(missing_ok=True)  # the stopped attempt's: wait for this one's
        with log_file.open("a") as log:
            log.write(f"\n===== fl_vmix: resuming this run ({time.strftime('%Y-%m-%d %H:%M:%S')}) =====\n")
    else:
        log_file.write_text("")
    remote_completed = False
    if experiment.engine.name != "simulation":
        # A SuperLink that is down, untrusted or short of SuperNodes makes `flwr run` retry or the
        # ServerApp wait forever: check first and fail within seconds, with the fix in the log.
        try:
            status = preflight(flwr, experiment.engine, experiment.num_clients, plan.env)
        except ValueError as err:
            with log_file.open("a") as log:
                log.write(f"deployment preflight failed: {err}\n")
            return LaunchResult(1, output_dir, None, log_file, False)
        with log_file.open("a") as log:
            log.write(status + "\n")
    timed_out = interrupted = False
    timeout_s = experiment.engine.timeout_s
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    with log_file.open("a") as log:
        process = subprocess.Popen(
            plan.command, stdout=log, stderr=subprocess.STDOUT, env=plan.env, cwd=str(plan.cwd), start_new_session=True
        )
        try:
            while process.poll() is None:
                if on_progress is not None:
                    on_progress(read_json(output_dir / "metrics.json") or [])
                if (output_dir / "summary.json").exists():
                    try:
                        process.wait(timeout=STREAM_LAG_S)
                    except subprocess.TimeoutExpired:
                        pass
                    break
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            interrupted = True  # Ctrl-C: stop the run's processes below, keep what was recorded
        finally:
            if process.poll() is None:
                stop_processes([process.pid, *descendants(process.pid)])
            if plan.control_port is not None:
                stop_local_superlink(plan.control_port)
            elif not (output_dir / "summary.json").exists():
                remote_completed = _finish_remote_run(experiment, output_dir, log_file, plan.env, flwr)
    if on_progress is not None:
        on_progress(read_json(output_dir / "metrics.json") or [])
    summary = read_json(output_dir / "summary.json")
    ok = ((summary is not None and summary.get("status") == "completed") or remote_completed) and not timed_out
    if interrupted:
        return LaunchResult(130, output_dir, summary, log_file, timed_out, interrupted=True)
    return LaunchResult(0 if ok else 1, output_dir, summary, log_file, timed_out)
