"""Datasets by name: locate the files under a data root, decode once, serve memory-mapped arrays.

Every dataset comes out the same way, as `ImageArrays`: ``uint8 [N, C, H, W]`` images (C = 1 for
grey, 3 for RGB; channel-first like torch), ``int64 [N]`` labels, the class names, and sample ids
= index in the split plus a per-split offset (`SPLIT_ID_OFFSET`), so ids are unique across splits.

Names (`DATASETS`) and where their files are looked for under the data root (first match wins):

* ``cifar10``: ``cifar-10-batches-py/`` (torchvision layout), ``cifar10-jpg/{train,test}/<class>/*.jpg``,
  ``cifar10-jpg.tar.xz`` (read in place, never extracted), else torchvision download into the root.
* ``cifar100``: ``cifar-100-python/`` (torchvision layout), else torchvision download.
* every 2-D single-label MedMNIST flag (``retinamnist``, ``pneumoniamnist``, ``pathmnist``, ...;
  ``<flag>_64``/``_128``/``_224`` for the larger sizes): ``medmnist/<flag>.npz`` then ``<flag>.npz``,
  else the ``medmnist`` package's download into ``<root>/medmnist/``. Loaded with ``download=False``,
  which does not check the md5 (so re-ordered but complete copies load too).
* ``imagefolder``: the root itself is the dataset: ``train/<class>/<image>`` plus optional
  ``val/`` and ``test/`` with the same class folders, or just ``<class>/<image>`` (then there is
  only a ``train`` split; hold out test data per client with `client_split`). Classes are the
  sorted folder names; all images must share one size; grey-only datasets stay 1-channel.

The data root is resolved by `resolve_data_root` (argument, then ``$FL_VMIX_DATA``, then
``~/.cache/fl_vmix/data``) and may be read-only; decoded arrays go to the cache dir
(`resolve_cache_dir`: argument, then ``$FL_VMIX_CACHE``, then ``~/.cache/fl_vmix``).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from fl_vmix.data.cache import cached_arrays
from fl_vmix.data.decode import decode_images, read_archive_members, read_tree
from fl_vmix.data.errors import DataError
from fl_vmix.data.paths import download_allowed, resolve_cache_dir, resolve_data_root

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_ID_OFFSET = {"train": 0, "test": 10_000_000, "val": 20_000_000}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_ARCHIVE = "cifar10-jpg.tar.xz"
CIFAR10_JPG_DIR = "cifar10-jpg"
MEDMNIST_SUBDIR = "medmnist"

BuildResult = tuple[dict[str, np.ndarray], dict[str, Any]]


@dataclass(frozen=True)
class ImageArrays:
    """One split of a dataset. `images` may be a read-only memory map: copy before writing to it."""

    name: str
    split: str
    images: np.ndarray  # uint8 [N, C, H, W], C in {1, 3}
    labels: np.ndarray  # int64 [N]
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 [N, C, H, W] with C in (1, 3), got {self.images.dtype} {self.images.shape}: "
                f"convert with np.asarray(x, np.uint8) and transpose channels first"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 [N={self.images.shape[0]}], got {self.labels.dtype} {self.labels.shape}: "
                f"pass np.asarray(labels, np.int64).reshape(-1)"
            )
        if self.split not in SPLIT_ID_OFFSET:
            raise ValueError(f"split must be one of {list(SPLIT_ID_OFFSET)}, got {self.split!r}: pick one of those")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def ids(self) -> np.ndarray:
        """Global sample ids: index in the split + `SPLIT_ID_OFFSET[split]` (unique across splits)."""
        return np.arange(len(self), dtype=np.int64) + SPLIT_ID_OFFSET[self.split]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Source:
    """A located copy of a dataset: what identifies it (cache key) and how to decode all its splits.

    `build` returns arrays ``<split>_images`` / ``<split>_labels`` for every split in `splits`, and
    ``{"classes": [...]}``.
    """

    kind: str
    path: Path
    splits: tuple[str, ...]
    fingerprint: dict[str, Any]
    build: Callable[[], BuildResult]


@dataclass(frozen=True)
class DatasetLoader:
    """Registry entry: a dataset name and how to find its files under a data root."""

    name: str
    description: str
    locate: Callable[[Path, bool], Source]  # (data root, download allowed) -> Source


# ----------------------------------------------------------------------------- identity helpers


def _file_id(path: Path) -> dict[str, Any]:
    """Cheap identity of a file (path, size, mtime): a changed or replaced file gets a new cache entry."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _tree_id(split_dirs: Mapping[str, Path], classes: list[str]) -> dict[str, Any]:
    """Identity of a folder tree: per class folder its mtime and entry count (adding/removing files
    changes both; editing a file in place does not: delete the cache entry after in-place edits)."""
    out: dict[str, Any] = {}
    for split, folder in split_dirs.items():
        for cls in classes:
            sub = folder / cls
            if sub.is_dir():
                out[f"{split}/{cls}"] = [sub.stat().st_mtime_ns, len(os.listdir(sub))]
    return {"path": str(next(iter(split_dirs.values())).resolve()), "folders": out}


