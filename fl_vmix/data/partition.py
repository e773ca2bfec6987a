"""Split a labelled dataset across N federated clients the way the FL literature does.

Schemes (all built with flwr-datasets' partitioners on a *local* `datasets.Dataset` of
``{"label", "idx"}`` columns, never `FederatedDataset`, so nothing touches the Hugging Face Hub):

* ``iid``: a seeded shuffle (`datasets.Dataset.shuffle`) cut into N equal contiguous shards
  (`IidPartitioner`); every sample is in exactly one client.
* ``dirichlet``: per class, client shares drawn from Dirichlet(alpha) (`DirichletPartitioner`,
  Yurochkin et al. 2019 / Hsu et al. 2019); small alpha = more skew. Every sample is in exactly one
  client; a draw leaving a client below ``min_partition_size`` is redrawn (at most 10 times).
* ``pathological``: each client gets exactly ``classes_per_partition`` classes, each class split
  evenly among the clients that hold it (`PathologicalPartitioner`, Li et al. 2021,
  arXiv:2102.02079). With ``class_assignment="first-deterministic"`` (the paper's choice, the
  default here) client i always holds class ``i % num_classes``, so all samples are covered when
  ``num_partitions >= num_classes``; otherwise unused classes are reported with a warning.

Every result is deterministic for a seed, returned as sorted int64 index arrays into the split,
and checked to have no empty client. `client_split` then holds out a per-client test part.
`cached_partitions` stores the result on disk so client processes re-read it in milliseconds
instead of re-importing `datasets` and re-running the partitioner every round.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from fl_vmix.data.cache import cached_arrays
from fl_vmix.data.errors import DataError
from fl_vmix.data.paths import resolve_cache_dir

SCHEMES = ("iid", "dirichlet", "pathological")
CLASS_ASSIGNMENTS = ("first-deterministic", "deterministic", "random")


def default_min_partition_size(num_samples: int, num_partitions: int) -> int:
    """flwr's default of 10 samples per client, lowered so that it stays reachable on small datasets."""
    return max(1, min(10, num_samples // (2 * num_partitions)))


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}: "
            f"pass ImageArrays.labels (one class index per sample)"
        )
    return labels.astype(np.int64, copy=False)


