"""Loading datasets by name from every accepted layout, on tiny copies written by the fixtures."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fl_vmix.data.conftest import class_colour, colour_label, write_cifar_archive, write_image, write_medmnist_npz
from fl_vmix.data.decode import read_archive_members
from fl_vmix.data.errors import DataError
from fl_vmix.data.paths import download_allowed, resolve_cache_dir, resolve_data_root
from fl_vmix.data.sources import CIFAR10_CLASSES, DATASETS, SPLIT_ID_OFFSET, get_loader, load_dataset


def _cache_entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "datasets").iterdir() if p.is_dir())


# ----------------------------------------------------------------------------- roots and names


def test_root_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FL_VMIX_DATA", raising=False)
    monkeypatch.delenv("FL_VMIX_CACHE", raising=False)
    assert resolve_data_root() == Path("~/.cache/fl_vmix/data").expanduser()
    assert resolve_cache_dir() == Path("~/.cache/fl_vmix").expanduser()
    monkeypatch.setenv("FL_VMIX_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("FL_VMIX_CACHE", str(tmp_path / "envcache"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_cache_dir(None) == tmp_path / "envcache"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"  # explicit value wins
    assert resolve_cache_dir(str(tmp_path / "argcache")) == tmp_path / "argcache"
    monkeypatch.setenv("FL_VMIX_DATA", "")  # empty means unset
    assert resolve_data_root() == Path("~/.cache/fl_vmix/data").expanduser()


def test_download_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FL_VMIX_OFFLINE", raising=False)
    assert download_allowed() is True
    monkeypatch.setenv("FL_VMIX_OFFLINE", "1")
    assert download_allowed() is False
    assert download_allowed(True) is True


def test_registry_names() -> None:
    for name in ("cifar10", "cifar100", "imagefolder", "retinamnist", "pneumoniamnist", "pathmnist", "bloodmnist"):
        assert name in DATASETS and get_loader(name).name == name
    assert "chestmnist" not in DATASETS  # multi-label
    assert get_loader("CIFAR-10").name == "cifar10"
    assert get_loader("pathmnist_64").name == "pathmnist_64"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cifar11", r"unknown dataset 'cifar11'.*Did you mean 'cifar10'"),
        ("chestmnist", r"multi-label.*use a single-label one"),
        ("organmnist3d", r"3-D.*use a 2-D flag"),
        ("pathmnist_99", r"unknown dataset"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        get_loader(name)


def test_bad_split(cifar_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown split 'validation'.*use one of"):
        load_dataset("cifar10", cifar_tree, "validation", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"no 'val' split.*use one of \['train', 'test'\]"):
        load_dataset("cifar10", cifar_tree, "val", cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- CIFAR-10


def _check_cifar(data, n: int, split: str) -> None:
    assert data.name == "cifar10" and data.split == split
    assert data.classes == CIFAR10_CLASSES
    assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and data.labels.shape == (n,)
    np.testing.assert_array_equal(colour_label(np.asarray(data.images)), data.labels)  # label k <-> folder k
    np.testing.assert_array_equal(data.ids, np.arange(n) + SPLIT_ID_OFFSET[split])


def test_cifar10_from_jpg_folder(cifar_tree: Path, tmp_path: Path) -> None:
    train = load_dataset("cifar10", cifar_tree, "train", cache_dir=tmp_path / "c", download=False)
    test = load_dataset("cifar10", cifar_tree, "test", cache_dir=tmp_path / "c", download=False)
    _check_cifar(train, 30, "train")
    _check_cifar(test, 20, "test")
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(10), 3))  # class-major, files sorted
    assert len(_cache_entries(tmp_path / "c")) == 1  # both splits decoded into one entry, once
    assert isinstance(load_dataset("cifar10", cifar_tree, cache_dir=tmp_path / "c").images, np.memmap)


def test_cifar10_from_archive_matches_folder(cifar_tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "archive_root"
    write_cifar_archive(root / "cifar10-jpg.tar.xz", cifar_tree / "cifar10-jpg")
    from_archive = load_dataset("cifar10", root, "train", cache_dir=tmp_path / "c", download=False)
    from_folder = load_dataset("cifar10", cifar_tree, "train", cache_dir=tmp_path / "c", download=False)
    _check_cifar(from_archive, 30, "train")
    np.testing.assert_array_equal(from_archive.images, from_folder.images)  # shuffled member order is sorted back
    np.testing.assert_array_equal(from_archive.labels, from_folder.labels)
    assert sorted(os.listdir(root)) == ["cifar10-jpg.tar.xz"]  # nothing written next to the (read-only) source


def test_cifar10_from_torchvision_pickles(cifar_pickles: Path, tmp_path: Path) -> None:
    train = load_dataset("cifar10", cifar_pickles, "train", cache_dir=tmp_path / "c", download=False)
    test = load_dataset("cifar10", cifar_pickles, "test", cache_dir=tmp_path / "c", download=False)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.classes == CIFAR10_CLASSES
    expected_red = np.array([class_colour(c)[0] for c in train.labels])
    assert np.abs(train.images[:, 0].reshape(100, -1).mean(axis=1) - expected_red).max() < 3


def test_cifar10_source_priority(cifar_tree: Path, cifar_pickles: Path, tmp_path: Path) -> None:
    locate = get_loader("cifar10").locate
    write_cifar_archive(cifar_tree / "cifar10-jpg.tar.xz", cifar_tree / "cifar10-jpg")
    assert locate(cifar_tree, False).kind == "jpg-folder"  # extracted folder before archive
    (cifar_pickles / "cifar10-jpg").symlink_to(cifar_tree / "cifar10-jpg")
    assert locate(cifar_pickles, False).kind == "torchvision"  # torchvision layout first


def test_cifar10_missing_says_where_it_looked(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root, cache_dir=tmp_path / "c", download=False)
    text = str(info.value)
    for looked in ("cifar-10-batches-py", "cifar10-jpg/{train,test}", "cifar10-jpg.tar.xz"):
        assert f"{root}/{looked}" in text
    assert "Download: disabled" in text and "FL_VMIX_DATA" in text and "copy cifar10-jpg.tar.xz" in text
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere", cache_dir=tmp_path / "c", download=False)


@pytest.mark.parametrize("kept", [0.2, 0.35, 0.5, 0.65, 0.8, 0.95])
def test_cifar10_truncated_archive(cifar_archive: Path, tmp_path: Path, kept: float) -> None:
    # Cuts anywhere: the decompressed data may stop inside a member, on a header or inside one (the last two
    # end tarfile's stream silently, and a class check on the partial listing would blame the folders).
    archive = cifar_archive / "cifar10-jpg.tar.xz"
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(DataError, match=r"corrupt or truncated.*copy it again"):
        load_dataset("cifar10", cifar_archive, cache_dir=tmp_path / "c", download=False)
    assert not any((tmp_path / "c" / "datasets").glob("*/meta.json"))


def _plain_tar(path: Path, members: int = 3) -> list[int]:
    """An uncompressed tar of ``members`` small JPEG-named files; returns each member header's offset."""
    with tarfile.open(path, "w") as tar:
        for i in range(members):
            info = tarfile.TarInfo(f"cifar10-jpg/train/cat/{i:04d}.jpg")
            info.size = 700
            tar.addfile(info, io.BytesIO(bytes(700)))
    with tarfile.open(path) as tar:
        return [member.offset for member in tar.getmembers()]


