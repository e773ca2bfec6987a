"""A ClientApp process imports only what every message needs.

The Deployment Engine starts a fresh ``flwr-clientapp`` process for every message, so whatever
``fl_vmix.apps.client_app`` imports is paid per message (it was 4.9 s, mostly torchvision's model zoo
pulling in torch._dynamo). Heavy libraries are imported where they are used; this test names them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Imported only by the code that needs them: a model zoo network, DP-SGD, plots, SSIM, Hydra composition,
# MedMNIST shapes, Hugging Face partitioning, scipy statistics and calibration.
HEAVY = (
    "torchvision",
    "opacus",
    "matplotlib",
    "torchmetrics",
    "hydra",
    "medmnist",
    "datasets",
    "flwr_datasets",
    "scipy",
    "dp_accounting",
)


def test_importing_the_client_app_loads_no_heavy_library():
    code = "import json, sys; import fl_vmix.apps.client_app; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}
    assert not loaded & set(HEAVY), f"imported at ClientApp import time: {sorted(loaded & set(HEAVY))}"
