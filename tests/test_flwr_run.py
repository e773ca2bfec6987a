"""`flwr run .`, Flower's own launcher, on the conf/ defaults: it completes on Flower's default federation."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import FLOWER_RUNS, require_shared
from fl_vmix.runtime.launcher import OFFLINE_ENV, flwr_executable
from fl_vmix.runtime.processes import descendants, free_port, pids_with_cmdline, stop_local_superlink

pytestmark = [pytest.mark.integration, pytest.mark.slow, FLOWER_RUNS, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]


def test_flwr_run_stream_on_a_tiny_config_completes(tmp_path):
    archive = require_shared("cifar10-jpg.tar.xz")
    control_port = free_port()
    out = tmp_path / "run"
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "FLWR_HOME": str(tmp_path / "flwr_home"),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FL_VMIX_DATA": str(archive.parent),
        "FL_VMIX_CACHE": str(tmp_path / "cache"),
        "PATH": os.pathsep.join([str(Path(flwr_executable()).parent), os.environ.get("PATH", "")]),
    }
    # The README's command, with a tiny experiment given as Hydra overrides in Flower's run config.
    overrides = f"overrides='num_rounds=1 dataset.data_fraction=0.02 output_dir={out}'"
    try:
        done = subprocess.run(
            [flwr_executable(), "run", ".", "--stream", "--run-config", overrides],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        stopped = stop_local_superlink(control_port)  # flwr leaves its managed SuperLink running
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 1
    # Flower's default local federation has 2 SuperNodes; conf/ asks for 5: the ServerApp adapts and says so.
    assert summary["config"]["num_clients"] == 2
    assert "the federation has 2 node(s) but the experiment asks for num_clients=5" in log
    assert stopped and not any(
        p for root in pids_with_cmdline(f"127.0.0.1:{control_port}") for p in [root, *descendants(root)]
    )