@pytest.mark.parametrize("where", ["on a header", "inside a header", "inside member data"])
def test_plain_tar_cut_anywhere_is_truncated(tmp_path: Path, where: str) -> None:
    archive = tmp_path / "plain.tar"
    headers = _plain_tar(archive)
    assert len(list(read_archive_members(archive))) == 3
    cut = {"on a header": headers[2], "inside a header": headers[2] + 100, "inside member data": headers[1] + 900}
    archive.write_bytes(archive.read_bytes()[: cut[where]])
    with pytest.raises(DataError, match=r"plain\.tar is corrupt or truncated.*copy it again"):
        list(read_archive_members(archive))


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_compressed_tar_is_read_whole_and_its_cut_is_named(tmp_path: Path, compression: str) -> None:
    plain = tmp_path / "plain.tar"
    _plain_tar(plain)
    archive = tmp_path / f"a.tar.{compression}"
    with tarfile.open(archive, f"w:{compression}") as tar, tarfile.open(plain) as source:
        for member in source.getmembers():
            tar.addfile(member, source.extractfile(member))
    assert [name for name, _ in read_archive_members(archive)] == [
        f"cifar10-jpg/train/cat/{i:04d}.jpg" for i in range(3)
    ]
    archive.write_bytes(archive.read_bytes()[:-20])  # the compressed stream loses its end
    with pytest.raises(DataError, match=r"corrupt or truncated \((EOFError|ReadError)"):
        list(read_archive_members(archive))


