"""The privacy axis of a report: which attack grade belongs to which row, and the columns it adds.

An image-level privacy setting is a dataset, a method and the method's public parameters; runs that
differ only in their seed, model, optimiser or data split protect their images the same way and share
one grade. ``python -m fl_vmix.evaluation.attack_grade`` writes each setting's grade to
``<experiment>/attacks/<stem>.json`` (:func:`setting_stem`); this module reads them back and gives every
row of ``results.csv`` its columns (:data:`ATTACK_COLUMNS`):

* ``attack_ssim``: the highest mean SSIM to the clear images any attack reached (lower is more
  private), ``attack_ssim_by`` the attack that reached it;
* ``attack_recognition``: the highest recognition accuracy any attack reached, ``attack_recognition_by``;
* ``attack_note``: why a row has no grade (training-level DP: the images are never obfuscated) or
  what its grade means (no privacy: the images are clear, SSIM 1).

Nothing here imports torch: the report reads grades without running attacks.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ATTACKS_DIR = "attacks"
ATTACK_COLUMNS = ["attack_ssim", "attack_ssim_by", "attack_recognition", "attack_recognition_by", "attack_note"]
CLEAR_NOTE = "no privacy: the images are clear (SSIM 1)"
TRAINING_LEVEL_NOTE = (
    "training-level DP: images are never obfuscated, so image attacks do not apply; the relevant attack is "
    "gradient inversion of client updates (not graded here)"
)
UNGRADED_NOTE = "not graded yet: run python -m fl_vmix.evaluation.attack_grade"
TRAINING_LEVEL = ("dp_sgd", "central_dp")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")  # no commas: Flower's FAB manifest is comma-separated
_MAX_STEM = 150


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The method's public parameters as JSON values (tuples as lists), sorted by name."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in sorted(value.items())}
        return value

    return {str(k): plain(v) for k, v in sorted(params.items())}


def setting_stem(dataset: str, method: str, params: Mapping[str, Any]) -> str:
    """The file stem of a setting's grade: ``cifar10-visualmixer-block_sizes=2.1+mode=static+...``.

    Parameters left at None are omitted; a stem longer than 150 characters is cut and gets a hash of
    the full setting, so two settings never share a stem."""
    shown = []
    for key, value in plain_params(params).items():
        if value is None:
            continue
        text = ".".join(map(str, value)) if isinstance(value, list) else str(value)
        shown.append(f"{key}={text}")
    stem = _UNSAFE.sub("_", "-".join([dataset, method, *(["+".join(shown)] if shown else [])]))
    if len(stem) > _MAX_STEM:
        canonical = json.dumps([dataset, method, plain_params(params)], sort_keys=True)
        stem = stem[: _MAX_STEM - 9] + "-" + hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return stem


def load_grades(folder: Path) -> dict[str, dict[str, Any]]:
    """The finished grades in ``folder/attacks/`` by stem (partial ones, of an interrupted grading, left out)."""
    grades = {}
    for path in sorted((Path(folder) / ATTACKS_DIR).glob("*.json")):
        grade = json.loads(path.read_text())
        if grade.get("complete"):
            grades[path.stem] = grade
    return grades


def has_grades(folder: Path) -> bool:
    return (Path(folder) / ATTACKS_DIR).is_dir()


def attack_columns(method: str, stem: str, grades: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The attack columns of one row (its method and its setting's stem); hidden ``_attack_*`` fields carry
    the standard error of the strongest SSIM, the chance rate and the learned attack's training steps for the
    report text."""
    grade = grades.get(stem)
    if grade is None:
        note = TRAINING_LEVEL_NOTE if method in TRAINING_LEVEL else UNGRADED_NOTE
        return {
            **dict.fromkeys(ATTACK_COLUMNS[:4]),
            "attack_note": note,
            "_attack_ssim_se": math.nan,
            "_attack_chance": math.nan,
            "_attack_learned_steps": math.nan,
        }
    return {
        "attack_ssim": grade["attack_ssim"],
        "attack_ssim_by": grade["attack_ssim_by"],
        "attack_recognition": grade["attack_recognition"],
        "attack_recognition_by": grade["attack_recognition_by"],
        "attack_note": CLEAR_NOTE if method == "none" else "",
        "_attack_ssim_se": _float(grade.get("attack_ssim_se")),
        "_attack_chance": _float(grade.get("chance")),
        "_attack_learned_steps": _float(grade.get("attacks", {}).get("learned", {}).get("training", {}).get("steps")),
    }


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