def _missing(name: str, root: Path, looked: list[str], how: str, download_note: str) -> DataError:
    where = "\n".join(f"  - {item}" for item in looked)
    exists = "" if root.is_dir() else f" (the folder {root} does not exist)"
    return DataError(
        f"{name} not found under data root {root}{exists}. Looked for, in this order:\n{where}\n"
        f"Download: {download_note}.\nFix: {how}; or point the data root at the folder holding these files: "
        f"export FL_VMIX_DATA=/path/to/folder, or dataset.root=/path/to/folder (python -m fl_vmix), "
        f"--root /path/to/folder (python -m fl_vmix.data), root= (Python); or let it download on a machine "
        f"with internet (unset $FL_VMIX_OFFLINE; download=True in Python)."
    )


def _split_arrays(split: str, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{split}_images": images, f"{split}_labels": np.asarray(labels, dtype=np.int64)}


# ----------------------------------------------------------------------------- CIFAR (torchvision)


def _torchvision_cifar(cls_name: str) -> Any:
    import torchvision.datasets as tvd

    return getattr(tvd, cls_name)


def _torchvision_source(cls_name: str, root: Path) -> Source:
    cls = _torchvision_cifar(cls_name)
    folder = root / cls.base_folder
    files = sorted(p for p in folder.iterdir() if p.is_file())
    fingerprint = {"kind": "torchvision", "files": [_file_id(p) for p in files]}

    def build() -> BuildResult:
        arrays: dict[str, np.ndarray] = {}
        classes: list[str] = []
        for split in ("train", "test"):
            try:
                ds = cls(root=str(root), train=split == "train", download=False)
            except Exception as error:  # torchvision raises RuntimeError for missing/corrupt files
                raise DataError(
                    f"{folder} is incomplete or corrupt ({error}): delete that folder and let torchvision "
                    f"download it again (download=True), or replace it with an intact copy of {cls.url}"
                ) from error
            arrays |= _split_arrays(split, np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets))
            classes = list(ds.classes)
        return arrays, {"classes": classes}

    return Source("torchvision", folder, ("train", "test"), fingerprint, build)


