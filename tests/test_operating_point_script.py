"""scripts/operating_point.py end to end on real CIFAR-10 at a tiny size: it writes its record and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_shared

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "operating_point.py"


def test_the_operating_point_script_records_every_setting_and_names_the_closest(tmp_path):
    archive = require_shared("cifar10-jpg.tar.xz")
    out = tmp_path / "op"
    args = ["--root", str(archive.parent), "--victims", "16", "--public", "320", "--attack-epochs", "1"]
    args += ["--attack-widths", "8", "16", "--out", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    labels = [row["label"] for row in record["rows"]]
    assert labels[0].startswith("prototype") and len(labels) == 5 and record["closest_native"] in labels[1:]
    assert all(row["learned_steps"] and 0 < row["learned_ssim"] <= 1 for row in record["rows"])
    assert record["attack"]["widths"] == [8, 16] and record["data"]["victims"]["n"] == 16
    assert "(closest)" in (out / "table.md").read_text()
