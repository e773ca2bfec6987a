"""Shared pytest fixtures: where the real data lives, and the CI rule that real-data tests never skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests that launch Flower's engines (minutes each). `.ci/run` runs them in one pytest process, one at a time,
# beside a second process for every other test: two Flower runs at once would compete for the two cores and
# for their own timeouts, and together they are CI's longest chain.
FLOWER_RUNS = pytest.mark.flower_run

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


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Text parameters make ids without brackets: an id with brackets inside its ``[...]`` cannot be selected
    (``pytest "file::test[a [b] c]"`` says not found), and mutmut selects each mutant's tests by id."""
    if isinstance(val, str) and ("[" in val or "]" in val):
        return val.replace("[", "(").replace("]", ")")
    return None


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    """Keep Hugging Face `datasets` (used by the partitioners), Flower and client keys away from the
    user's folders, offline."""
    names = ("HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "FL_VMIX_KEY_DIR")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["FL_VMIX_KEY_DIR"] = str(tmp_path_factory.mktemp("client_keys"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared("")
