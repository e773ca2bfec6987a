"""One client's data: global ids, disjoint train/test, every sample in exactly one client, fast repeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_vmix.data import cache
from fl_vmix.data.client import load_client_data
from fl_vmix.data.errors import DataError
from fl_vmix.data.sources import SPLIT_ID_OFFSET, load_dataset


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_clients_cover_the_split_exactly_once(image_folder: Path, tmp_path: Path, scheme: str) -> None:
    cache = tmp_path / "c"
    full = load_dataset("imagefolder", image_folder, cache_dir=cache)
    seen = []
    for pid in range(3):
        client = load_client_data("imagefolder", pid, 3, scheme, seed=1, alpha=1.0, root=image_folder, cache_dir=cache)
        assert client.classes == ["cat", "dog", "fish"] and client.partition_id == pid
        assert len(np.intersect1d(client.train_ids, client.test_ids)) == 0
        assert len(client.test_ids) >= 1
        for images, labels, ids in (
            (client.train_images, client.train_labels, client.train_ids),
            (client.test_images, client.test_labels, client.test_ids),
        ):
            np.testing.assert_array_equal(images, full.images[ids])  # train split: offset 0
            np.testing.assert_array_equal(labels, full.labels[ids])
            assert images.flags.writeable and images.dtype == np.uint8 and ids.dtype == np.int64
        seen += [client.train_ids, client.test_ids]
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(full)))


def test_deterministic_and_read_from_the_cache_on_repeat(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = dict(seed=7, root=image_folder, cache_dir=tmp_path / "c")
    first = load_client_data("imagefolder", 1, 4, "dirichlet", **args)

    def rebuilt(*_: object, **__: object) -> None:
        raise AssertionError("the repeat decoded or partitioned again instead of reading the cache")

    with monkeypatch.context() as patched:
        patched.setattr(cache, "write_entry", rebuilt)
        again = load_client_data("imagefolder", 1, 4, "dirichlet", **args)
    for name in ("train_ids", "test_ids", "train_labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    other_seed = load_client_data("imagefolder", 1, 4, "dirichlet", **{**args, "seed": 8})
    assert not np.array_equal(first.train_ids, other_seed.train_ids)


def test_test_split_ids_are_offset(image_folder: Path, tmp_path: Path) -> None:
    client = load_client_data(
        "imagefolder", 0, 2, split="test", test_fraction=0.0, root=image_folder, cache_dir=tmp_path
    )
    assert client.train_ids.min() >= SPLIT_ID_OFFSET["test"] and len(client.test_ids) == 0


@pytest.mark.parametrize(
    ("pid", "num", "message"),
    [
        (3, 3, r"partition_id=3 is outside 0\.\.2"),
        (-1, 3, r"partition_id must be an integer >= 0"),
        (0, 0, "num_partitions"),
    ],
)
def test_bad_partition_id(image_folder: Path, tmp_path: Path, pid: int, num: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_client_data("imagefolder", pid, num, root=image_folder, cache_dir=tmp_path)


def test_more_clients_than_samples(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"num_partitions=25 exceeds the 24 samples of imagefolder/train: use at most 24"
    ):
        load_client_data("imagefolder", 0, 25, root=image_folder, cache_dir=tmp_path)


def test_client_data_names_the_dataset_its_ids_index(image_folder: Path, tmp_path: Path) -> None:
    from fl_vmix.data.client import DatasetIdentity
    from fl_vmix.data.sources import ImageArrays

    cache = tmp_path / "c"
    one = load_client_data("imagefolder", 0, 2, root=image_folder, cache_dir=cache)
    other = load_client_data("imagefolder", 1, 3, seed=4, root=image_folder, cache_dir=cache)
    assert one.dataset is not None and one.dataset == other.dataset  # the split's identity, not the partition's
    assert one.dataset.token == f"imagefolder/train/{one.dataset.fingerprint}" and len(one.dataset.fingerprint) == 32
    full = load_dataset("imagefolder", image_folder, cache_dir=cache)
    assert DatasetIdentity.of(full) == one.dataset
    changed = full.images.copy()
    changed[-1, 0, 0, 0] ^= 1  # one value of the last image (always in the fingerprint's sample)
    edited = ImageArrays(full.name, full.split, changed, full.labels, full.classes)
    assert DatasetIdentity.of(edited).fingerprint != one.dataset.fingerprint
    relabelled = ImageArrays(full.name, full.split, full.images, full.labels[::-1].copy(), full.classes)
    assert DatasetIdentity.of(relabelled).fingerprint != one.dataset.fingerprint
    other_split = ImageArrays(full.name, "test", full.images, full.labels, full.classes)
    assert DatasetIdentity.of(other_split).token != one.dataset.token
