"""The command line's messages: refused settings print their fix intact and leave no run folder behind; the run
summary says what summary.json says about the run's keys and noise."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from conftest import require_shared
from fl_vmix.apps.keys import DERIVED_KEYS_WARNING, KEY_ORIGINS
from fl_vmix.checks import check_clients_fit
from fl_vmix.experiment import ConfigError, compose
from fl_vmix.runtime.cli import summary_table


def fl_vmix(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "fl_vmix", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "override, fix",
    [
        # The fix holds brackets: Rich would read "[2,1]" as markup and print "privacy.block_sizes=".
        ("privacy.block_sizes=2", "set privacy.block_sizes to a list of integers, e.g. privacy.block_sizes=[2,1]"),
        ("privacy.region_size=eight", "set privacy.region_size to an integer, e.g. privacy.region_size=8"),
    ],
)
def test_a_refused_setting_prints_its_fix_and_leaves_no_run_folder(tmp_path, override, fix):
    result = fl_vmix([override], tmp_path)
    text = " ".join((result.stdout + result.stderr).split())  # Rich wraps at the terminal width
    assert result.returncode == 2, text
    assert fix in text and "Traceback" not in text
    assert not list(tmp_path.glob("outputs/*/*")), "a refused command leaves no empty outputs/<date>/<time>/"


def test_resuming_a_folder_that_does_not_exist_creates_none(tmp_path):
    result = fl_vmix(["resume=outputs/typo"], tmp_path)
    assert result.returncode == 2 and "is not a folder" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_help_introduces_fl_vmix(tmp_path):
    result = fl_vmix(["--help"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("fl_vmix: federated learning (Flower) on images protected by VisualMixer")
    assert "privacy: block_shuffle" in result.stdout and "is powered by Hydra" not in result.stdout


def test_the_summary_shows_the_whole_output_path():
    folder = "/a/rather/long/folder/name/that/does/not/fit/in/eighty/columns/outputs/2026-01-01/12-00-00"
    console = Console(width=80, record=True)
    console.print(summary_table({"config": {"output_dir": folder}, "rounds": 1, "wall_time_s": 1.0}))
    assert folder in "".join(console.export_text().replace("│", "").split()), "the path is wrapped, never cut"


def test_num_clients_is_checked_against_the_images_there_are(tmp_path, caplog):
    root = str(require_shared("medmnist/retinamnist.npz").parents[1])
    base = ["dataset=retinamnist", f"dataset.root={root}", f"dataset.cache_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"num_clients=100000 exceeds the 1080 training images of retinamnist"):
        check_clients_fit(compose([*base, "num_clients=100000"]))
    with caplog.at_level(logging.WARNING, logger="fl_vmix.checks"):
        check_clients_fit(compose([*base, "num_clients=500"]))
    assert "leaves each client about 2 training image(s), less than one batch (batch_size=32)" in caplog.text
    assert "num_clients=27 keeps a batch each" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fl_vmix.checks"):
        check_clients_fit(compose([*base, "num_clients=5"]))
    assert not caplog.text


def test_a_sweep_with_a_refused_job_exits_non_zero(tmp_path):
    """`report run` and scripts see a failed sweep (Hydra runs the jobs in one process and would exit 0)."""
    result = fl_vmix(["--multirun", "privacy.region_size=eight,nine"], tmp_path)
    assert result.returncode == 2 and "2 run(s) of the sweep failed" in result.stderr
    assert not [p for p in tmp_path.glob("multirun/*/*/*") if p.is_dir()], "refused jobs leave no folders"


def rendered(summary: dict) -> str:
    console = Console(record=True, width=500)
    console.print(summary_table(summary))
    return " ".join(console.export_text().replace("│", " ").split())


def test_the_console_summary_shows_the_keys_and_every_warning_of_the_run():
    summary = {"config": {"experiment": "x"}, "keys": KEY_ORIGINS["derived"], "warnings": [DERIVED_KEYS_WARNING]}
    text = rendered(summary)
    assert "client keys" in text and KEY_ORIGINS["derived"] in text
    assert f"warning {DERIVED_KEYS_WARNING}" in text
    quiet = rendered({**summary, "keys": KEY_ORIGINS["random"], "warnings": []})
    assert "warning" not in quiet and KEY_ORIGINS["random"] in quiet
