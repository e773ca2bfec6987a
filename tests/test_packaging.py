"""The wheel carries the Hydra configuration, so an installed fl_vmix runs from any folder.

The wheel is built from this checkout (``python -m build --wheel --no-isolation``: no network), then
inspected; the slow test installs it into a folder of its own and runs ``python -m fl_vmix`` from an
empty working directory, where no checkout is in sight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import FLOWER_RUNS, require_shared

pytestmark = [FLOWER_RUNS]  # both tests share the built wheel: keep them on one worker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("fl_vmix-*.whl")
    return built


def test_the_wheel_ships_every_config_and_the_license_but_no_tests(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(REPO).as_posix() for p in (REPO / "fl_vmix" / "conf").rglob("*.yaml")}
    assert configs and configs <= names, f"missing from the wheel: {sorted(configs - names)}"
    assert "fl_vmix/conf/config.yaml" in names and "fl_vmix/conf/privacy/visualmixer.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.endswith("_test.py") or n.endswith("conftest.py")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fl-vmix = fl_vmix.runtime.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_an_installed_wheel_runs_an_experiment_from_any_folder(wheel: Path, tmp_path: Path):
    data = require_shared("cifar10-jpg.tar.xz").parent
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **os.environ, "PYTHONPATH": str(target), "FL_VMIX_DATA": str(data), "FL_VMIX_CACHE": str(tmp_path / "cache"),
        "FL_VMIX_KEY_DIR": str(tmp_path / "keys"), "FLWR_HOME": str(tmp_path / "flwr_home"),
    }  # fmt: skip
    where = subprocess.run([sys.executable, "-c", "import fl_vmix; print(fl_vmix.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(target)), "the test must exercise the installed copy"
    shown = subprocess.run([sys.executable, "-m", "fl_vmix", "--cfg", "job", "privacy=none"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert shown.returncode == 0 and "method: none" in shown.stdout, shown.stderr[-2000:]
    out = tmp_path / "run"
    args = ["num_clients=2", "num_rounds=1", "dataset.data_fraction=0.02", f"output_dir={out}"]
    command = [sys.executable, "-m", "fl_vmix", *args]
    run = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=800, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 1
    generated = list((tmp_path / "cache" / "flower_app").rglob("pyproject.toml"))
    assert generated, "an installed fl_vmix launches a generated Flower app (it has no checkout)"
