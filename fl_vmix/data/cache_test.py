"""The array cache: built once, memory-mapped after, damaged entries rebuilt, concurrent builders serialised."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from fl_vmix.data.cache import META_NAME, cached_arrays, entry_dir, read_entry
from fl_vmix.data.errors import DataError

PARTS = {"dataset": "toy", "source": {"size": 1}}


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8), "labels": np.arange(50, dtype=np.int64)}


class CountingBuilder:
    """A builder that records how often it ran (in a file, so it also counts across processes)."""

    def __init__(self, log: Path, delay: float = 0.0) -> None:
        self.log, self.delay = log, delay

    def __call__(self):
        with open(self.log, "a") as handle:
            handle.write("built\n")
        time.sleep(self.delay)
        return _arrays(), {"classes": ["a", "b"]}

    @property
    def runs(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


def test_builds_once_then_memory_maps(tmp_path: Path) -> None:
    build = CountingBuilder(tmp_path / "log")
    first, extra = cached_arrays(tmp_path / "c", "datasets", "toy", PARTS, build)
    second, _ = cached_arrays(tmp_path / "c", "datasets", "toy", PARTS, build)
    assert build.runs == 1
    assert extra["classes"] == ["a", "b"] and extra["key_parts"] == PARTS
    assert isinstance(second["images"], np.memmap) and not second["images"].flags.writeable
    for name, expected in _arrays().items():
        np.testing.assert_array_equal(second[name], expected)
        assert first[name].dtype == expected.dtype


def test_key_depends_on_parts(tmp_path: Path) -> None:
    other = {**PARTS, "source": {"size": 2}}
    assert entry_dir(tmp_path, "d", "toy", PARTS) != entry_dir(tmp_path, "d", "toy", other)
    assert entry_dir(tmp_path, "d", "toy", PARTS) == entry_dir(tmp_path, "d", "toy", dict(reversed(PARTS.items())))


@pytest.mark.parametrize(
    "damage",
    ["truncate_images", "drop_meta", "garble_meta", "delete_labels", "wrong_shape_in_meta"],
)
def test_damaged_entry_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    build = CountingBuilder(tmp_path / "log")
    cached_arrays(tmp_path / "c", "datasets", "toy", PARTS, build)
    entry = entry_dir(tmp_path / "c", "datasets", "toy", PARTS)
    if damage == "truncate_images":
        data = (entry / "images.npy").read_bytes()
        (entry / "images.npy").write_bytes(data[: len(data) // 2])
    elif damage == "drop_meta":  # what a crash between the array writes and the meta write leaves
        (entry / META_NAME).unlink()
    elif damage == "garble_meta":
        (entry / META_NAME).write_text("{not json")
    elif damage == "delete_labels":
        (entry / "labels.npy").unlink()
    else:
        meta = json.loads((entry / META_NAME).read_text())
        meta["arrays"]["images"]["shape"] = [49, 3, 8, 8]
        (entry / META_NAME).write_text(json.dumps(meta))
    assert read_entry(entry) is None
    arrays, _ = cached_arrays(tmp_path / "c", "datasets", "toy", PARTS, build)
    assert build.runs == 2
    np.testing.assert_array_equal(arrays["images"], _arrays()["images"])
    assert read_entry(entry) is not None
    assert not list(entry.glob(".*tmp")), "temporary files must not be left behind"


def _build_in_child(cache: str, log: str, start_at: float, out: str) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    arrays, _ = cached_arrays(Path(cache), "datasets", "toy", PARTS, CountingBuilder(Path(log), delay=0.5))
    np.save(out, np.asarray(arrays["images"]))


def test_two_processes_building_at_once_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start_at = time.time() + 0.3
    outs = [str(tmp_path / f"out{i}.npy") for i in range(2)]
    procs = [
        ctx.Process(target=_build_in_child, args=(str(tmp_path / "c"), str(tmp_path / "log"), start_at, out))
        for out in outs
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert CountingBuilder(tmp_path / "log").runs == 1
    for out in outs:
        np.testing.assert_array_equal(np.load(out), _arrays()["images"])


def test_failed_build_leaves_no_valid_entry(tmp_path: Path) -> None:
    def broken():
        raise DataError("source is corrupt: replace it")

    with pytest.raises(DataError, match="replace it"):
        cached_arrays(tmp_path / "c", "datasets", "toy", PARTS, broken)
    assert read_entry(entry_dir(tmp_path / "c", "datasets", "toy", PARTS)) is None


def test_unwritable_cache_dir_names_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"FL_VMIX_CACHE"):
        cached_arrays(blocker / "cache", "datasets", "toy", PARTS, CountingBuilder(tmp_path / "log"))


def test_empty_arrays_round_trip(tmp_path: Path) -> None:
    arrays, _ = cached_arrays(tmp_path, "x", "empty", PARTS, lambda: ({"e": np.zeros((0, 3), np.int64)}, {}))
    assert arrays["e"].shape == (0, 3)