def _try_download_cifar(cls_name: str, root: Path) -> str:
    """Let torchvision download+extract into `root`; returns '' on success or the failure text."""
    cls = _torchvision_cifar(cls_name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(root=str(root), train=True, download=True)
        return ""
    except Exception as error:  # network, permission and checksum errors all mean "not available"
        return f"failed ({type(error).__name__}: {error})"


# ----------------------------------------------------------------------------- CIFAR-10 JPEG copies


def _check_cifar10_images(images: np.ndarray, where: Path) -> None:
    if images.shape[1:] != (3, 32, 32):
        raise DataError(
            f"{where} holds images of shape {images.shape[1:]} (C,H,W), not CIFAR-10's (3, 32, 32): "
            f"point the root at a real CIFAR-10 copy, or use name='imagefolder' for other data"
        )


def _check_cifar10_classes(found: set[str], where: Path) -> None:
    if found != set(CIFAR10_CLASSES):
        raise DataError(
            f"{where} has class folders {sorted(found)}, expected exactly the CIFAR-10 classes {CIFAR10_CLASSES}: "
            f"fix the folder names, or use name='imagefolder' for other data"
        )


def _jpg_folder_source(folder: Path) -> Source:
    split_dirs = {s: folder / s for s in ("train", "test") if (folder / s).is_dir()}
    for split_dir in split_dirs.values():
        _check_cifar10_classes({p.name for p in split_dir.iterdir() if p.is_dir()}, split_dir)
    fingerprint = {"kind": "jpg-folder", **_tree_id(split_dirs, CIFAR10_CLASSES)}

    def build() -> BuildResult:
        arrays: dict[str, np.ndarray] = {}
        for split, split_dir in split_dirs.items():
            blobs, names, labels = read_tree(split_dir, CIFAR10_CLASSES)
            images = decode_images(blobs, names)
            _check_cifar10_images(images, split_dir)
            arrays |= _split_arrays(split, images, labels)
        return arrays, {"classes": list(CIFAR10_CLASSES)}

    return Source("jpg-folder", folder, tuple(split_dirs), fingerprint, build)


def _archive_source(archive: Path) -> Source:
    """CIFAR-10 as ``[prefix/]<split>/<class>/<file>.jpg`` members of a tar archive, read without extracting."""

    def build() -> BuildResult:
        members: dict[str, list[tuple[int, str, bytes]]] = {"train": [], "test": []}
        for member, blob in read_archive_members(archive):
            parts = member.split("/")
            if len(parts) < 3 or parts[-3] not in members:
                continue
            split, cls, file = parts[-3:]
            if cls not in CIFAR10_CLASSES:
                _check_cifar10_classes({cls}, archive)
            members[split].append((CIFAR10_CLASSES.index(cls), file, blob))
        arrays: dict[str, np.ndarray] = {}
        for split, items in members.items():
            if not items:
                raise DataError(
                    f"archive {archive} has no {split}/<class>/*.jpg members: it is not the CIFAR-10 JPEG archive "
                    "(expected cifar10-jpg/train/<class>/NNNN.jpg and cifar10-jpg/test/<class>/NNNN.jpg); copy it "
                    "again"
                )
            _check_cifar10_classes({CIFAR10_CLASSES[label] for label, _, _ in items}, archive)
            items.sort(key=lambda item: (item[0], item[1]))  # class-major, then file name: archive order is not trusted
            images = decode_images(
                [b for _, _, b in items], [f"{archive}:{split}/{CIFAR10_CLASSES[c]}/{f}" for c, f, _ in items]
            )
            _check_cifar10_images(images, archive)
            arrays |= _split_arrays(split, images, np.array([c for c, _, _ in items]))
        return arrays, {"classes": list(CIFAR10_CLASSES)}

    return Source("archive", archive, ("train", "test"), {"kind": "archive", **_file_id(archive)}, build)


def _locate_cifar10(root: Path, download: bool) -> Source:
    tv_dir = root / "cifar-10-batches-py"
    jpg_dir = root / CIFAR10_JPG_DIR
    archive = root / CIFAR10_ARCHIVE
    if tv_dir.is_dir():
        return _torchvision_source("CIFAR10", root)
    if (jpg_dir / "train").is_dir() or (jpg_dir / "test").is_dir():
        return _jpg_folder_source(jpg_dir)
    if archive.is_file():
        return _archive_source(archive)
    note = "disabled (download=False or $FL_VMIX_OFFLINE set)"
    if download:
        note = _try_download_cifar("CIFAR10", root) or ""
        if not note and tv_dir.is_dir():
            return _torchvision_source("CIFAR10", root)
    raise _missing(
        "cifar10",
        root,
        [f"{tv_dir}/ (torchvision's python batches)", f"{jpg_dir}/{{train,test}}/<class>/*.jpg", f"{archive}"],
        f"copy {CIFAR10_ARCHIVE} (e.g. from ../shared/data) or torchvision's cifar-10-batches-py/ into {root}",
        note or "failed",
    )


def _locate_cifar100(root: Path, download: bool) -> Source:
    tv_dir = root / "cifar-100-python"
    if tv_dir.is_dir():
        return _torchvision_source("CIFAR100", root)
    note = "disabled (download=False or $FL_VMIX_OFFLINE set)"
    if download:
        note = _try_download_cifar("CIFAR100", root)
        if not note and tv_dir.is_dir():
            return _torchvision_source("CIFAR100", root)
    raise _missing(
        "cifar100",
        root,
        [f"{tv_dir}/ (torchvision's python pickles)"],
        f"extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into {root}",
        note or "failed",
    )


# ----------------------------------------------------------------------------- MedMNIST


@cache
def _medmnist_info() -> dict[str, dict[str, Any]]:
    """The ``medmnist`` package's INFO table (flag -> python_class, task, labels, urls, ...).

    Importing ``medmnist`` itself costs ~3.5 s (it pulls in torch and scikit-learn), too much for
    every client process that only needs the table to recognise a cached dataset's name; so when
    the package is not imported yet, its plain-data ``info.py`` is executed on its own.
    """
    if "medmnist" in sys.modules:
        return sys.modules["medmnist"].INFO
    spec = importlib.util.find_spec("medmnist")
    if spec is None or spec.origin is None:
        raise DataError("the medmnist package is not installed: pip install medmnist (a dependency of fl_vmix)")
    info_spec = importlib.util.spec_from_file_location("_fl_vmix_medmnist_info", Path(spec.origin).parent / "info.py")
    if info_spec is None or info_spec.loader is None:  # pragma: no cover - layout changed: use the package
        import medmnist

        return medmnist.INFO
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO


def _medmnist_flags() -> dict[str, str]:
    """2-D MedMNIST flag -> task (3-D datasets have python classes named ``...MNIST3D``)."""
    return {flag: info["task"] for flag, info in _medmnist_info().items() if not info["python_class"].endswith("3D")}


def _medmnist_source_from_file(flag: str, size: int, file: Path) -> Source:
    def build() -> BuildResult:
        import medmnist

        info = medmnist.INFO[flag]
        cls = getattr(medmnist, info["python_class"])
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            try:
                ds = cls(split=split, root=str(file.parent), download=False, size=size)
                images, labels = np.asarray(ds.imgs), np.asarray(ds.labels)
            except Exception as error:  # np.load raises BadZipFile/ValueError/OSError/KeyError/EOFError
                raise DataError(
                    f"{file} is corrupt or not a MedMNIST file ({type(error).__name__}: {error}): delete it and "
                    f"download {info[f'url{_size_flag(size)}']} again (or copy an intact {file.name})"
                ) from error
            if images.ndim == 3:
                images = images[:, None]
            elif images.ndim == 4 and images.shape[-1] in (1, 3):
                images = images.transpose(0, 3, 1, 2)
            else:
                raise DataError(
                    f"{file} {split}_images has shape {images.shape}, expected [N,H,W] or [N,H,W,C]: replace the file"
                )
            if labels.ndim != 2 or labels.shape[1] != 1:
                raise DataError(
                    f"{file} {split}_labels has shape {labels.shape}, expected [N,1] single labels: replace the file"
                )
            arrays |= _split_arrays(split, np.ascontiguousarray(images, dtype=np.uint8), labels.reshape(-1))
        classes = [info["label"][key] for key in sorted(info["label"], key=int)]
        for split in SPLITS:
            labels = arrays[f"{split}_labels"]
            if labels.size and not 0 <= labels.min() <= labels.max() < len(classes):
                raise DataError(
                    f"{file} {split}_labels hold values {labels.min()}..{labels.max()} but {flag} has "
                    f"{len(classes)} classes: the file is not {flag}; replace it with {file.name} from the MedMNIST "
                    "release"
                )
        return arrays, {"classes": classes}

    return Source("npz", file, SPLITS, {"kind": "npz", **_file_id(file)}, build)


def _size_flag(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def _medmnist_loader(flag: str, size: int) -> DatasetLoader:
    name = f"{flag}{_size_flag(size)}"
    file_name = f"{name}.npz"

    def locate(root: Path, download: bool) -> Source:
        candidates = [root / MEDMNIST_SUBDIR / file_name, root / file_name]
        for file in candidates:
            if file.is_file():
                return _medmnist_source_from_file(flag, size, file)
        note = "disabled (download=False or $FL_VMIX_OFFLINE set)"
        if download:
            import medmnist  # the download needs the package itself

            target = candidates[0].parent
            try:
                target.mkdir(parents=True, exist_ok=True)
                getattr(medmnist, medmnist.INFO[flag]["python_class"])(
                    split="train", root=str(target), download=True, size=size
                )
                return _medmnist_source_from_file(flag, size, candidates[0])
            except Exception as error:  # medmnist wraps every download failure in RuntimeError
                note = f"failed ({type(error).__name__}: {str(error).strip().splitlines()[0]})"
        url = _medmnist_info()[flag][f"url{_size_flag(size)}"]
        raise _missing(name, root, [str(c) for c in candidates], f"download {url} and save it as {candidates[0]}", note)

    return DatasetLoader(name, f"MedMNIST {flag} ({size}x{size}) via the medmnist package", locate)


# ----------------------------------------------------------------------------- image folder


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _locate_imagefolder(root: Path, download: bool) -> Source:
    del download  # users' own data is never downloaded
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist: pass root= (or set $FL_VMIX_DATA) to a folder with "
            f"train/<class>/<image> (and optionally test/<class>/<image>) or <class>/<image>"
        )
    if (root / "train").is_dir():
        split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    else:
        split_dirs = {"train": root}
    classes = _class_dirs(split_dirs["train"])
    if not classes:
        raise DataError(
            f"no class folders in {split_dirs['train']}: expected {root}/train/<class>/<image> "
            f"(and optionally {root}/test/<class>/<image>) or {root}/<class>/<image>; create one folder per class"
        )
    for folder in split_dirs.values():
        extra = sorted(set(_class_dirs(folder)) - set(classes))
        if extra:
            raise DataError(
                f"{folder} has class folders {extra} that {split_dirs['train']} lacks: every split must use the "
                f"train classes {classes}; add them to train or remove them"
            )
    fingerprint = {"kind": "imagefolder", **_tree_id(split_dirs, classes)}

    def build() -> BuildResult:
        blobs: list[bytes] = []
        names: list[str] = []
        per_split: dict[str, np.ndarray] = {}
        for split, folder in split_dirs.items():
            split_blobs, split_names, labels = read_tree(folder, classes)
            if not split_blobs:
                raise DataError(
                    f"{folder} has class folders but no image files (.jpg, .png, ...): "
                    f"add images or remove the empty split folder"
                )
            blobs += split_blobs
            names += split_names
            per_split[split] = labels
        images = decode_images(blobs, names)  # all splits at once: one channel count for all
        arrays: dict[str, np.ndarray] = {}
        start = 0
        for split, labels in per_split.items():
            arrays |= _split_arrays(split, images[start : start + len(labels)], labels)
            start += len(labels)
        return arrays, {"classes": classes}

    return Source("imagefolder", root, tuple(split_dirs), fingerprint, build)


# ----------------------------------------------------------------------------- registry


class _Registry(Mapping[str, DatasetLoader]):
    """Name -> loader. CIFAR and imagefolder entries are static; the MedMNIST ones come from the
    ``medmnist`` package's INFO table, read only when a non-static name is looked up or the
    registry is listed."""

    def __init__(self, static: dict[str, DatasetLoader]) -> None:
        self._static = static
        self._full: dict[str, DatasetLoader] | None = None

    def _all(self) -> dict[str, DatasetLoader]:
        if self._full is None:
            medmnist_entries = {
                flag: _medmnist_loader(flag, 28)
                for flag, task in _medmnist_flags().items()
                if not task.startswith("multi-label")
            }
            self._full = {**self._static, **medmnist_entries}
        return self._full

    def __getitem__(self, key: str) -> DatasetLoader:
        if key in self._static:
            return self._static[key]
        return self._all()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._static or key in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


DATASETS: Mapping[str, DatasetLoader] = _Registry(
    {
        "cifar10": DatasetLoader(
            "cifar10", "CIFAR-10 (torchvision layout, JPEG folder or JPEG tar archive)", _locate_cifar10
        ),
        "cifar100": DatasetLoader("cifar100", "CIFAR-100 (torchvision layout)", _locate_cifar100),
        "imagefolder": DatasetLoader(
            "imagefolder", "your own images: <root>/{train,val,test}/<class>/<image>", _locate_imagefolder
        ),
    }
)
_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image_folder": "imagefolder",
    "image-folder": "imagefolder",
}


