"""The `python -m fl_vmix.data` command: stats table, coverage line, plot, and errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fl_vmix.data import cached_partitions, label_counts, load_dataset
from fl_vmix.data.__main__ import main, save_plot


def test_stats_prints_table_and_saves_plot(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plot = tmp_path / "plots" / "labels.png"
    argv = ["stats", "--dataset", "imagefolder", "--root", str(image_folder), "--cache-dir", str(tmp_path / "c")]
    argv += ["--num-partitions", "3", "--scheme", "dirichlet", "--alpha", "0.3", "--seed", "0", "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "imagefolder/train: 3 clients" in out
    for column in ("client", "train", "test", "cat", "dog", "fish"):
        assert column in out
    assert "samples in a client: 24/24, in more than one: 0" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_the_plot_shows_the_partitions_label_counts(image_folder: Path, tmp_path: Path) -> None:
    data = load_dataset("imagefolder", image_folder, "train", cache_dir=tmp_path / "c")
    parts = cached_partitions(data.labels, 3, "dirichlet", seed=0, alpha=0.3, cache_dir=tmp_path / "c")
    plotted = save_plot(data, parts, tmp_path / "labels.png", "t")
    # flwr-datasets draws the plot; our own counting is the oracle.
    assert (plotted == label_counts(data.labels, parts, data.num_classes)).all()


def test_stats_bad_input_exits_2_with_fix(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["stats", "--dataset", "imagefolder", "--root", str(image_folder), "--cache-dir", str(tmp_path)]
    assert main(argv + ["--num-partitions", "3", "--scheme", "dirichlet", "--alpha", "0"]) == 2
    assert "alpha must be > 0 (got 0.0)" in capsys.readouterr().err
    assert main(["stats", "--dataset", "cifar11", "--num-partitions", "2"]) == 2
    assert "Did you mean 'cifar10'" in capsys.readouterr().err


def test_prepare_as_a_module(image_folder: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_vmix.data",
            "prepare",
            "--dataset",
            "imagefolder",
            "--root",
            str(image_folder),
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "imagefolder: train (24, 3, 16, 16) 3 classes" in result.stdout and "cached load" in result.stdout