def test_cifar10_corrupt_jpeg_is_named(cifar_tree: Path, tmp_path: Path) -> None:
    bad = cifar_tree / "cifar10-jpg" / "train" / "cat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=r"0001\.jpg is corrupt"):
        load_dataset("cifar10", cifar_tree, cache_dir=tmp_path / "c", download=False)


def test_cifar10_wrong_class_folders(cifar_tree: Path, tmp_path: Path) -> None:
    (cifar_tree / "cifar10-jpg" / "train" / "truck").rename(cifar_tree / "cifar10-jpg" / "train" / "lorry")
    with pytest.raises(DataError, match=r"expected exactly the CIFAR-10 classes.*imagefolder"):
        load_dataset("cifar10", cifar_tree, cache_dir=tmp_path / "c", download=False)


def test_source_change_gets_a_new_cache_entry(cifar_tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    assert len(load_dataset("cifar10", cifar_tree, cache_dir=cache)) == 30
    write_image(cifar_tree / "cifar10-jpg" / "train" / "bird" / "9999.jpg", class_colour(2), size=32, fmt="JPEG")
    data = load_dataset("cifar10", cifar_tree, cache_dir=cache)
    assert len(data) == 31 and int((data.labels == 2).sum()) == 4
    assert len(_cache_entries(cache)) == 2


def test_cifar100_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"(?s)cifar-100-python.*Download: disabled"):
        load_dataset("cifar100", tmp_path, cache_dir=tmp_path / "c", download=False)


# ----------------------------------------------------------------------------- MedMNIST


def test_medmnist_rgb_and_grey(medmnist_root: Path, tmp_path: Path) -> None:
    retina = load_dataset("retinamnist", medmnist_root, "train", cache_dir=tmp_path / "c", download=False)
    assert retina.images.shape == (30, 3, 28, 28) and retina.classes == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(retina.labels, np.arange(30) % 5)
    source = np.load(medmnist_root / "medmnist" / "retinamnist.npz")
    np.testing.assert_array_equal(retina.images, source["train_images"].transpose(0, 3, 1, 2))
    pneumonia = load_dataset("pneumoniamnist", medmnist_root, "val", cache_dir=tmp_path / "c", download=False)
    assert pneumonia.images.shape == (6, 1, 28, 28) and pneumonia.classes == ["normal", "pneumonia"]
    np.testing.assert_array_equal(pneumonia.images[:, 0], np.load(medmnist_root / "pneumoniamnist.npz")["val_images"])
    assert pneumonia.ids[0] == SPLIT_ID_OFFSET["val"]


def test_medmnist_missing_names_path_and_url(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("bloodmnist", tmp_path, cache_dir=tmp_path / "c", download=False)
    text = str(info.value)
    assert f"{tmp_path}/medmnist/bloodmnist.npz" in text and f"{tmp_path}/bloodmnist.npz" in text
    assert "zenodo.org" in text and "save it as" in text


def test_medmnist_corrupt_file(tmp_path: Path) -> None:
    path = write_medmnist_npz(tmp_path / "medmnist" / "dermamnist.npz", channels=3, num_classes=7)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"dermamnist\.npz is corrupt.*download https://zenodo"):
        load_dataset("dermamnist", tmp_path, cache_dir=tmp_path / "c", download=False)


# ----------------------------------------------------------------------------- image folder


