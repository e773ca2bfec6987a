"""Checkpoint and resume end to end: a killed run, resumed, ends with the metrics of an uninterrupted run;
FedAvgM's momentum and DP-SGD's epsilon continue across a resume (real Flower simulations, real data)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import require_shared

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
SMALL = ["num_clients=2", "dataset.data_fraction=0.02"]
TIMING = {"round_time_s", "obfuscation_s", "train_time_s"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    archive = require_shared("cifar10-jpg.tar.xz")
    base = tmp_path_factory.mktemp("resume")
    return {
        **os.environ,
        "FL_VMIX_DATA": str(archive.parent),
        "FL_VMIX_CACHE": str(base / "cache"),
        "FLWR_HOME": str(base / "flwr_home"),
    }


def fl_vmix(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "fl_vmix", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def assert_same_run(first: Path, second: Path) -> None:
    """The same metrics every round (timings aside), the same client rows and the same final weights."""
    assert rows(first / "metrics.csv") == rows(second / "metrics.csv")
    assert rows(first / "clients.csv") == rows(second / "clients.csv")
    a = torch.load(first / "model.pt", weights_only=True)
    b = torch.load(second / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the final weights differ"


def processes_of(flwr_home: str) -> list[int]:
    """Every process started with this FLWR_HOME: the launcher, flwr, the SuperLink, the simulation, Ray."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"FLWR_HOME={flwr_home}".encode() in environ:
                found.append(int(entry.name))
    return found


def test_a_killed_run_resumed_ends_as_an_uninterrupted_run(env, tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    fl_vmix([*SMALL, "num_rounds=4", f"output_dir={uninterrupted}"], env)
    # The same run, killed with SIGKILL (every process of it, as when a machine goes down) after round 2.
    doomed = {**env, "FLWR_HOME": str(tmp_path / "doomed_flwr_home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "fl_vmix", *SMALL, "num_rounds=4", f"output_dir={killed}"],
        env=doomed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if (killed / "metrics.csv").exists() and len(rows(killed / "metrics.csv")) >= 2:
                break
            time.sleep(0.5)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        for pid in processes_of(doomed["FLWR_HOME"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=60)
    time.sleep(2)
    assert not processes_of(doomed["FLWR_HOME"])
    assert (killed / "checkpoint.pt").exists() and not (killed / "summary.json").exists()
    done = fl_vmix([f"resume={killed}"], env)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 4, done.stdout[-2000:]
    assert len(summary["resumed_at_rounds"]) == 1 and 1 <= summary["resumed_at_rounds"][0] <= 3
    assert summary["keys"] == "derived from the public seed (not secret)"
    assert_same_run(uninterrupted, killed)
    assert not (tmp_path / "outputs").exists() and not list(killed.glob(".hydra")), "no second Hydra folder"


def test_resume_keeps_fedavgm_momentum_and_dp_sgd_epsilon(env, tmp_path):
    settings = [*SMALL, "strategy=fedavgm", "privacy=dp_sgd"]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    fl_vmix([*settings, "num_rounds=3", f"output_dir={uninterrupted}"], env)
    fl_vmix([*settings, "num_rounds=2", f"output_dir={resumed}"], env)
    refused = subprocess.run(
        [sys.executable, "-m", "fl_vmix", f"resume={resumed}", "optimizer.lr=0.5", "num_rounds=3"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2 and "cannot change a run that continues" in refused.stdout + refused.stderr
    fl_vmix([f"resume={resumed}", "num_rounds=3"], env)
    assert_same_run(uninterrupted, resumed)  # FedAvgM's momentum: any other state gives other weights
    epsilons = [float(r["epsilon"]) for r in rows(resumed / "metrics.csv")]
    assert epsilons[0] < epsilons[1] < epsilons[2], f"epsilon accumulates across the resume: {epsilons}"
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_at_rounds"] == [2] and summary["config"]["num_rounds"] == 3
    states = sorted((resumed / "client_state" / summary["run_uid"]).glob("partition-*.json"))
    assert [json.loads(p.read_text()).keys() for p in states] == [{"1", "2", "3"}] * 2, "each round's history"
