"""What one Flower client trains and evaluates on: its partition of a dataset, split into train/test.

`load_client_data` is called by every client process every round, so it only memory-maps the
cached dataset (`load_dataset`), reads the cached partition indices (`cached_partitions`) and
copies out the client's rows: tens of milliseconds after the first call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from fl_vmix.data.errors import DataError
from fl_vmix.data.partition import cached_partitions, check_int, client_split
from fl_vmix.data.sources import SPLIT_ID_OFFSET, ImageArrays, load_dataset

_FINGERPRINT_IMAGES, _FINGERPRINT_BYTES = 256, 8 << 20


@dataclass(frozen=True)
class DatasetIdentity:
    """Which data a client's sample ids index: the dataset's name, its split and a fingerprint of its content.

    Keyed privacy methods bind :attr:`token` into their randomness, so the same id in two datasets or splits
    never shares a permutation or a noise draw, while the same image of the same data gets the same one in
    every run. The fingerprint (BLAKE2b-128) covers the split's size, image shape, every label, the class
    names and up to 256 evenly spaced images (at most 8 MiB, so it costs milliseconds on any dataset): two
    copies of one dataset agree wherever they are stored, and two datasets that share a name (an
    ``imagefolder``, a changed copy) differ unless they agree on all of that."""

    name: str
    split: str
    fingerprint: str

    @property
    def token(self) -> str:
        return f"{self.name}/{self.split}/{self.fingerprint}"

    @classmethod
    def of(cls, data: ImageArrays) -> DatasetIdentity:
        n = len(data)
        per_image = max(1, int(np.prod(data.images.shape[1:])))
        count = min(n, _FINGERPRINT_IMAGES, max(1, _FINGERPRINT_BYTES // per_image))
        digest = hashlib.blake2b(digest_size=16, person=b"fl_vmix.dataset")
        digest.update(repr((tuple(data.images.shape), str(data.images.dtype), list(data.classes))).encode())
        digest.update(np.ascontiguousarray(data.labels, dtype="<i8").tobytes())
        if n:
            sample = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
            digest.update(np.ascontiguousarray(data.images[sample]).tobytes())
        return cls(data.name, data.split, digest.hexdigest())


@dataclass(frozen=True)
class ClientData:
    """One client's data. Images uint8 [n, C, H, W], labels int64 [n], ids int64 [n] (global sample ids:
    index in the dataset split + `SPLIT_ID_OFFSET[split]`, so a keyed per-sample shuffle differs per sample)."""

    partition_id: int
    num_partitions: int
    train_images: np.ndarray
    train_labels: np.ndarray
    train_ids: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_ids: np.ndarray
    classes: list[str]
    dataset: DatasetIdentity | None = None  # what the ids index (None: not recorded, e.g. older exports)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_client_data(
    dataset: str,
    partition_id: int,
    num_partitions: int,
    scheme: str = "iid",
    *,
    seed: int = 0,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    min_partition_size: int | None = None,
    class_assignment: str = "first-deterministic",
    test_fraction: float = 0.2,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> ClientData:
    """Client `partition_id`'s share of `dataset`/`split`, with a per-client held-out test part.

    The partition is `partition_dataset(labels, num_partitions, scheme, seed=seed, ...)`; the
    client's samples are then split by `client_split(..., test_fraction, seed=(seed, partition_id))`.
    Returned arrays are in-memory copies (safe to modify).
    """
    num_partitions = check_int(num_partitions, "num_partitions", 1, "use at least 1 client")
    partition_id = check_int(partition_id, "partition_id", 0, "pass the client's partition index")
    if partition_id >= num_partitions:
        raise DataError(
            f"partition_id={partition_id} is outside 0..{num_partitions - 1} for num_partitions={num_partitions}: "
            f"pass a partition index below num_partitions"
        )
    data = load_dataset(dataset, root, split, cache_dir=cache_dir, download=download)
    parts = cached_partitions(
        data.labels,
        num_partitions,
        scheme,
        seed=seed,
        alpha=alpha,
        classes_per_partition=classes_per_partition,
        min_partition_size=min_partition_size,
        class_assignment=class_assignment,
        dataset_name=f"{data.name}/{split}",
        cache_dir=cache_dir,
    )
    train_idx, test_idx = client_split(parts[partition_id], test_fraction, seed=(int(seed), partition_id))
    offset = SPLIT_ID_OFFSET[split]
    return ClientData(
        partition_id=partition_id,
        num_partitions=num_partitions,
        train_images=np.asarray(data.images[train_idx]),
        train_labels=np.asarray(data.labels[train_idx]),
        train_ids=train_idx + offset,
        test_images=np.asarray(data.images[test_idx]),
        test_labels=np.asarray(data.labels[test_idx]),
        test_ids=test_idx + offset,
        classes=list(data.classes),
        dataset=DatasetIdentity.of(data),
    )


def subsample(data: ClientData, fraction: float, seed: int) -> ClientData:
    """Keep a seeded ``fraction`` of a client's train and test rows (quick runs on a share of the data)."""
    if not 0 < fraction <= 1:
        raise DataError(f"data_fraction={fraction} is invalid: use a fraction in (0, 1]")
    if fraction == 1:
        return data
    rng = np.random.default_rng([seed, data.partition_id, 0x5AB])

    def keep(n: int) -> np.ndarray:
        return np.sort(rng.permutation(n)[: max(1, int(round(fraction * n)))]) if n else np.arange(0)

    train, test = keep(len(data.train_labels)), keep(len(data.test_labels))
    return dataclasses.replace(
        data,
        train_images=data.train_images[train],
        train_labels=data.train_labels[train],
        train_ids=data.train_ids[train],
        test_images=data.test_images[test],
        test_labels=data.test_labels[test],
        test_ids=data.test_ids[test],
    )
