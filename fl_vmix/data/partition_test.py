"""Partitioning across clients: coverage, determinism, the shape of non-IID skew, and bad input."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fl_vmix.data.errors import DataError
from fl_vmix.data.partition import (
    _translate_flwr_error,
    cached_partitions,
    client_split,
    default_min_partition_size,
    label_counts,
    partition_dataset,
)

LABELS = np.repeat(np.arange(10), 60)  # 600 samples, 10 balanced classes, class-sorted like the JPEG tree


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n)), "every sample in exactly one client"
    assert all(len(p) > 0 and np.all(np.diff(p) > 0) and p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_cover_and_determinism(scheme: str) -> None:
    kwargs = {"seed": 3, "alpha": 0.5, "classes_per_partition": 2}
    parts = partition_dataset(LABELS, 10, scheme, **kwargs)
    _assert_exact_cover(parts, len(LABELS))
    again = partition_dataset(LABELS, 10, scheme, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_dataset(LABELS, 10, scheme, **{**kwargs, "seed": 4})
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_is_balanced_in_size_and_labels() -> None:
    parts = partition_dataset(LABELS, 6, "iid", seed=0)
    assert [len(p) for p in parts] == [100] * 6
    counts = label_counts(LABELS, parts, 10)
    assert (counts > 0).all()  # shuffled before sharding: no client is one class


def test_dirichlet_alpha_controls_skew() -> None:
    skewed = label_counts(LABELS, partition_dataset(LABELS, 5, "dirichlet", seed=0, alpha=0.05), 10)
    flat = label_counts(LABELS, partition_dataset(LABELS, 5, "dirichlet", seed=0, alpha=1000.0), 10)
    assert (skewed > 0).sum(axis=1).mean() < (flat > 0).sum(axis=1).mean()
    assert (flat > 0).all()
    shares = flat / flat.sum(axis=1, keepdims=True)
    assert np.abs(shares - 0.1).max() < 0.06


def test_dirichlet_min_partition_size() -> None:
    parts = partition_dataset(LABELS, 10, "dirichlet", seed=1, alpha=0.3, min_partition_size=30)
    assert min(len(p) for p in parts) >= 30


def test_dirichlet_is_flwr_datasets_plain_dirichlet_partitioner() -> None:
    """The oracle is flwr-datasets itself, called directly: Dirichlet shares without self-balancing (which would
    stop growing clients above the average size: other partitions), then our sorted int64 indices."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    reference = DirichletPartitioner(
        num_partitions=5, partition_by="label", alpha=0.3, min_partition_size=10, self_balancing=False, seed=4
    )
    reference.dataset = datasets.Dataset.from_dict({"label": LABELS, "idx": np.arange(len(LABELS))})
    expected = [np.sort(reference.load_partition(i)["idx"]) for i in range(5)]
    parts = partition_dataset(LABELS, 5, "dirichlet", seed=4, alpha=0.3, min_partition_size=10)
    assert [len(p) for p in parts] == [41, 196, 122, 131, 110]  # self-balancing gives 41, 161, 149, 135, 114
    assert all(np.array_equal(p, e) for p, e in zip(parts, expected, strict=True))


def test_pathological_exact_classes_per_client() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class is used: no warning about unused classes
        parts = partition_dataset(LABELS, 10, "pathological", seed=0, classes_per_partition=3)
    counts = label_counts(LABELS, parts, 10)
    assert ((counts > 0).sum(axis=1) == 3).all()
    assert all(counts[pid, pid % 10] > 0 for pid in range(10))  # first-deterministic: client i holds class i


