"""End-to-end federated runs on the real CIFAR-10 data, through the command a user types."""

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

pytestmark = [pytest.mark.integration, pytest.mark.slow, FLOWER_RUNS, pytest.mark.timeout(900)]
SMALL = ["num_clients=3", "num_rounds=2", "dataset.data_fraction=0.05"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    archive = require_shared("cifar10-jpg.tar.xz")
    base = tmp_path_factory.mktemp("sim")
    return {
        **os.environ,
        "FL_VMIX_DATA": str(archive.parent),
        "FL_VMIX_CACHE": str(base / "cache"),
        "FL_VMIX_KEY_DIR": str(base / "keys"),
        "FLWR_HOME": str(base / "flwr_home"),
    }


def fl_vmix(args: list[str], env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fl_vmix", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def flower_processes(flwr_home: str) -> list[int]:
    """PIDs of SuperLinks, simulations or Ray workers started for this test's FLWR_HOME."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                environ = (entry / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if flwr_home in environ and any(
                name in cmdline for name in ("flower-superlink", "flwr-simulation", "ray::", "raylet")
            ):
                found.append(int(entry.name))
    return found


def assert_no_flower_processes(flwr_home: str) -> None:
    """No Flower process of this FLWR_HOME is left. A killed process can take a moment to leave /proc on a
    loaded machine, so allow a few seconds; whatever stays is named with its command line and state."""
    deadline = time.monotonic() + 20
    while (left := flower_processes(flwr_home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    details = []
    for pid in left:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        details.append(f"{pid} (state, parent {state}): {cmdline[:300]}")
    assert not details, "the launcher must stop the SuperLink and its workers; left running:\n" + "\n".join(details)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_multirun_of_the_same_seed_is_reproducible(env, tmp_path):
    result = fl_vmix(["--multirun", "seed=0,0", *SMALL, f"hydra.sweep.dir={tmp_path}"], env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = [tmp_path / "0", tmp_path / "1"]
    for run in runs:
        for name in (
            "config.json",
            "metrics.json",
            "metrics.csv",
            "clients.csv",
            "summary.json",
            "model.pt",
            "accuracy.png",
        ):
            assert (run / name).exists(), f"{run / name} missing"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds"] == 2
        assert 0.0 <= summary["final_accuracy"] <= 1.0 and summary["wall_time_s"] > 0
        assert summary["config"]["privacy"]["method"] == "visualmixer"
        assert summary["vfe_corrected"] > 0
    timing = {"round_time_s"}
    first, second = (
        [{k: v for k, v in r.items() if k not in timing} for r in rows(run / "metrics.csv")] for run in runs
    )
    assert first == second, "same config and seed must give the same metrics"
    drop = {"obfuscation_s", "train_time_s"}
    clients = [[{k: v for k, v in r.items() if k not in drop} for r in rows(run / "clients.csv")] for run in runs]
    assert clients[0] == clients[1]
    assert_no_flower_processes(env["FLWR_HOME"])


def test_the_prototype_preset_runs_a_short_round_on_a_cpu(env, tmp_path):
    """The authors' protocol end to end at a smoke size: 224-px images, 16-px regions of 2-px blocks, ShuffleNetV2."""
    small = ["model=shufflenet_v2", "num_clients=2", "num_rounds=1", "dataset.data_fraction=0.004", "batch_size=16"]
    result = fl_vmix(["preset=prototype_cifar10", *small, f"hydra.run.dir={tmp_path}"], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 1
    config = summary["config"]
    assert config["dataset"]["image_size"] == 224 and config["privacy"]["region_size"] == 16
    assert config["privacy"]["block_sizes"] == [2] and config["optimizer"]["schedule"] == "cosine"
    clients = rows(tmp_path / "clients.csv")
    assert clients and all(float(r["vfe_corrected"]) > 0 for r in clients if r.get("vfe_corrected"))


def test_failing_client_is_reported_and_the_round_proceeds(env, tmp_path):
    result = fl_vmix(
        [*SMALL, "faults.fail_partitions=[1]", "min_success_fraction=0.5", f"hydra.run.dir={tmp_path}"], env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert summary["client_failures"] == 2  # partition 1 fails in train in both rounds
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert all(r["train_ok"] == 2 and r["train_failed"] == 1 for r in records if r["round"] > 0)
    assert "injected failure on partition 1" in json.dumps(records)


def test_interrupted_run_leaves_its_per_round_metrics(env, tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fl_vmix",
            "num_clients=3",
            "num_rounds=20",
            "dataset.data_fraction=0.05",
            f"hydra.run.dir={tmp_path}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (tmp_path / "metrics.csv").exists():
            time.sleep(1)
        assert (tmp_path / "metrics.csv").exists(), "no round finished"
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=180) == 130, "Ctrl-C ends the launcher with status 130"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert len(rows(tmp_path / "metrics.csv")) >= 1
    assert json.loads((tmp_path / "metrics.json").read_text())[-1]["round"] >= 1
    assert (tmp_path / "checkpoint.pt").exists(), "Ctrl-C leaves a checkpoint to resume from"
    time.sleep(2)
    assert_no_flower_processes(env["FLWR_HOME"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=transformer", "cnn"),  # Hydra lists the valid choices
        ("privacy.target_ratio=0.5", "target_ratio must be >= 1"),
        ("dataset.root=/nonexistent/data", "/nonexistent/data"),
        ("optimizer.lr=-1", "optimizer.lr must be > 0"),
        pytest.param(
            "device=cuda",
            "device=cuda but this process sees no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_bad_settings_stop_before_any_round(env, tmp_path, override, message):
    result = fl_vmix([override, f"hydra.run.dir={tmp_path}"], env, timeout=120)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "metrics.json").exists()