def test_imagefolder_train_test(image_folder: Path, tmp_path: Path) -> None:
    train = load_dataset("imagefolder", image_folder, "train", cache_dir=tmp_path / "c")
    test = load_dataset("imagefolder", image_folder, "test", cache_dir=tmp_path / "c")
    assert train.classes == ["cat", "dog", "fish"] and train.images.shape == (24, 3, 16, 16)
    assert test.images.shape == (6, 3, 16, 16)
    np.testing.assert_array_equal(colour_label(np.asarray(train.images)), train.labels)  # PNG and JPEG alike


def test_imagefolder_single_folder_and_grey(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for label, cls in enumerate(("no", "yes")):
        for i in range(4):
            write_image(root / cls / f"{i}.png", (40 + 150 * label,), mode="L")
    data = load_dataset("imagefolder", root, cache_dir=tmp_path / "c")
    assert data.images.shape == (8, 1, 16, 16)  # all grey -> one channel
    np.testing.assert_array_equal(data.images[:, 0, 0, 0], [40] * 4 + [190] * 4)
    with pytest.raises(DataError, match=r"no 'test' split.*client_split"):
        load_dataset("imagefolder", root, "test", cache_dir=tmp_path / "c")


def test_imagefolder_mixed_grey_rgb_becomes_rgb(tmp_path: Path) -> None:
    write_image(tmp_path / "m" / "a" / "grey.png", (77,), mode="L")
    write_image(tmp_path / "m" / "b" / "rgb.png", (1, 2, 3))
    data = load_dataset("imagefolder", tmp_path / "m", cache_dir=tmp_path / "c")
    assert data.images.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(data.images[0, :, 0, 0], [77, 77, 77])


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", r"does not exist: pass root="),
        ("no_classes", r"no class folders.*create one folder per class"),
        ("sizes", r"images differ in size.*resize all images"),
        ("extra_test_class", r"class folders \['bird'\] that .* lacks"),
        ("not_image", r"bad\.png is corrupt or not an image"),
        ("empty_classes", r"no image files"),
    ],
)
def test_imagefolder_errors(tmp_path: Path, setup: str, message: str) -> None:
    root = tmp_path / "imgs"
    if setup != "missing":
        root.mkdir()
    if setup == "sizes":
        write_image(root / "a" / "1.png", (1, 2, 3), size=16)
        write_image(root / "b" / "2.png", (1, 2, 3), size=20)
    elif setup == "extra_test_class":
        write_image(root / "train" / "a" / "1.png", (1, 2, 3))
        write_image(root / "test" / "bird" / "1.png", (1, 2, 3))
    elif setup == "not_image":
        write_image(root / "a" / "1.png", (1, 2, 3))
        (root / "a" / "bad.png").write_bytes(b"definitely not a png")
    elif setup == "empty_classes":
        (root / "a").mkdir()
    with pytest.raises(DataError, match=message):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- cache behaviour at dataset level


def test_truncated_dataset_cache_is_rebuilt(cifar_tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    first = np.asarray(load_dataset("cifar10", cifar_tree, cache_dir=cache).images).copy()
    (entry,) = _cache_entries(cache)
    data = (entry / "train_images.npy").read_bytes()
    (entry / "train_images.npy").write_bytes(data[: len(data) - 1000])
    again = load_dataset("cifar10", cifar_tree, cache_dir=cache)
    np.testing.assert_array_equal(again.images, first)


def _load_in_child(root: str, cache: str, out: str) -> None:
    data = load_dataset("cifar10", root, "test", cache_dir=cache, download=False)
    np.save(out, np.asarray(data.images))


def test_two_processes_loading_first_time_at_once(cifar_tree: Path, tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    outs = [str(tmp_path / f"out{i}.npy") for i in range(3)]
    procs = [ctx.Process(target=_load_in_child, args=(str(cifar_tree), str(tmp_path / "c"), out)) for out in outs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert len(_cache_entries(tmp_path / "c")) == 1
    reference = load_dataset("cifar10", cifar_tree, "test", cache_dir=tmp_path / "c").images
    for out in outs:
        np.testing.assert_array_equal(np.load(out), reference)
