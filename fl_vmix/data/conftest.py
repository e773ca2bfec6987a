"""Tiny datasets made in code, in every on-disk layout the loaders accept.

Each CIFAR-like image is a flat colour that encodes its class (`class_colour`), so a test can
check the label order of a decoded dataset from the pixels alone, despite JPEG loss.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fl_vmix.data.sources import CIFAR10_CLASSES


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct flat RGB colour per class (spread so JPEG loss never confuses two classes)."""
    return (25 * label + 10, 255 - 25 * label, (90 * label) % 256)


def colour_label(images: np.ndarray) -> np.ndarray:
    """Recover the class of `class_colour` images [N,3,H,W] by the nearest mean colour."""
    means = images.reshape(len(images), 3, -1).mean(axis=2)
    table = np.array([class_colour(c) for c in range(10)], dtype=float)
    return np.argmin(((means[:, None, :] - table[None]) ** 2).sum(axis=2), axis=1)


def _encode(colour: tuple[int, ...], size: int = 32, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour if mode == "RGB" else colour[0]).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def write_cifar_tree(folder: Path, per_class: dict[str, int] | None = None) -> Path:
    """``folder/{train,test}/<class>/NNNN.jpg`` with flat class colours; returns folder."""
    per_class = per_class or {"train": 3, "test": 2}
    for split, count in per_class.items():
        for label, cls in enumerate(CIFAR10_CLASSES):
            target = folder / split / cls
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (target / f"{i:04d}.jpg").write_bytes(_encode(class_colour(label)))
    return folder


@pytest.fixture
def cifar_tree(tmp_path: Path) -> Path:
    """A data root holding a tiny ``cifar10-jpg/`` folder (3 train + 2 test images per class)."""
    root = tmp_path / "root"
    write_cifar_tree(root / "cifar10-jpg")
    return root


def write_cifar_archive(archive: Path, tree: Path, seed: int = 0) -> Path:
    """A .tar.xz of `tree` under the ``cifar10-jpg/`` prefix, members in shuffled order, plus a README."""
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    random.Random(seed).shuffle(files)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz") as tar:
        readme = b"# tiny CIFAR-10 copy\n"
        info = tarfile.TarInfo("cifar10-jpg/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for file in files:
            tar.add(file, arcname=f"cifar10-jpg/{file.relative_to(tree).as_posix()}")
    return archive


@pytest.fixture
def cifar_archive(tmp_path: Path) -> Path:
    """A data root holding only a tiny ``cifar10-jpg.tar.xz``."""
    tree = write_cifar_tree(tmp_path / "tree")
    root = tmp_path / "archive_root"
    write_cifar_archive(root / "cifar10-jpg.tar.xz", tree)
    return root


@pytest.fixture
def cifar_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with a tiny torchvision ``cifar-10-batches-py/``; torchvision's pinned md5s are
    pointed at these files so its real integrity check runs (and passes) on them."""
    import torchvision.datasets as tvd

    root = tmp_path / "tv_root"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(name: str, n: int) -> list[str]:
        labels = [int(i % 10) for i in range(n)]
        data = np.stack([np.full((3, 32, 32), class_colour(c)[0], np.uint8) for c in labels])
        data = (data + rng.integers(0, 3, data.shape, dtype=np.uint8)).reshape(n, -1)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels}, handle)
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train_list = [batch(f"data_batch_{i}", 20) for i in range(1, 6)]
    test_list = [batch("test_batch", 10)]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, handle)
    meta = dict(tvd.CIFAR10.meta, md5=hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest())
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(tvd.CIFAR10, "meta", meta)
    return root


def write_medmnist_npz(path: Path, channels: int, num_classes: int, counts=(30, 6, 12), seed: int = 0) -> Path:
    """A MedMNIST-format .npz: ``<split>_images`` [N,28,28(,3)] uint8 and ``<split>_labels`` [N,1]."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        shape = (n, 28, 28) if channels == 1 else (n, 28, 28, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def medmnist_root(tmp_path: Path) -> Path:
    """A data root with tiny ``medmnist/retinamnist.npz`` (RGB, 5 classes) and ``pneumoniamnist.npz``
    (grey, 2 classes) directly in the root (both places are searched)."""
    root = tmp_path / "med_root"
    write_medmnist_npz(root / "medmnist" / "retinamnist.npz", channels=3, num_classes=5)
    write_medmnist_npz(root / "pneumoniamnist.npz", channels=1, num_classes=2, seed=1)
    return root


def write_image(path: Path, colour: tuple[int, ...], size: int = 16, mode: str = "RGB", fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode(colour, size=size, mode=mode, fmt=fmt))
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``train/{cat,dog,fish}/`` with 8 images each and ``test/`` with 2 each; PNG and JPEG mixed, 16x16 RGB."""
    root = tmp_path / "imgs"
    for split, count in (("train", 8), ("test", 2)):
        for label, cls in enumerate(("cat", "dog", "fish")):
            for i in range(count):
                fmt = "PNG" if i % 2 else "JPEG"
                write_image(root / split / cls / f"{i}.{fmt.lower()}", class_colour(label), fmt=fmt)
    return root
