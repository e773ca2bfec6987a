"""Shared pytest fixtures: where the real data lives, and the CI rule that real-data tests never skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("FL_VMIX_SHARED_DATA", Path(__file__).resolve().parent.parent / "shared" / "data"))


def require_shared(relative: str) -> Path:
    """Path of a file or folder in ../shared/data; skip locally when it is absent, fail in CI."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"real data {path} is missing (set FL_VMIX_SHARED_DATA to the folder holding shared/data)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + "; in CI the real-data tests must run")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared("")