def check_int(value: Any, what: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise DataError(f"{what} must be an integer >= {minimum} (got {value!r}): {fix}")
    return int(value)


def normalize_params(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    *,
    seed: int,
    alpha: float,
    classes_per_partition: int,
    min_partition_size: int | None,
    class_assignment: str,
    dataset_name: str,
) -> dict[str, Any]:
    """Validate partitioning arguments against the labels; return only the ones the scheme uses."""
    n = len(labels)
    num_partitions = check_int(num_partitions, "num_partitions", 1, "use at least 1 client")
    if num_partitions > n:
        raise DataError(
            f"num_partitions={num_partitions} exceeds the {n} samples of {dataset_name}: use at most {n} clients "
            f"(every client needs at least one sample)"
        )
    seed = check_int(seed, "seed", 0, "use a non-negative integer seed such as 0")
    scheme_key = str(scheme).strip().lower()
    if scheme_key not in SCHEMES:
        raise DataError(f"unknown partition scheme {scheme!r}: use one of {list(SCHEMES)}")
    params: dict[str, Any] = {"scheme": scheme_key, "num_partitions": num_partitions, "seed": seed}
    num_classes = len(np.unique(labels))
    if scheme_key == "dirichlet":
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
            raise DataError(
                f"alpha must be > 0 (got {alpha!r}): it is the Dirichlet concentration (small = skewed labels, "
                f"large = near-IID); use e.g. alpha=0.5"
            )
        size = default_min_partition_size(n, num_partitions) if min_partition_size is None else min_partition_size
        size = check_int(size, "min_partition_size", 1, "clients cannot be empty; use e.g. 1 or 10")
        if size * num_partitions > n:
            raise DataError(
                f"min_partition_size={size} x num_partitions={num_partitions} exceeds the {n} samples of "
                f"{dataset_name}: lower min_partition_size or use at most {n // size} clients"
            )
        params |= {"alpha": float(alpha), "min_partition_size": size}
    elif scheme_key == "pathological":
        k = check_int(classes_per_partition, "classes_per_partition", 1, "give each client at least one class")
        if k > num_classes:
            raise DataError(
                f"classes_per_partition={k} exceeds the {num_classes} classes present in {dataset_name}: "
                f"use at most {num_classes}"
            )
        if class_assignment not in CLASS_ASSIGNMENTS:
            raise DataError(f"unknown class_assignment {class_assignment!r}: use one of {list(CLASS_ASSIGNMENTS)}")
        params |= {"classes_per_partition": k, "class_assignment": class_assignment}
    return params


def _run_partitioner(labels: np.ndarray, params: dict[str, Any], dataset_name: str) -> list[np.ndarray]:
    """Apply the flwr-datasets partitioner that `params` describes; sorted index arrays per client."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    num_partitions, seed, scheme = params["num_partitions"], params["seed"], params["scheme"]
    table = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels), dtype=np.int64)})
    partitioner: Any
    if scheme == "iid":
        table = table.shuffle(seed=seed)  # IidPartitioner cuts contiguous shards: shuffle first
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=params["alpha"],
            min_partition_size=params["min_partition_size"],
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=params["classes_per_partition"],
            class_assignment_mode=params["class_assignment"],
            shuffle=True,
            seed=seed,
        )
    partitioner.dataset = table
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # `[:]` reads each partition's column as one numpy batch (iterating a datasets Column is per-row slow)
            parts = [
                np.sort(np.asarray(partitioner.load_partition(i).with_format("numpy")[:]["idx"], dtype=np.int64))
                for i in range(num_partitions)
            ]
        except ValueError as error:
            raise _translate_flwr_error(error, params, len(labels), dataset_name) from error
    if scheme == "pathological" and any("will NOT be used" in str(w.message) for w in caught):
        used = np.unique(labels[np.concatenate(parts)])
        unused = sorted(set(np.unique(labels).tolist()) - set(used.tolist()))
        warnings.warn(
            f"pathological partitioning of {dataset_name} into {num_partitions} clients x "
            f"{params['classes_per_partition']} classes leaves classes {unused} in no client (their samples are "
            f"unused): use more clients or classes_per_partition, or class_assignment='first-deterministic' "
            f"with num_partitions >= number of classes",
            UserWarning,
            stacklevel=3,
        )
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise DataError(
            f"{scheme} partitioning of {dataset_name} left clients {empty} empty: use fewer clients, "
            f"a larger alpha / min_partition_size (dirichlet) or a different seed"
        )
    return parts


def _translate_flwr_error(error: ValueError, params: dict[str, Any], n: int, dataset_name: str) -> DataError:
    text = str(error)
    if "max number of attempts" in text:
        return DataError(
            f"Dirichlet(alpha={params['alpha']}) partitioning of the {n} samples of {dataset_name} into "
            f"{params['num_partitions']} clients left a client below min_partition_size="
            f"{params['min_partition_size']} in 11 draws: raise alpha (e.g. 0.5 or 1.0), use fewer clients, "
            f"lower min_partition_size, or try another seed"
        )
    if "more partitions" in text:
        return DataError(
            f"pathological partitioning of {dataset_name} needs a class in more clients than it has samples "
            f"({text.split('.')[0]}): use fewer clients or classes_per_partition, or "
            f"class_assignment='deterministic' to spread classes evenly"
        )
    return DataError(f"partitioning {dataset_name} failed in flwr-datasets ({text}): check the arguments")


def partition_dataset(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str = "iid",
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    min_partition_size: int | None = None,
    class_assignment: str = "first-deterministic",
    dataset_name: str = "the dataset",
) -> list[np.ndarray]:
    """Indices (sorted int64, into `labels`) of each of `num_partitions` clients; deterministic for `seed`.

    `alpha`/`min_partition_size` apply to ``dirichlet`` (default minimum: 10 samples, lowered to
    ``n // (2 * num_partitions)`` on small datasets), `classes_per_partition`/`class_assignment` to
    ``pathological``. `dataset_name` only appears in error messages.
    """
    labels = _check_labels(labels)
    params = normalize_params(
        labels,
        num_partitions,
        scheme,
        seed=seed,
        alpha=alpha,
        classes_per_partition=classes_per_partition,
        min_partition_size=min_partition_size,
        class_assignment=class_assignment,
        dataset_name=dataset_name,
    )
    return _run_partitioner(labels, params, dataset_name)


@cache
def _flwr_datasets_version() -> str:
    from importlib.metadata import version

    return version("flwr-datasets")


def cached_partitions(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str = "iid",
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    min_partition_size: int | None = None,
    class_assignment: str = "first-deterministic",
    dataset_name: str = "the dataset",
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[np.ndarray]:
    """`partition_dataset`, stored on disk keyed by the labels' hash, the parameters and flwr-datasets' version.

    Repeat calls (e.g. every Flower client, every round) read two small arrays instead of importing
    `datasets` and re-running the partitioner (measured: ~1-2 s for 50,000 labels).
    """
    labels = _check_labels(labels)
    params = normalize_params(
        labels,
        num_partitions,
        scheme,
        seed=seed,
        alpha=alpha,
        classes_per_partition=classes_per_partition,
        min_partition_size=min_partition_size,
        class_assignment=class_assignment,
        dataset_name=dataset_name,
    )
    key = {
        "labels_sha256": hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest(),
        "num_samples": len(labels),
        "flwr_datasets": _flwr_datasets_version(),
        **params,
    }

    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        parts = _run_partitioner(labels, params, dataset_name)
        offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
        return {"indices": np.concatenate(parts), "offsets": offsets}, {"dataset": dataset_name}

    label = f"{dataset_name}-{params['scheme']}-{params['num_partitions']}".replace("/", "_").replace(" ", "_")
    arrays, _ = cached_arrays(resolve_cache_dir(cache_dir), "partitions", label, key, build)
    indices, offsets = arrays["indices"], arrays["offsets"]
    return [np.asarray(indices[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]


def client_split(
    indices: np.ndarray, test_fraction: float = 0.2, seed: int | Sequence[int] = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-client train/test split of `indices`: sorted (train, test) index arrays.

    ``round(test_fraction * n)`` samples go to test, at least 1 when ``test_fraction > 0`` and
    ``n >= 2``, and always at least 1 stays in train. `seed` may be a sequence such as
    ``(seed, partition_id)`` so each client gets its own split.
    """
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise DataError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}: pass one partition")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction must be in [0, 1) (got {test_fraction!r}): use e.g. 0.2, or 0 for no test part")
    n = len(indices)
    if n == 0:
        raise DataError("cannot split an empty partition: use fewer clients or another partitioning")
    n_test = int(round(test_fraction * n))
    if test_fraction > 0 and n >= 2:
        n_test = max(n_test, 1)
    n_test = min(n_test, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    indices = indices.astype(np.int64, copy=False)
    return np.sort(indices[order[n_test:]]), np.sort(indices[order[:n_test]])


def label_counts(labels: np.ndarray, partitions: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """int64 [num_partitions, num_classes] count of each label in each partition (for stats and plots)."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in partitions]).astype(np.int64)
