"""Where data and caches live.

Resolution order (documented in the package docstring and the README):

* data root:  explicit argument / config value  ->  ``$FL_VMIX_DATA``  ->  ``~/.cache/fl_vmix/data``
* cache dir:  explicit argument / config value  ->  ``$FL_VMIX_CACHE`` ->  ``~/.cache/fl_vmix``

The two are separate on purpose: the data root may be read-only (e.g. ``../shared/data`` in CI),
while decoded arrays, extracted archives and partition indices must be written somewhere.
Downloads are attempted only when allowed: explicit ``download=`` argument, else not when
``$FL_VMIX_OFFLINE`` is truthy, else yes.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "FL_VMIX_DATA"
ENV_CACHE = "FL_VMIX_CACHE"
ENV_OFFLINE = "FL_VMIX_OFFLINE"
DEFAULT_DATA_ROOT = Path("~/.cache/fl_vmix/data")
DEFAULT_CACHE_DIR = Path("~/.cache/fl_vmix")

_TRUTHY = {"1", "true", "yes", "on"}


def _pick(explicit: str | os.PathLike[str] | None, env: str, default: Path) -> Path:
    """First of: explicit value, non-empty environment variable, default; with ``~`` expanded."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    value = os.environ.get(env, "")
    if value:
        return Path(value).expanduser()
    return default.expanduser()


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Data root: `root` if given, else ``$FL_VMIX_DATA``, else ``~/.cache/fl_vmix/data``."""
    return _pick(root, ENV_DATA, DEFAULT_DATA_ROOT)


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Writable cache folder: `cache_dir` if given, else ``$FL_VMIX_CACHE``, else ``~/.cache/fl_vmix``."""
    return _pick(cache_dir, ENV_CACHE, DEFAULT_CACHE_DIR)


def download_allowed(download: bool | None = None) -> bool:
    """Whether loaders may try the network: explicit flag, else not if ``$FL_VMIX_OFFLINE`` is set truthy."""
    if download is not None:
        return bool(download)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in _TRUTHY
