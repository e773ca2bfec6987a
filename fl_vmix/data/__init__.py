"""Image datasets for federated experiments: load by name, cache decoded arrays, partition across clients.

Quick use::

    from fl_vmix.data import load_dataset, load_client_data
    train = load_dataset("cifar10", root="../shared/data")          # ImageArrays, uint8 [N,3,32,32]
    client = load_client_data("cifar10", partition_id=3, num_partitions=10, scheme="dirichlet",
                              alpha=0.3, seed=0, root="../shared/data")

Where things live (first match wins):

* data root: ``root=`` argument / config value, then ``$FL_VMIX_DATA``, then ``~/.cache/fl_vmix/data``;
  it may be read-only.
* cache dir (decoded ``.npy`` arrays, partition indices, lock files): ``cache_dir=`` argument, then
  ``$FL_VMIX_CACHE``, then ``~/.cache/fl_vmix``; must be writable.
* downloads (torchvision CIFAR, medmnist): tried only when data is missing, unless ``download=False``
  or ``$FL_VMIX_OFFLINE=1``.

Command line: ``python -m fl_vmix.data stats --dataset cifar10 --root ... --num-partitions 10
--scheme dirichlet --alpha 0.3 --seed 0 --plot labels.png`` (and ``prepare`` to fill the cache).
"""

from fl_vmix.data.client import ClientData, load_client_data, subsample
from fl_vmix.data.errors import DataError
from fl_vmix.data.partition import (
    SCHEMES,
    cached_partitions,
    client_split,
    default_min_partition_size,
    label_counts,
    partition_dataset,
)
from fl_vmix.data.paths import resolve_cache_dir, resolve_data_root
from fl_vmix.data.sources import (
    CIFAR10_CLASSES,
    DATASETS,
    SPLIT_ID_OFFSET,
    DatasetLoader,
    ImageArrays,
    get_loader,
    load_dataset,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "SCHEMES",
    "SPLIT_ID_OFFSET",
    "ClientData",
    "DataError",
    "DatasetLoader",
    "ImageArrays",
    "cached_partitions",
    "client_split",
    "default_min_partition_size",
    "get_loader",
    "label_counts",
    "load_client_data",
    "load_dataset",
    "partition_dataset",
    "resolve_cache_dir",
    "resolve_data_root",
    "subsample",
]
