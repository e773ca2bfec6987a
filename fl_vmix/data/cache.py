"""A tiny on-disk cache of named numpy arrays, safe for many processes.

Why it exists: decoding 60,000 JPEGs takes seconds, and every Flower client process wants the
same arrays every round. So the first load writes plain ``.npy`` files (uint8 images, int64
labels, partition indices) and later loads memory-map them (``np.load(mmap_mode="r")``): the OS
page cache then shares one copy between all client processes and a load costs milliseconds.

Safety rules:

* an entry is a folder ``<cache_dir>/<namespace>/<label>-<key>/`` holding ``<array>.npy`` files
  and ``meta.json``; the key is a hash of everything the content depends on (dataset name,
  source file identity, parameters), so a changed source gets a new entry instead of a stale one;
* builders run under a per-entry `filelock.FileLock`, so two processes never build the same
  entry at once; the second waits and then reads what the first wrote;
* every file is written to a temporary name, fsynced and moved into place with `os.replace`,
  and ``meta.json`` (which records each file's byte size, shape and dtype) is written last and
  removed first on a rebuild; a reader accepts an entry only when ``meta.json`` parses and every
  file matches it, so a truncated or half-written entry is detected and rebuilt, never returned.

Bit flips inside a file of the right size are *not* detected (hashing 180 MB on every load would
cost more than the load); delete the entry folder to force a rebuild.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from fl_vmix.data.errors import DataError

CACHE_FORMAT = 1
META_NAME = "meta.json"

Arrays = dict[str, np.ndarray]
Builder = Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def cache_key(parts: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit key of a JSON-serialisable description of an entry's inputs."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_dir(cache_dir: Path, namespace: str, label: str, parts: Mapping[str, Any]) -> Path:
    """Folder of the entry described by `parts` (human-readable label + hash)."""
    return Path(cache_dir) / namespace / f"{_SAFE.sub('_', label)}-{cache_key(parts)}"


def _load_array(path: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray | None:
    """Memory-map one array, or None when it does not match its recorded shape/dtype."""
    if int(np.prod(shape)) == 0:
        array = np.load(path, allow_pickle=False)  # an empty file cannot be memory-mapped
    else:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    if tuple(array.shape) != shape or str(array.dtype) != dtype:
        return None
    return array


def read_entry(path: Path) -> tuple[Arrays, dict[str, Any]] | None:
    """Arrays and user metadata of a complete, size-checked entry; None when missing or damaged."""
    try:
        meta = json.loads((path / META_NAME).read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        arrays: Arrays = {}
        for name, info in meta["arrays"].items():
            file = path / f"{name}.npy"
            if file.stat().st_size != info["nbytes"]:
                return None
            array = _load_array(file, tuple(info["shape"]), info["dtype"])
            if array is None:
                return None
            arrays[name] = array
        return arrays, meta["extra"]
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def _save_npy(array: np.ndarray, handle: Any) -> None:
    np.save(handle, array, allow_pickle=False)


def _atomic_write(target: Path, write: Callable[[Any], None]) -> None:
    """Write via a unique temporary file in the same folder, fsync, then `os.replace`."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_entry(path: Path, arrays: Mapping[str, np.ndarray], extra: Mapping[str, Any]) -> None:
    """Write a complete entry; meta.json goes last so readers never see a partial entry as valid."""
    path.mkdir(parents=True, exist_ok=True)
    (path / META_NAME).unlink(missing_ok=True)
    info: dict[str, Any] = {}
    for name, array in arrays.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"cache array name {name!r} must be alphanumeric/underscore: rename it")
        array = np.ascontiguousarray(array)
        target = path / f"{name}.npy"
        _atomic_write(target, functools.partial(_save_npy, array))
        info[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "nbytes": target.stat().st_size}
    meta = {"format": CACHE_FORMAT, "arrays": info, "extra": dict(extra)}
    _atomic_write(path / META_NAME, lambda handle: handle.write(json.dumps(meta, indent=1).encode()))


def cached_arrays(
    cache_dir: Path,
    namespace: str,
    label: str,
    parts: Mapping[str, Any],
    build: Builder,
) -> tuple[Arrays, dict[str, Any]]:
    """Return the entry for `parts`, building it with `build()` (once, under a lock) if needed.

    `build` returns ``(arrays, extra)``: the arrays to store and JSON-serialisable metadata.
    Returned arrays are read-only memory maps (copy before modifying in place).
    """
    path = entry_dir(cache_dir, namespace, label, parts)
    found = read_entry(path)  # fast path: no lock needed, entries are immutable once valid
    if found is not None:
        return found
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as error:
        raise DataError(
            f"cannot write the data cache at {path.parent} ({error.strerror or error}): "
            f"pass a writable cache_dir or set $FL_VMIX_CACHE to a writable folder"
        ) from error
    try:
        found = read_entry(path)  # another process may have built it while we waited
        if found is not None:
            return found
        arrays, extra = build()
        write_entry(path, arrays, {"key_parts": dict(parts), **dict(extra)})
        found = read_entry(path)
        if found is None:  # pragma: no cover - only on a failing disk
            raise DataError(f"cache entry {path} was written but does not read back: check the disk, then delete it")
        return found
    finally:
        lock.release()