def test_pathological_unused_classes_warn() -> None:
    with pytest.warns(UserWarning, match=r"leaves classes .* in no client"):
        parts = partition_dataset(LABELS, 2, "pathological", seed=0, classes_per_partition=2)
    assert len(np.concatenate(parts)) < len(LABELS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "dirichlet", "alpha": 0}, r"alpha must be > 0 \(got 0\).*use e\.g\. alpha=0\.5"),
        ({"scheme": "dirichlet", "alpha": -1.0}, r"alpha must be > 0"),
        ({"scheme": "dirichlet", "alpha": float("nan")}, r"alpha must be > 0"),
        ({"num_partitions": 601}, r"num_partitions=601 exceeds the 600 samples of toy: use at most 600 clients"),
        ({"num_partitions": 0}, r"num_partitions must be an integer >= 1"),
        ({"scheme": "shards"}, r"unknown partition scheme 'shards': use one of"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
        ({"scheme": "pathological", "classes_per_partition": 11}, r"classes_per_partition=11 exceeds the 10 classes"),
        ({"scheme": "pathological", "class_assignment": "greedy"}, r"unknown class_assignment"),
        ({"scheme": "dirichlet", "min_partition_size": 0}, r"min_partition_size must be an integer >= 1"),
        (
            {"scheme": "dirichlet", "num_partitions": 100, "min_partition_size": 7},
            r"exceeds the 600 samples of toy: lower min_partition_size or use at most 85 clients",
        ),
        (
            {"scheme": "dirichlet", "num_partitions": 50, "alpha": 0.01, "min_partition_size": 11},
            r"partitioning of the 600 samples of toy into 50 clients .* in 11 draws: raise alpha",
        ),
    ],
)
def test_bad_input_names_the_fix(kwargs: dict, message: str) -> None:
    args = {"num_partitions": 5, "scheme": "iid", "seed": 0, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=message):
            partition_dataset(LABELS, args.pop("num_partitions"), args.pop("scheme"), dataset_name="toy", **args)


def test_pathological_class_too_small_for_its_clients() -> None:
    labels = np.array([0] * 50 + [1] * 2)
    with pytest.raises(DataError, match=r"more clients than it has samples.*class_assignment='deterministic'"):
        partition_dataset(labels, 6, "pathological", seed=0, classes_per_partition=2)


def test_bad_labels() -> None:
    with pytest.raises(DataError, match="non-empty 1-D integer array"):
        partition_dataset(np.zeros((3, 2), int), 2, seed=0)
    with pytest.raises(DataError, match="non-empty 1-D integer array"):
        partition_dataset(np.array([0.5, 1.5]), 2, seed=0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(20, 300),
    num_classes=st.integers(2, 6),
    clients=st.integers(1, 8),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    seed=st.integers(0, 2**16),
)
@example(n=42, num_classes=2, clients=7, scheme="dirichlet", seed=753)  # refused: found by Hypothesis once
def test_property_exact_cover(n: int, num_classes: int, clients: int, scheme: str, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parts = partition_dataset(labels, clients, scheme, seed=seed, alpha=1.0)
        except DataError as error:  # e.g. 42 samples, 7 clients: Dirichlet draws can miss the minimum size
            assume("in 11 draws: raise alpha" not in str(error))  # that one is a correct refusal; others fail
            raise
    _assert_exact_cover(parts, n)


def test_client_split() -> None:
    indices = np.arange(100, 200)
    train, test = client_split(indices, 0.2, seed=(0, 3))
    assert len(train) == 80 and len(test) == 20
    assert np.array_equal(np.sort(np.concatenate([train, test])), indices)
    again = client_split(indices, 0.2, seed=(0, 3))
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, client_split(indices, 0.2, seed=(0, 4))[1])
    assert [len(x) for x in client_split(np.arange(2), 0.01, seed=0)] == [1, 1]  # at least one each side
    assert [len(x) for x in client_split(np.arange(5), 0.0, seed=0)] == [5, 0]
    assert [len(x) for x in client_split(np.arange(1), 0.5, seed=0)] == [1, 0]


def test_client_split_defaults_and_edges() -> None:
    indices = np.arange(100, 200, dtype=np.int32)
    train, test = client_split(indices)  # defaults: a fifth to test, seed 0
    assert all(np.array_equal(a, b) for a, b in zip((train, test), client_split(indices, 0.2, seed=0), strict=True))
    assert train.dtype == test.dtype == np.int64 and indices.dtype == np.int32, "int64 out, the input left alone"
    assert [len(x) for x in client_split(np.arange(4), 0.05, seed=0)] == [3, 1]  # rounds to 0: one to test anyway
    assert [len(x) for x in client_split(np.arange(2), 0.9, seed=0)] == [1, 1]  # rounds to 2: one stays in train
    for bad in (np.arange(6).reshape(2, 3), np.zeros(4)):
        with pytest.raises(DataError, match="indices must be a 1-D integer array"):
            client_split(bad, 0.2, seed=0)


