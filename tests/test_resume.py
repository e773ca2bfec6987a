"""Checkpoint and resume end to end: a run extended, killed and resumed ends with the metrics of an
uninterrupted run; FedAvgM's momentum and DP-SGD's epsilon continue across resumes (real Flower
simulations, real data)."""

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

from conftest import FLOWER_RUNS, require_shared

pytestmark = [pytest.mark.integration, pytest.mark.slow, FLOWER_RUNS, pytest.mark.timeout(1800)]
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


def kill_after_round(args: list[str], out: Path, rounds: int, env: dict[str, str], flwr_home: Path) -> None:
    """Start ``python -m fl_vmix args`` and SIGKILL every process of it (as when a machine goes down) once
    ``out/metrics.csv`` has ``rounds`` rows."""
    doomed = {**env, "FLWR_HOME": str(flwr_home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "fl_vmix", *args], env=doomed,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "metrics.csv").exists() and len(rows(out / "metrics.csv")) >= rounds:
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


def test_an_extended_killed_and_resumed_run_ends_as_an_uninterrupted_run(env, tmp_path):
    """One uninterrupted 5-round run against a run of 2 rounds, extended to 5 with resume=, killed after
    round 3 and resumed again with a bare resume=: the same metrics every round, the same client rows and
    the same final weights. FedAvgM's server momentum and DP-SGD's accountant are state that a resume must
    carry: losing either gives other weights or a smaller epsilon. Clients augment every round: a resumed round
    must draw the augmentation an uninterrupted one draws. (Each Flower launch costs about a
    minute, so one run covers extending, killing and resuming.)"""
    settings = [*SMALL, "strategy=fedavgm", "privacy=dp_sgd", "dataset.augment=crop_flip", "reproducible_noise=true"]
    # reproducible_noise: else DP-SGD draws fresh secret noise in each run
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    fl_vmix([*settings, "num_rounds=5", f"output_dir={uninterrupted}"], env)
    fl_vmix([*settings, "num_rounds=2", f"output_dir={resumed}"], env)
    refused = subprocess.run(
        [sys.executable, "-m", "fl_vmix", f"resume={resumed}", "optimizer.lr=0.5", "num_rounds=5"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2 and "cannot change a run that continues" in refused.stdout + refused.stderr
    kill_after_round([f"resume={resumed}", "num_rounds=5"], resumed, 3, env, tmp_path / "doomed_flwr_home")
    assert (resumed / "checkpoint.pt").exists() and not (resumed / "summary.json").exists()
    done = fl_vmix([f"resume={resumed}"], env)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 5, done.stdout[-2000:]
    # The kill can land between round 3's metrics and its checkpoint: that attempt then leaves no resume point
    # and the last one continues from round 2 again (seen in CI), otherwise from round 3.
    assert summary["config"]["num_rounds"] == 5 and summary["resumed_at_rounds"] in ([2], [2, 3])
    assert summary["keys"] == "derived from the public seed (not secret)"
    assert_same_run(uninterrupted, resumed)
    epsilons = [float(r["epsilon"]) for r in rows(resumed / "metrics.csv")]
    assert epsilons == sorted(set(epsilons)) and len(epsilons) == 5, f"epsilon accumulates: {epsilons}"
    states = sorted((resumed / "client_state" / summary["run_uid"]).glob("partition-*.json"))
    assert [json.loads(p.read_text()).keys() for p in states] == [{"1", "2", "3", "4", "5"}] * 2, "each round's history"
    assert not (tmp_path / "outputs").exists() and not list(resumed.glob(".hydra")), "no second Hydra folder"
