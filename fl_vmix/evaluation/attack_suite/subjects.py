"""What the attack suite attacks: privacy settings (subjects) from finished runs or from ``conf/privacy``,
and the data and models of those runs.

Each run folder is one written by :class:`fl_vmix.recording.RunRecorder` (``config.json``,
``model.pt``). Runs are grouped by privacy setting; the first run's experiment stands for the group.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_vmix.data import DataError, load_dataset
from fl_vmix.evaluation.labels import labels
from fl_vmix.experiment import ConfigError, Experiment, PrivacySettings, compose_config, conf_dir, from_recorded
from fl_vmix.factory import client_data, initial_model


class AttackSuiteError(ValueError):
    """The runs or settings cannot be attacked as asked; the message says what to change."""


@dataclass(frozen=True)
class Subject:
    """One privacy setting under attack: the runs that used it (maybe none) and the experiment to use."""

    method: str
    privacy: PrivacySettings
    experiment: Experiment  # the first run's, or the reference run's with this privacy setting
    runs: tuple[Path, ...] = ()
    label: str = ""  # for tables: the method and every setting that differs between the subjects
    seed_tag: str = ""  # seeds this subject's attack keys and noise: stable across releases (see label_subjects)

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters as plain values (lists, not tuples)."""
        return {k: v for k, v in self.experiment.to_dict()["privacy"].items() if k != "method"}

    @property
    def params_text(self) -> str:
        """Compact, stable text of the privacy parameters (the ``params`` column)."""
        return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(self.params.items()))


