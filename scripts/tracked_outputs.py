"""Scripts write to outputs/ by default; writing over a file git tracks (a figure the README shows) needs a flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAG = "--overwrite-tracked"


def is_tracked(path: Path) -> bool:
    """True when ``path`` is a file of this repository's git index (False outside a checkout or without git)."""
    try:
        done = subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(path.resolve())],
            cwd=REPO,
            capture_output=True,
            check=False,
        )
    except OSError:
        return False
    return done.returncode == 0


def check_output(path: Path, overwrite: bool, suffix: str) -> None:
    """Exit with the fix, before any work, when ``path`` has another type than ``suffix`` or would overwrite a
    tracked file without ``--overwrite-tracked``."""
    if path.suffix.lower() != suffix:
        sys.exit(f"--out {path}: the figure is a {suffix} image: give a path ending in {suffix}")
    if path.exists() and is_tracked(path) and not overwrite:
        sys.exit(
            f"--out {path} is a file git tracks (a committed figure): pass {FLAG} to replace it on purpose, "
            "or leave --out out to write under outputs/"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