def get_loader(name: str) -> DatasetLoader:
    """Registry entry for `name` (case-insensitive; MedMNIST flags may carry a _64/_128/_224 size suffix)."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key in DATASETS:
        return DATASETS[key]
    flags = _medmnist_flags()
    sized = re.fullmatch(r"([a-z]+)_(64|128|224)", key)
    if sized and sized.group(1) in DATASETS and sized.group(1) in flags:
        return _medmnist_loader(sized.group(1), int(sized.group(2)))
    base = sized.group(1) if sized else key
    if base in flags:  # known to medmnist but not single-label images
        raise DataError(
            f"dataset {name!r} is a multi-label MedMNIST dataset ({flags[base]}): fl_vmix partitions need one "
            f"class per image; use a single-label one such as 'retinamnist' or 'pneumoniamnist'"
        )
    if base in _medmnist_info():
        raise DataError(
            f"dataset {name!r} is a 3-D MedMNIST volume dataset, not images: use a 2-D flag such as 'organamnist'"
        )
    close = difflib.get_close_matches(key, list(DATASETS), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise DataError(
        f"unknown dataset {name!r}: use one of {sorted(DATASETS)} "
        f"(MedMNIST names may add a size suffix, e.g. 'pathmnist_64').{hint}"
    )


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> ImageArrays:
    """Load one split of dataset `name` as memory-mapped uint8 images and int64 labels.

    The first call decodes all splits into the cache dir (seconds for CIFAR-10); later calls, in
    any process, memory-map the cached files (milliseconds). See the module docstring for where
    files are looked for and how `root`, `cache_dir` and `download` are resolved.
    """
    loader = get_loader(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {loader.name}: use one of {list(SPLITS)}")
    data_root = resolve_data_root(root)
    source = loader.locate(data_root, download_allowed(download))
    if split not in source.splits:
        fix = (
            "hold out test data per client with client_split/load_client_data(test_fraction=...)"
            if loader.name == "imagefolder"
            else f"use one of {list(source.splits)}"
        )
        raise DataError(f"{loader.name} at {source.path} has no {split!r} split (it has {list(source.splits)}): {fix}")

    def build() -> BuildResult:
        start = time.perf_counter()
        log.info("decoding %s from %s into the cache (once)", loader.name, source.path)
        result = source.build()
        log.info("decoded %s in %.1f s", loader.name, time.perf_counter() - start)
        return result

    arrays, extra = cached_arrays(
        resolve_cache_dir(cache_dir),
        "datasets",
        loader.name,
        {"dataset": loader.name, "source": source.fingerprint},
        build,
    )
    return ImageArrays(
        name=loader.name,
        split=split,
        images=arrays[f"{split}_images"],
        labels=arrays[f"{split}_labels"],
        classes=list(extra["classes"]),
    )
