"""Grade one setting: run its stages, write ``attacks/<stem>.json`` after each, resume a partial grade.

A grade records the command, the commit, the budgets, the victims and public data, every attack's
scores and time, and the privacy axis: ``attack_ssim`` (the highest SSIM to clear over the attacks),
``attack_recognition`` (the highest recognition accuracy) and the attacks that reached them. A stage
already in the file is reused when the budgets it depends on are unchanged, so an interrupted grading
loses at most the stage it was in.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from fl_vmix.evaluation.attack_grade.config import GradeConfig
from fl_vmix.evaluation.attack_grade.data import GradeData
from fl_vmix.evaluation.attack_grade.settings import GradeSetting
from fl_vmix.evaluation.attack_grade.stages import STAGES, StageContext, protect_victims, recognition
from fl_vmix.evaluation.attacks.frontier import privacy_axis

CLEAR_ATTACK = "clear images"


def commit(cwd: Path | None = None, paths: Sequence[str] = ()) -> str:
    """HEAD of the checkout at ``cwd`` (default: the current folder), with ``-dirty`` when tracked files differ
    from it (only those under ``paths``, relative to ``cwd``, when given); empty outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=cwd
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths], capture_output=True, text=True,
            check=False,
            cwd=cwd,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("-dirty" if status.stdout.strip() else "")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finite(value: Any) -> Any:
    """NaN and infinities as None: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write atomically: an interruption leaves the previous file, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(_finite(record), indent=2, allow_nan=False) + "\n")
    partial.replace(path)


def read_grade(path: Path, setting: GradeSetting) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if [record.get("dataset"), record.get("method"), record.get("setting")] != [
        setting.dataset,
        setting.method,
        setting.stem,
    ]:
        raise ValueError(f"{path} grades another setting ({record.get('setting')}): move it away")
    return record


def summarise(setting: GradeSetting, attacks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The privacy axis of one setting from its attacks (frontier.privacy_axis: the maxima and who reached them)."""
    rows = [
        {
            "setting": setting.stem,
            "attack": CLEAR_ATTACK if setting.method == "none" else name,
            "ssim_to_clear": result.get("ssim"),
            "accuracy": result.get("recognition"),
        }
        for name, result in attacks.items()
        if result.get("applicable", True)
    ]
    axis = privacy_axis(rows, setting=("setting",)) if rows else [{}]
    best = axis[0]
    by = best.get("attack_ssim_by")
    winner = attacks.get("obfuscated" if by == CLEAR_ATTACK else str(by), {})
    return {
        "attack_ssim": best.get("attack_ssim"),
        "attack_ssim_by": by,
        "attack_ssim_se": winner.get("ssim_se", math.nan),
        "attack_recognition": best.get("attack_recognition"),
        "attack_recognition_by": best.get("attack_recognition_by"),
    }


def grade_setting(
    setting: GradeSetting,
    data: GradeData,
    config: GradeConfig,
    clear_model: nn.Module,
    clear_training: dict[str, Any],
    path: Path,
    command: str,
    log: Callable[[str], None] = print,
    *,
    fresh: bool = False,
    rerun: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run (or resume) every stage on ``setting`` and write its grade to ``path`` after each stage;
    ``fresh`` ignores what ``path`` holds (every stage runs again), ``rerun`` names stages to run again."""
    start = time.perf_counter()
    record = {} if fresh else read_grade(path, setting) or {}
    record.pop("complete", None)
    factory, obfuscated = protect_victims(setting, data, config.seed)
    context = StageContext(setting, data, config, factory, obfuscated, clear_model, log)
    on_clear = recognition(context, clear_model, data.victims)
    record.update(
        {
            "setting": setting.stem,
            "dataset": setting.dataset,
            "method": setting.method,
            "params": setting.params,
            "report_settings": list(setting.labels),
            "settings_from": "results.csv params column" if setting.from_csv else "the runs' config.json",
            "command": command,
            "commit": commit(),
            "config": config.as_dict(),
            **data.describe(),
            "victim_key": "SHA-256 of the seed and the setting: the victims' key, never given to an attack",
            "attacker": "knows the method and its public settings, the clear public images, its own keys",
            "chance": 1 / data.num_classes,
            "majority_rate": float(data.victim_labels.bincount().max()) / data.victim_labels.numel(),
            "clear_classifier": {**clear_training, "accuracy_on_clear_victims": on_clear["recognition"]},
        }
    )
    record.setdefault("started", now())
    stages: dict[str, Any] = record.setdefault("stages", {})
    attacks: dict[str, Any] = record.setdefault("attacks", {})
    for name, run in STAGES.items():
        key = config.stage_key(name)
        if name in attacks and stages.get(name, {}).get("key") == key and name not in rerun:
            log(f"  {name}: done before, kept")
            continue
        log(f"  {name}: running")
        began = time.perf_counter()
        attacks[name] = run(context)
        stages[name] = {"key": key, "seconds": time.perf_counter() - began, "finished": now()}
        shown = {k: attacks[name][k] for k in ("ssim", "recognition", "reason") if attacks[name].get(k) is not None}
        log(f"  {name}: {shown} in {stages[name]['seconds']:.0f} s")
        write_json(path, record)
    record.update(summarise(setting, attacks))
    record["timings"] = {name: stages[name]["seconds"] for name in STAGES}
    record["seconds_this_call"] = time.perf_counter() - start
    record["finished"] = now()
    record["complete"] = True
    write_json(path, record)
    return record