def load_run(path: Path) -> Experiment:
    """The experiment of a finished run folder (also one written by an earlier fl_vmix)."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise AttackSuiteError(f"{path} holds no config.json: pass folders written by a finished fl_vmix run")
    try:
        return from_recorded(json.loads(config.read_text()))
    except (ConfigError, json.JSONDecodeError, TypeError) as err:
        raise AttackSuiteError(f"{config} is not an fl_vmix experiment config: {err}") from err


def _dataset_id(experiment: Experiment) -> str:
    dataset = experiment.dataset
    return dataset.name + (f"@{dataset.root}" if dataset.root else "")


def subjects_from_runs(run_dirs: Sequence[Path]) -> list[Subject]:
    """Group runs by privacy setting, in order of first appearance; all must share one dataset."""
    if not run_dirs:
        raise AttackSuiteError("no runs given: pass at least one finished run folder with --runs")
    experiments = [(Path(p), load_run(Path(p))) for p in run_dirs]
    datasets: dict[str, list[str]] = {}
    for path, experiment in experiments:
        datasets.setdefault(_dataset_id(experiment), []).append(str(path))
    if len(datasets) > 1:
        listing = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in datasets.items())
        raise AttackSuiteError(f"the runs use different datasets ({listing}): run the attack suite once per dataset")
    groups: dict[str, Subject] = {}
    for path, experiment in experiments:
        subject = Subject(experiment.privacy.method, experiment.privacy, experiment, (path,))
        key = f"{subject.method} {subject.params_text}"
        groups[key] = replace(groups[key], runs=groups[key].runs + (path,)) if key in groups else subject
    return label_subjects(list(groups.values()))


def subject_from_spec(reference: Experiment, spec: Sequence[str]) -> Subject:
    """A privacy setting from ``conf/privacy/<name>.yaml`` plus ``key=value`` overrides (Hydra syntax)."""
    if not spec:
        raise AttackSuiteError("--method needs a privacy method name, e.g. --method visualmixer region_size=16")
    name, overrides = spec[0], list(spec[1:])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise AttackSuiteError(f"--method {name}: overrides must be key=value, got {bad}")
    try:
        privacy = PrivacySettings.parse(
            compose_config([f"privacy={name}", *(f"privacy.{o}" for o in overrides)])["privacy"]
        )
    except Exception as err:  # Hydra raises several types for missing groups and bad overrides
        raise AttackSuiteError(f"--method {' '.join(spec)}: {err}; the method needs conf/privacy/{name}.yaml") from err
    return Subject(privacy.method, privacy, reference.replace(privacy=privacy))


def all_method_specs() -> list[list[str]]:
    """Every privacy config shipped in ``conf/privacy``."""
    return [[p.stem] for p in sorted((conf_dir() / "privacy").glob("*.yaml"))]


def label_subjects(subjects: list[Subject]) -> list[Subject]:
    """Labels that name each setting's method and everything that differs between the settings, and the
    seed tags: the method, plus its parameters that differ among same-method subjects (the suite's
    labels before table labels carried every setting; kept so that attack results stay reproducible)."""
    out = []
    for s, label in zip(subjects, labels([s.experiment for s in subjects]), strict=True):
        same = [t for t in subjects if t.method == s.method]
        keys = sorted({k for t in same for k in t.params if any(u.params.get(k) != t.params.get(k) for u in same)})
        text = ",".join(f"{k}={json.dumps(s.params.get(k), separators=(',', ':'))}" for k in keys)
        out.append(replace(s, label=label, seed_tag=f"{s.method}({text})" if len(same) > 1 else s.method))
    return out


# ----------------------------------------------------------------------------------- data and models
def client_key(seed: int, *fields: str) -> bytes:
    """A fresh 32-byte client key for the attack, reproducible from the suite's seed.

    It is unrelated to the keys the run's clients used (those never leave the nodes); the attacker
    knows neither, which is all the attacks assume.
    """
    return hashlib.sha256("\x1f".join(["fl_vmix-attack-suite", str(seed), *fields]).encode()).digest()


def generator(seed: int, *fields: str) -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(client_key(seed, "generator", *fields)[:8], "little") >> 1)


def initial_global_model(experiment: Experiment) -> nn.Module:
    """The global model of round 1, seeded exactly as the server seeds it (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        return initial_model(experiment)


def trained_global_model(experiment: Experiment, run: Path) -> nn.Module:
    """The run's final global model (``model.pt``)."""
    model = initial_global_model(experiment)
    state = torch.load(Path(run) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def client_batch(experiment: Experiment, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` seeded-random training images of client 0 of the run: float [n, C, H, W] in [0, 1], labels, real ids."""
    data = client_data(experiment, {"partition-id": 0, "num-partitions": experiment.num_clients})
    if len(data.train_labels) < n:
        raise AttackSuiteError(
            f"client 0 holds {len(data.train_labels)} training images, fewer than the {n} asked: lower --images"
        )
    pick = torch.randperm(len(data.train_labels), generator=generator(seed, "client-batch"))[:n].sort().values.numpy()
    images = torch.from_numpy(np.ascontiguousarray(data.train_images[pick])).float() / 255
    labels_ = torch.from_numpy(np.asarray(data.train_labels[pick], np.int64))
    return images, labels_, torch.from_numpy(np.asarray(data.train_ids[pick], np.int64))


def evaluation_images(experiment: Experiment, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Up to ``n`` seeded-random test images (uint8), labels, ids, and where they came from.

    The dataset's test split when it has one, else client 0's held-out split.
    """
    dataset = experiment.dataset
    try:
        data = load_dataset(dataset.name, dataset.root, "test", cache_dir=dataset.cache_dir)
        images, labels_, ids, source = data.images, data.labels, data.ids, f"{dataset.name} test split"
    except DataError:
        client = client_data(experiment, {"partition-id": 0, "num-partitions": experiment.num_clients})
        images, labels_, ids, source = (
            client.test_images,
            client.test_labels,
            client.test_ids,
            "client 0's held-out split",
        )
    pick = torch.randperm(len(labels_), generator=generator(seed, "evaluation"))[:n].sort().values.numpy()
    return (
        np.ascontiguousarray(images[pick]),
        np.asarray(labels_[pick], np.int64),
        np.asarray(ids[pick], np.int64),
        source,
    )


def find_clear_model(subjects: Sequence[Subject]) -> tuple[nn.Module | None, str]:
    """The classifier trained on clear images: ``model.pt`` of the first ``none`` run."""
    for s in subjects:
        if s.method == "none":
            for run in s.runs:
                if (run / "model.pt").is_file():
                    return trained_global_model(s.experiment, run).eval(), f"clear model: {run}/model.pt"
    return None, "skipped: no run with privacy.method=none among --runs, so no classifier trained on clear images"
