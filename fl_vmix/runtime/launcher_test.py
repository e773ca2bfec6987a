"""The launcher without Flower: the command it assembles, and how it ends runs that finish, hang or are
interrupted (a stand-in ``flwr`` executable plays the run; every process it starts must be gone after)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fl_vmix.experiment import compose, experiment_from_run_config
from fl_vmix.runtime.flower_app import COMPONENTS, checkout_dir, generated_app_dir
from fl_vmix.runtime.launcher import OFFLINE_ENV, launch, plan_launch
from fl_vmix.runtime.processes import alive

FAKE_FLWR = """#!{python}
# Stands in for `flwr run`: records its arguments, then completes, or hangs with a child process.
import json, os, subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
out = Path(args[args.index("--run-config") + 1]).parent
(out / "args.json").write_text(json.dumps(args))
if os.environ.get("FAKE_SUPERLINK"):
    # As `flwr run` does for a simulation: a managed SuperLink on the control port it was given, in a session of
    # its own, with a worker below it; it outlives this process (no descendant of it once this one exits).
    port = os.environ["FLWR_LOCAL_CONTROL_API_PORT"]
    code = ("import json, subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(600)']); print(json.dumps(w.pid), flush=True); time.sleep(600)")
    link = subprocess.Popen([sys.executable, "-c", code, "--control-api-address", f"127.0.0.1:{{port}}"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = json.loads(link.stdout.readline())
    (out / "superlink.json").write_text(json.dumps([link.pid, worker]))
if os.environ["FAKE_FLWR"] == "complete":
    (out / "metrics.json").write_text(json.dumps([{{"round": 1, "evaluate": {{"accuracy": 0.5}}}}]))
    (out / "summary.json").write_text(json.dumps({{"status": "completed"}}))
else:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (out / "pids.json").write_text(json.dumps([os.getpid(), child.pid]))
    time.sleep(600)
"""


@pytest.fixture()
def fake_flwr(tmp_path: Path) -> str:
    path = tmp_path / "flwr"
    path.write_text(FAKE_FLWR.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def test_a_simulation_is_launched_with_its_own_ports_and_the_experiment(tmp_path):
    experiment = compose(["num_clients=4", "num_rounds=2"])
    plan = plan_launch(experiment, tmp_path / "out", flwr="flwr", app_dir=tmp_path)
    run_config = plan.command[plan.command.index("--run-config") + 1]
    federation = ["--federation-config", "num-supernodes=4 client-resources-num-cpus=1 client-resources-num-gpus=0.0"]
    assert plan.command == ["flwr", "run", str(tmp_path), *federation, "--run-config", run_config, "--stream"]
    sent = experiment_from_run_config(tomllib.loads(Path(run_config).read_text()))
    assert sent == experiment.replace(output_dir=str(tmp_path / "out"))
    assert plan.control_port is not None and plan.env["FLWR_LOCAL_CONTROL_API_PORT"] == str(plan.control_port)
    assert plan.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] != str(plan.control_port)
    assert all(plan.env[k] for k in OFFLINE_ENV) and plan.log_file == tmp_path / "out" / "flwr.log"


def test_a_deployment_is_launched_against_its_connection(tmp_path):
    experiment = compose(["engine=deployment", "engine.connection=lab"])
    plan = plan_launch(experiment, tmp_path, flwr="flwr", app_dir=tmp_path)
    assert plan.command[:4] == ["flwr", "run", str(tmp_path), "lab"] and plan.control_port is None
    assert "--federation-config" not in plan.command


def test_a_completed_run_reports_its_summary_and_progress(tmp_path, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR", "complete")
    seen: list[list[dict]] = []
    result = launch(compose(), tmp_path / "out", on_progress=seen.append, poll_s=0.05, flwr=fake_flwr, app_dir=tmp_path)
    assert result.returncode == 0 and not result.timed_out and result.summary == {"status": "completed"}
    assert seen[-1] == [{"round": 1, "evaluate": {"accuracy": 0.5}}]
    assert json.loads((tmp_path / "out" / "args.json").read_text())[:2] == ["run", str(tmp_path)]


def _gone(pids: list[int], wait_s: float = 10.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_a_hanging_run_is_stopped_at_its_timeout_with_its_children(tmp_path, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR", "hang")
    out = tmp_path / "out"
    start = time.monotonic()
    result = launch(compose(["engine.timeout_s=3"]), out, poll_s=0.1, flwr=fake_flwr, app_dir=tmp_path)
    assert result.timed_out and result.returncode == 1 and time.monotonic() - start < 60
    pids = json.loads((out / "pids.json").read_text())
    assert _gone(pids), f"processes left running: {[p for p in pids if alive(p)]}"


def test_an_interrupted_run_stops_its_processes_and_exits_130(tmp_path, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR", "hang")
    out = tmp_path / "out"

    pressed: list[bool] = []

    def interrupt(records: list[dict]) -> None:
        if (out / "pids.json").exists() and not pressed:
            pressed.append(True)
            raise KeyboardInterrupt  # what Ctrl-C raises in the launcher's loop

    result = launch(compose(), out, on_progress=interrupt, poll_s=0.1, flwr=fake_flwr, app_dir=tmp_path)
    assert result.interrupted and result.returncode == 130
    assert _gone(json.loads((out / "pids.json").read_text()))


def test_the_flower_app_folder_passes_flowers_own_validation(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    assert checkout_dir() == Path(__file__).resolve().parents[2], "in a checkout the repository is the app"
    folder = generated_app_dir(tmp_path)
    config, _ = load_and_validate(folder / "pyproject.toml", check_module=True)
    assert config["tool"]["flwr"]["app"]["components"] == COMPONENTS
    assert generated_app_dir(tmp_path) == folder and sorted(p.name for p in folder.iterdir()) == ["pyproject.toml"]


def test_a_gpu_share_reaches_flowers_client_resources_and_no_timeout_is_the_default(tmp_path):
    experiment = compose(["engine.num_gpus_per_client=0.5", "engine.num_cpus_per_client=2"])
    plan = plan_launch(experiment, tmp_path / "out", flwr="flwr", app_dir=tmp_path)
    federation = plan.command[plan.command.index("--federation-config") + 1]
    assert federation.split()[1:] == ["client-resources-num-cpus=2", "client-resources-num-gpus=0.5"]
    assert experiment.engine.timeout_s is None, "no run is stopped after a fixed time unless asked"


def test_a_resumed_run_appends_to_its_log_and_waits_for_its_own_summary(tmp_path, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR", "complete")
    out = tmp_path / "out"
    out.mkdir()
    (out / "flwr.log").write_text("first attempt\n")
    (out / "summary.json").write_text(json.dumps({"status": "interrupted"}))  # left by the stopped attempt
    experiment = compose([f"resume={out}", f"output_dir={out}"])
    result = launch(experiment, out, poll_s=0.05, flwr=fake_flwr, app_dir=tmp_path)
    assert result.returncode == 0 and result.summary == {"status": "completed"}
    assert (out / "flwr.log").read_text().startswith("first attempt\n")


def test_the_managed_superlink_and_its_workers_are_stopped_after_the_run(tmp_path, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR", "complete")
    monkeypatch.setenv("FAKE_SUPERLINK", "1")
    out = tmp_path / "out"
    try:
        result = launch(compose(), out, poll_s=0.05, flwr=fake_flwr, app_dir=tmp_path)
        pids = json.loads((out / "superlink.json").read_text())
        assert result.returncode == 0
        assert _gone(pids), f"SuperLink processes left running: {[p for p in pids if alive(p)]}"
    finally:
        for pid in json.loads((out / "superlink.json").read_text()) if (out / "superlink.json").exists() else []:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