def test_partitioning_defaults(tmp_path: Path) -> None:
    def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    iid = partition_dataset(LABELS, 4, "iid", seed=3)
    dirichlet = partition_dataset(LABELS, 4, "dirichlet", seed=3, alpha=0.5)
    assert same(partition_dataset(LABELS, 4, seed=3), iid)  # default scheme: iid
    assert same(partition_dataset(LABELS, 4, "dirichlet", seed=3), dirichlet)  # default alpha: 0.5
    assert same(cached_partitions(LABELS, 4, seed=3, cache_dir=tmp_path), iid)
    assert same(cached_partitions(LABELS, 4, "dirichlet", seed=3, cache_dir=tmp_path), dirichlet)
    hopeless = dict(seed=0, alpha=0.01, min_partition_size=11)
    for partition in (partition_dataset, functools.partial(cached_partitions, cache_dir=tmp_path)):
        with pytest.raises(DataError, match="samples of the dataset into 50 clients"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the default name in messages
            partition(LABELS, 50, "dirichlet", **hopeless)
    assert label_counts(LABELS, iid, 10).dtype == np.int64


@pytest.mark.parametrize(("samples", "clients", "size"), [(1000, 10, 10), (100, 10, 5), (10, 10, 1), (39, 2, 9)])
def test_default_min_partition_size(samples: int, clients: int, size: int) -> None:
    # flwr's 10 per client, at most half a client's fair share, at least 1
    assert default_min_partition_size(samples, clients) == size


def test_unrecognised_flwr_errors_are_passed_on_with_the_dataset_name() -> None:
    error = _translate_flwr_error(ValueError("odd"), {}, 5, "toy")
    assert str(error) == "partitioning toy failed in flwr-datasets (odd): check the arguments"


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2, False, True])
def test_client_split_bad_fraction(fraction: float) -> None:  # a bool is not a fraction
    with pytest.raises(DataError, match=r"test_fraction must be in \[0, 1\)"):
        client_split(np.arange(10), fraction, seed=0)


def test_client_split_empty() -> None:
    with pytest.raises(DataError, match="empty partition"):
        client_split(np.array([], np.int64), 0.2, seed=0)


def _assert_same_partitions(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected), f"{len(got)} clients, expected {len(expected)}"
    for client, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == np.int64 and np.array_equal(a, b), f"client {client} differs"


