"""The image-level privacy settings of an experiment, read from its ``results.csv`` and its runs' configs."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_vmix.evaluation.privacy_axis import TRAINING_LEVEL, plain_params, setting_stem
from fl_vmix.experiment import ConfigError, PrivacySettings, from_recorded

PARAM = re.compile(r"(\w+)=(\[[^\]]*\]|\S+)")  # key=value in results.csv's params column


class GradeError(ValueError):
    """An experiment or a setting that cannot be graded; the message says what to do."""


@dataclass(frozen=True)
class GradeSetting:
    """One image-level privacy setting: what the victims' images go through, whatever the seed or model."""

    dataset: str
    method: str
    params: dict[str, Any]  # public parameters, JSON values, without the key and the run
    root: str | None  # the runs' data root and cache (the grading command may override them)
    cache_dir: str | None
    labels: tuple[str, ...]  # the report settings (rows' ``setting``) that share these images
    from_csv: bool = False  # read from results.csv's params column (the runs' files were not beside the report)

    @property
    def stem(self) -> str:
        return setting_stem(self.dataset, self.method, self.params)


def read_results(folder: Path) -> list[dict[str, str]]:
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise GradeError(
            f"{path} does not exist: write the experiment's report first (python -m fl_vmix.evaluation.report)"
        )
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "run_dir" not in rows[0]:
        raise GradeError(f"{path} has no rows with a run_dir column: write the report again")
    return rows


@dataclass(frozen=True)
class RowSetting:
    """What a results.csv row says about its images: dataset, privacy settings, and where its data lives."""

    dataset: str
    privacy: PrivacySettings
    root: str | None
    cache_dir: str | None
    from_csv: bool  # the run's files were absent: read from the row's method and params (older reports)

    @property
    def stem(self) -> str:
        return setting_stem(self.dataset, self.privacy.method, self.privacy.params)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"True": True, "False": False, "None": None}.get(text, text)


def row_setting(folder: Path, row: dict[str, str]) -> RowSetting:
    """The setting of a results.csv row, from its run's ``config.json`` (or ``summary.json``) copied beside the
    report; for older reports whose runs were never copied (their ``run_dir`` points outside the experiment
    folder, at run folders that may since hold other runs), from the row's ``method`` and ``params`` columns."""
    run = (Path(folder) / row["run_dir"]).resolve()
    raw = None
    if not run.is_relative_to(Path(folder).resolve()):
        pass
    elif (run / "config.json").is_file():
        raw = json.loads((run / "config.json").read_text())
    elif (run / "summary.json").is_file():
        raw = json.loads((run / "summary.json").read_text())["config"]
    try:
        if raw is not None:
            experiment = from_recorded(raw)
            dataset = experiment.dataset
            return RowSetting(dataset.name, experiment.privacy, dataset.root, dataset.cache_dir, False)
        params = {k: _value(v) for k, v in PARAM.findall(row.get("params", ""))}
        return RowSetting(row["dataset"], PrivacySettings.parse({"method": row["method"], **params}), None, None, True)
    except (ConfigError, KeyError) as err:
        raise GradeError(f"the setting of run {run} cannot be read ({err})") from err


def row_label(row: dict[str, str]) -> str:
    """The report setting a row belongs to (older reports, without a ``setting`` column: method and params)."""
    return row.get("setting") or row.get("label") or f"{row['method']} {row.get('params', '')}".strip()


def experiment_settings(folder: Path) -> tuple[list[GradeSetting], list[str]]:
    """The experiment's image-level settings (first appearance first), and the report settings of its
    training-level rows (graded by no image attack)."""
    found: dict[str, GradeSetting] = {}
    training: list[str] = []
    for row in read_results(folder):
        found_in = row_setting(folder, row)
        privacy = found_in.privacy
        label = row_label(row)
        if privacy.method in TRAINING_LEVEL:
            training += [label] if label not in training else []
            continue
        setting = GradeSetting(
            found_in.dataset,
            privacy.method,
            plain_params(privacy.params),
            found_in.root,
            found_in.cache_dir,
            (label,),
            found_in.from_csv,
        )
        known = found.get(setting.stem)
        if known is None:
            found[setting.stem] = setting
        elif label not in known.labels:
            found[setting.stem] = GradeSetting(**{**known.__dict__, "labels": (*known.labels, label)})
    return list(found.values()), training
