"""The folder ``flwr run`` bundles into a Flower app (FAB), in a checkout and in an installed package.

From a checkout the repository root is the app: its ``pyproject.toml`` names the components, and
the FAB carries the source with it (so SuperNodes run the launching machine's code). An installed
wheel has no such root, so a minimal app folder is written once: a ``pyproject.toml`` naming the
same components, which then import from the installed package on every node.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

import fl_vmix
from fl_vmix.data import resolve_cache_dir

PUBLISHER = "fl_vmix"
COMPONENTS = {"serverapp": "fl_vmix.apps.server_app:app", "clientapp": "fl_vmix.apps.client_app:app"}
# "experiment": JSON of the experiment (the launcher sends it); "" = conf/ composed with "overrides" (Hydra
# overrides in one string, for `flwr run . --run-config "overrides='num_rounds=2'"`).
RUN_CONFIG = {"experiment": "", "overrides": ""}


def app_section() -> dict[str, Any]:
    """``[tool.flwr.app]`` of fl_vmix's Flower app (the checkout's pyproject.toml holds the same)."""
    return {"publisher": PUBLISHER, "components": dict(COMPONENTS), "config": dict(RUN_CONFIG)}


def checkout_dir() -> Path | None:
    """The repository root when fl_vmix runs from a checkout whose pyproject.toml is this Flower app."""
    root = Path(fl_vmix.__file__).resolve().parents[1]
    try:
        pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    components = pyproject.get("tool", {}).get("flwr", {}).get("app", {}).get("components")
    return root if components == COMPONENTS else None


def generated_app_dir(base: Path | None = None) -> Path:
    """A minimal app folder for an installed fl_vmix (written once per version, atomically)."""
    folder = (base or resolve_cache_dir() / "flower_app") / fl_vmix.__version__
    folder.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fl-vmix-app",
            "version": fl_vmix.__version__,
            "license": "Apache-2.0",
            "description": "fl_vmix's Flower apps, imported from the installed fl_vmix package",
            "dependencies": [f"fl-vmix=={fl_vmix.__version__}"],
        },
        "tool": {"flwr": {"app": app_section()}},
    }
    text = tomli_w.dumps(pyproject)
    target = folder / "pyproject.toml"
    if not target.is_file() or target.read_text() != text:
        tmp = folder / f".pyproject.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
    return folder


def flower_app_dir() -> Path:
    """The folder to pass to ``flwr run``."""
    return checkout_dir() or generated_app_dir()