@pytest.fixture
def partitioner_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every run of the flwr-datasets partitioner (a cache miss), with its parameters."""
    import fl_vmix.data.partition as partition

    calls: list[dict] = []
    real = partition._run_partitioner

    def counting(labels: np.ndarray, params: dict, dataset_name: str) -> list[np.ndarray]:
        calls.append(dict(params))
        return real(labels, params, dataset_name)

    monkeypatch.setattr(partition, "_run_partitioner", counting)
    return calls


def test_cached_partitions_match_and_are_reused(tmp_path: Path, partitioner_calls: list[dict]) -> None:
    args = dict(seed=5, alpha=0.3, cache_dir=tmp_path, dataset_name="toy/train")
    direct = partition_dataset(LABELS, 7, "dirichlet", seed=5, alpha=0.3)
    partitioner_calls.clear()
    cached = cached_partitions(LABELS, 7, "dirichlet", **args)
    _assert_same_partitions(cached, direct)  # all 7 clients, the last one included
    assert len(partitioner_calls) == 1 and len(list((tmp_path / "partitions").glob("*/meta.json"))) == 1
    for _ in range(2):
        _assert_same_partitions(cached_partitions(LABELS, 7, "dirichlet", **args), direct)
    assert len(partitioner_calls) == 1, "repeat calls must read the cache, not re-run the partitioner"


# Every setting that changes the partitions, one at a time, against the base call.
CACHE_KEY_CHANGES = [
    {"seed": 6},
    {"num_partitions": 6},
    {"alpha": 0.4},
    {"min_partition_size": 3},
    {"labels": LABELS[::-1].copy()},
    {"scheme": "iid"},
    {"scheme": "pathological"},
    {"scheme": "pathological", "classes_per_partition": 3},
    {"scheme": "pathological", "class_assignment": "deterministic"},
]


@pytest.mark.parametrize("change", CACHE_KEY_CHANGES, ids=lambda c: ",".join(f"{k}" for k in c))
def test_every_partitioning_setting_is_in_the_cache_key(
    tmp_path: Path, partitioner_calls: list[dict], change: dict
) -> None:
    base = dict(labels=LABELS, num_partitions=7, scheme="dirichlet", seed=5, alpha=0.3, min_partition_size=None)
    if change.get("scheme") == "pathological" and len(change) > 1:  # a pathological base: its settings vary alone
        base = {**base, "scheme": "pathological", "classes_per_partition": 2, "class_assignment": "first-deterministic"}
    changed = {**base, **change}

    def call(kwargs: dict) -> list[np.ndarray]:
        kwargs = dict(kwargs)
        labels, num = kwargs.pop("labels"), kwargs.pop("num_partitions")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cached_partitions(labels, num, cache_dir=tmp_path, **kwargs)

    expected = {**changed}
    labels, num = expected.pop("labels"), expected.pop("num_partitions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_parts = partition_dataset(labels, num, **expected)
    partitioner_calls.clear()
    call(base)
    got = call(changed)
    assert len(partitioner_calls) == 2, f"{change} must miss the cache: it changes the partitions"
    _assert_same_partitions(got, expected_parts)
    call(base)
    call(changed)
    assert len(partitioner_calls) == 2, "both entries are kept and read back"


def test_settings_a_scheme_ignores_do_not_split_the_cache(tmp_path: Path, partitioner_calls: list[dict]) -> None:
    first = cached_partitions(LABELS, 4, "iid", seed=1, alpha=0.3, cache_dir=tmp_path)
    again = cached_partitions(LABELS, 4, "iid", seed=1, alpha=0.9, classes_per_partition=5, cache_dir=tmp_path)
    assert len(partitioner_calls) == 1
    _assert_same_partitions(again, first)
    assert partitioner_calls[0] == {"scheme": "iid", "num_partitions": 4, "seed": 1}


def test_cached_partitions_validate_before_reading_the_cache(tmp_path: Path) -> None:
    cached_partitions(LABELS, 7, "dirichlet", seed=5, alpha=0.3, cache_dir=tmp_path)
    with pytest.raises(DataError, match="alpha must be > 0"):  # validated even when something is cached
        cached_partitions(LABELS, 7, "dirichlet", seed=5, alpha=0.0, cache_dir=tmp_path)
    with pytest.raises(DataError, match="non-empty 1-D integer array"):
        cached_partitions(LABELS.astype(float), 7, "dirichlet", seed=5, alpha=0.3, cache_dir=tmp_path)


def test_cached_partitions_name_their_dataset(tmp_path: Path) -> None:
    """In the folder name of the cache entry (made safe), its metadata and the messages."""
    parts = cached_partitions(LABELS, 4, "iid", seed=1, dataset_name="med/mnist x", cache_dir=tmp_path)
    (entry,) = (p for p in (tmp_path / "partitions").iterdir() if p.is_dir())  # beside its lock file
    assert entry.name.startswith("med_mnist_x-iid-4-") and len(parts) == 4
    assert json.loads((entry / "meta.json").read_text())["extra"]["dataset"] == "med/mnist x"
    with pytest.raises(DataError, match="exceeds the 600 samples of toy"):
        cached_partitions(
            LABELS, 100, "dirichlet", seed=0, min_partition_size=7, dataset_name="toy", cache_dir=tmp_path
        )
