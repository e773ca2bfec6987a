"""Experiment-level privacy attacks (issue 6, items 2-6): every attack against every privacy setting.

The attack library (:mod:`fl_vmix.evaluation.attacks`) holds the attacks themselves; this module runs
them in the setting of a finished federated experiment and writes one report per experiment::

    python -m fl_vmix.evaluation.attack_suite --runs RUN_DIR [RUN_DIR ...] --experiment NAME \
        [--out experiments/results] [--images 8] [--inversion-iterations 300] [--seed 0] \
        [--method visualmixer region_size=16 'block_sizes=[4,2]'] [--all-methods] [--trained]

Inputs. Each ``RUN_DIR`` is a folder written by :mod:`fl_vmix.apps.recorder` (``config.json``,
``model.pt``). Runs are grouped by privacy setting (method and parameters); all must use the same
dataset. ``--method NAME key=value ...`` adds a setting composed from ``conf/privacy/NAME.yaml`` (Hydra
overrides) that has no run of its own, and ``--all-methods`` adds every ``conf/privacy/*.yaml`` not
already present: such settings are attacked with the architecture of the first run (initial weights
only, there is no trained model for them).

Attacks (threat model: ``docs/threat_model.md``):

* ``inversion`` (A1, the server): client 0's training images are obfuscated with the method under a
  fresh client key, the client's update is computed with :func:`~fl_vmix.evaluation.attacks.client_update`
  from the run's *initial* global model (seeded like the server; with ``--trained`` also from the
  final ``model.pt``), and :func:`~fl_vmix.evaluation.attacks.invert_gradients` reconstructs the batch
  with labels inferred from the last layer. The update is one SGD pass over a batch of ``batch_size``
  images repeated ``local_steps`` times (the Inverting-Gradients FedAvg setting), not the run's Adam
  epochs. DP-SGD clients send an Opacus DP-SGD update (per-sample clipping to ``max_grad_norm``,
  Gaussian noise ``noise_multiplier * max_grad_norm``, seeded); central-DP clients send their update
  clipped to ``clipping_norm`` by Flower's own clipping function, because the server adds the noise only
  after aggregation, so the server (the attacker) sees each clipped update noiseless. Cosine matching is
  blind to the update's scale, so clipping alone changes nothing for this attack.
* ``recognition`` (A2): the ``model.pt`` of the run whose method is ``none`` (a classifier trained on
  clear images) classifies the dataset's test images obfuscated with a fresh key.
* ``jigsaw`` (A2): for block-shuffling methods (``visualmixer``, ``block_shuffle``), the obfuscated
  client images are reassembled by edge compatibility with the grid from the config. VisualMixer with a
  VFE target picks a block size per region; the solver is then given the true per-region block sizes
  (an *oracle*, so the result is an upper bound on an attacker who must estimate them). Channel-order
  permutation is not undone. Other methods get a row marked not applicable.
* ``sweep`` (item 6): which VisualMixer settings stop the jigsaw, measured on real test images made
  in-process (no federated run), into ``jigsaw_sweep.csv``.

Success, per attack (the ``success`` column; constants below):

* inversion: mean SSIM of the reconstruction to the *clear* images >= ``INVERSION_SUCCESS_SSIM`` (0.5),
  i.e. the attacker gets a recognisable picture of what the client holds;
* recognition: accuracy above the better chance level (uniform or majority class) with one-sided
  binomial p < ``RECOGNITION_ALPHA`` (0.01);
* jigsaw: at least ``JIGSAW_SUCCESS_IN_PLACE`` (half) of the shuffled blocks back in place, or a
  reassembly with SSIM to clear >= 0.5 that is at least ``JIGSAW_SUCCESS_GAIN`` (0.1) above the SSIM of
  the obfuscated image itself.

Outputs in ``<out>/<experiment>/``: ``attacks.csv`` (:data:`ATTACK_COLUMNS`), ``attacks_grid.png`` (per
setting: clear / obfuscated / inverted / jigsaw-reassembled), ``jigsaw_sweep.csv`` and ``attacks.md``
(tables and findings for the report).
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_vmix.evaluation.attacks import (
    blocks_in_place,
    client_update,
    extract_blocks,
    invert_gradients,
    match_to_references,
    neighbours_correct,
    recognition_accuracy,
    score_reconstruction,
    solve_jigsaw,
)

logger = logging.getLogger("fl_vmix.attacks")

INVERSION_SUCCESS_SSIM = 0.5
RECOGNITION_ALPHA = 0.01
JIGSAW_SUCCESS_IN_PLACE = 0.5
JIGSAW_SUCCESS_SSIM = 0.5
JIGSAW_SUCCESS_GAIN = 0.1
PSNR_CAP = 100.0  # dB for identical images, as in fl_vmix.apps.task (PSNR is infinite there)
SHUFFLE_METHODS = ("visualmixer", "block_shuffle")
TRAINING_METHODS = ("dp_sgd", "central_dp")

ATTACK_COLUMNS = [
    "method", "label", "params", "attack", "model", "batch_size", "local_steps", "n",
    "ssim_to_clear", "psnr_to_clear", "ssim_to_obfuscated", "psnr_to_obfuscated", "obfuscated_ssim_to_clear",
    "accuracy", "chance", "majority_rate", "p_value", "blocks_in_place", "neighbours_correct", "labels_correct",
    "success", "applicable", "seconds", "note",
]
SWEEP_COLUMNS = [
    "region_size", "block_sizes", "target_ratio", "permute_channels", "mean_block_size", "n",
    "blocks_in_place", "neighbours_correct", "obfuscated_ssim_to_clear", "ssim_to_clear", "psnr_to_clear",
    "ssim_gain", "region_mean_ssim_to_clear", "success", "verdict", "seconds",
]

# Item 6: VisualMixer settings whose jigsaw leak is measured (one knob at a time around the default).
DEFAULT_SWEEP: tuple[dict[str, Any], ...] = (
    {"region_size": 4, "block_sizes": [2], "target_ratio": None},
    {"region_size": 4, "block_sizes": [1], "target_ratio": None},
    {"region_size": 8, "block_sizes": [4], "target_ratio": None},
    {"region_size": 8, "block_sizes": [2], "target_ratio": None},
    {"region_size": 8, "block_sizes": [1], "target_ratio": None},
    {"region_size": 16, "block_sizes": [8], "target_ratio": None},
    {"region_size": 16, "block_sizes": [4], "target_ratio": None},
    {"region_size": 16, "block_sizes": [2], "target_ratio": None},
    {"region_size": 8, "block_sizes": [4, 2, 1], "target_ratio": 1.5},
    {"region_size": 8, "block_sizes": [4, 2, 1], "target_ratio": 3.0},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 1.5},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 3.0},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 6.0},
    {"region_size": 8, "block_sizes": [4], "target_ratio": None, "permute_channels": True},
    {"region_size": 8, "block_sizes": [2], "target_ratio": None, "permute_channels": True},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 3.0, "permute_channels": True},
)


class AttackSuiteError(ValueError):
    """The runs or settings cannot be attacked as asked; the message says what to change."""


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class SuiteSettings:
    """Scale of the attacks. Defaults keep one privacy setting to about a minute on one CPU core."""

    images: int = 8  # client images per setting (jigsaw, grid); inversion uses inversion_images
    inversion_images: int | None = None  # None: same as images
    inversion_iterations: int = 300
    inversion_batch_sizes: tuple[int, ...] = (1, 4)
    local_steps: tuple[int, ...] = (1,)
    local_lr: float = 0.01
    tv_weight: float = 0.1
    inversion_restarts: int = 1
    attack_trained: bool = False
    recognition_images: int = 500
    jigsaw_refine_steps: int | None = None
    sweep: tuple[dict[str, Any], ...] = DEFAULT_SWEEP
    sweep_images: int = 16
    grid_images: int = 2
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("images", "inversion_iterations", "inversion_restarts", "recognition_images", "grid_images"):
            if getattr(self, name) < 1:
                raise AttackSuiteError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.inversion_batch_sizes or min(self.inversion_batch_sizes) < 1:
            raise AttackSuiteError(f"inversion batch sizes must be >= 1, got {self.inversion_batch_sizes}")
        if not self.local_steps or min(self.local_steps) < 1:
            raise AttackSuiteError(f"local steps must be >= 1, got {self.local_steps}")
        if max(self.inversion_batch_sizes) > self.n_inversion:
            raise AttackSuiteError(
                f"inversion batch size {max(self.inversion_batch_sizes)} exceeds the {self.n_inversion} images "
                "attacked: raise --images/--inversion-images or lower --inversion-batch-sizes"
            )

    @property
    def n_inversion(self) -> int:
        return self.inversion_images if self.inversion_images is not None else self.images


@dataclass(frozen=True)
class Subject:
    """One privacy setting under attack: the runs that used it (maybe none) and the config to use."""

    method: str
    privacy: dict[str, Any]  # the privacy config group, method included
    config: dict[str, Any]  # experiment config (the first run's, or the reference run's with this privacy)
    runs: tuple[Path, ...] = ()
    label: str = ""

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.privacy.items() if k != "method"}

    @property
    def params_text(self) -> str:
        return params_text(self.privacy)


def params_text(privacy: dict[str, Any]) -> str:
    """Compact, stable text of a privacy setting's parameters (the ``params`` column)."""
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(privacy.items()) if k != "method")


def load_run(path: Path) -> dict[str, Any]:
    """The resolved experiment config of a finished run folder."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise AttackSuiteError(f"{path} holds no config.json: pass folders written by a finished fl_vmix run")
    cfg = json.loads(config.read_text())
    for key in ("dataset", "model", "privacy", "seed"):
        if key not in cfg:
            raise AttackSuiteError(f"{config} lacks '{key}': it is not an fl_vmix experiment config")
    return cfg


def subjects_from_runs(run_dirs: Sequence[Path]) -> list[Subject]:
    """Group runs by privacy setting, in order of first appearance; all must share one dataset."""
    if not run_dirs:
        raise AttackSuiteError("no runs given: pass at least one finished run folder with --runs")
    configs = [(Path(p), load_run(Path(p))) for p in run_dirs]
    datasets: dict[str, list[str]] = {}
    for path, cfg in configs:
        datasets.setdefault(_dataset_id(cfg), []).append(str(path))
    if len(datasets) > 1:
        listing = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in datasets.items())
        raise AttackSuiteError(f"the runs use different datasets ({listing}): run the attack suite once per dataset")
    groups: dict[str, Subject] = {}
    for path, cfg in configs:
        privacy = dict(cfg["privacy"])
        privacy.setdefault("method", "none")
        key = f"{privacy['method']} {params_text(privacy)}"
        if key in groups:
            groups[key] = replace(groups[key], runs=groups[key].runs + (path,))
        else:
            groups[key] = Subject(privacy["method"], privacy, cfg, (path,))
    return label_subjects(list(groups.values()))


def _dataset_id(cfg: dict[str, Any]) -> str:
    dataset = cfg["dataset"]
    return f"{dataset['name']}" + (f"@{dataset['root']}" if dataset.get("root") else "")


def subject_from_spec(reference: dict[str, Any], spec: Sequence[str]) -> Subject:
    """A privacy setting from ``conf/privacy/<name>.yaml`` plus ``key=value`` overrides (Hydra syntax)."""
    from fl_vmix.apps.config import compose_config

    if not spec:
        raise AttackSuiteError("--method needs a privacy method name, e.g. --method visualmixer region_size=16")
    name, overrides = spec[0], list(spec[1:])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise AttackSuiteError(f"--method {name}: overrides must be key=value, got {bad}")
    try:
        privacy = compose_config([f"privacy={name}", *(f"privacy.{o}" for o in overrides)])["privacy"]
    except Exception as err:  # Hydra raises several types for missing groups and bad overrides
        raise AttackSuiteError(f"--method {' '.join(spec)}: {err}; the method needs conf/privacy/{name}.yaml") from err
    config = copy.deepcopy(reference)
    config["privacy"] = privacy
    return Subject(privacy["method"], privacy, config)


def all_method_specs() -> list[list[str]]:
    """Every privacy config shipped in ``conf/privacy``."""
    from fl_vmix.apps.config import conf_dir

    return [[p.stem] for p in sorted((conf_dir() / "privacy").glob("*.yaml"))]


def label_subjects(subjects: list[Subject]) -> list[Subject]:
    """Short unique labels: the method name, plus the parameters that differ among same-method settings."""
    out = []
    for s in subjects:
        same = [t for t in subjects if t.method == s.method]
        if len(same) == 1:
            out.append(replace(s, label=s.method))
            continue
        keys = sorted({k for t in same for k in t.params if any(u.params.get(k) != t.params.get(k) for u in same)})
        text = ",".join(f"{k}={json.dumps(s.params.get(k), separators=(',', ':'))}" for k in keys)
        out.append(replace(s, label=f"{s.method}({text})"))
    return out


# ------------------------------------------------------------------------------------------ helpers
def client_key(seed: int, *fields: str) -> bytes:
    """A fresh 32-byte client key for the attack, reproducible from the suite's seed.

    It is unrelated to the keys the run's clients used (those never leave the nodes); the attacker
    knows neither, which is all the attacks assume.
    """
    return hashlib.sha256("\x1f".join(["fl_vmix-attack-suite", str(seed), *fields]).encode()).digest()


def _generator(seed: int, *fields: str) -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(client_key(seed, "generator", *fields)[:8], "little") >> 1)


def _mean(values: torch.Tensor) -> float:
    return float(values.double().clamp(max=PSNR_CAP).mean())


def initial_global_model(cfg: dict[str, Any]) -> nn.Module:
    """The global model of round 1, seeded exactly as the server seeds it (global RNG left untouched)."""
    from fl_vmix.apps.server_app import initial_model

    with torch.random.fork_rng(devices=[]):
        return initial_model(cfg)


def trained_global_model(cfg: dict[str, Any], run: Path) -> nn.Module:
    """The run's final global model (``model.pt``)."""
    model = initial_global_model(cfg)
    state = torch.load(Path(run) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def _shape(cfg: dict[str, Any]) -> tuple[int, int, int]:
    from fl_vmix.apps.validate import dataset_shape

    return dataset_shape(cfg)


def client_batch(cfg: dict[str, Any], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` seeded-random training images of client 0 of the run: float [n, C, H, W] in [0, 1], labels, real ids."""
    from fl_vmix.apps.validate import client_data_for

    data = client_data_for(cfg, {"partition-id": 0, "num-partitions": int(cfg.get("num_clients", 1))})
    if len(data.train_labels) < n:
        raise AttackSuiteError(f"client 0 holds {len(data.train_labels)} training images, fewer than the {n} asked: lower --images")
    pick = torch.randperm(len(data.train_labels), generator=_generator(seed, "client-batch"))[:n].sort().values.numpy()
    images = torch.from_numpy(np.ascontiguousarray(data.train_images[pick])).float() / 255
    return images, torch.from_numpy(np.asarray(data.train_labels[pick], np.int64)), torch.from_numpy(np.asarray(data.train_ids[pick], np.int64))


def evaluation_images(cfg: dict[str, Any], n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Up to ``n`` seeded-random test images (uint8), labels, ids, and where they came from.

    The dataset's test split when it has one, else client 0's held-out split.
    """
    from fl_vmix.data import load_dataset
    from fl_vmix.data.errors import DataError

    dataset = cfg["dataset"]
    try:
        data = load_dataset(dataset["name"], dataset.get("root"), "test", cache_dir=dataset.get("cache_dir"))
        images, labels, ids, source = data.images, data.labels, data.ids, f"{dataset['name']} test split"
    except DataError:
        from fl_vmix.apps.validate import client_data_for

        client = client_data_for(cfg, {"partition-id": 0, "num-partitions": int(cfg.get("num_clients", 1))})
        images, labels, ids, source = client.test_images, client.test_labels, client.test_ids, "client 0's held-out split"
    pick = torch.randperm(len(labels), generator=_generator(seed, "evaluation"))[:n].sort().values.numpy()
    return np.ascontiguousarray(images[pick]), np.asarray(labels[pick], np.int64), np.asarray(ids[pick], np.int64), source


@dataclass
class Obfuscated:
    """A batch as the client trains on it, with the shuffle parameters when the method shuffles."""

    images: torch.Tensor
    mix_params: Any = None  # fl_vmix.privacy.mixer.MixParams for VisualMixer-based methods
    mixer: Any = None


def build_method(subject: Subject, key: bytes) -> Callable[..., torch.Tensor]:
    from fl_vmix.apps.task import build_image_privacy

    return build_image_privacy(subject.privacy, key)


def obfuscate_batch(method: Callable[..., torch.Tensor], images: torch.Tensor, ids: torch.Tensor) -> Obfuscated:
    """Apply a privacy method (epoch 0); VisualMixer methods also return their parameters."""
    mixer = getattr(method, "mixer", None)
    if mixer is not None:
        result = mixer.mix(images, ids, 0)
        return Obfuscated(result.images, result.params, mixer)
    return Obfuscated(method(images, ids, 0))


# --------------------------------------------------------------------------- update simulations (A1)
def dp_sgd_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    lr: float = 0.01,
    local_steps: int = 1,
    generator: torch.Generator | None = None,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """What a DP-SGD client sends, ``w_before - w_after`` after ``local_steps`` Opacus DP-SGD steps on one batch.

    Each step clips every sample's gradient to ``max_grad_norm`` (flat L2 over all parameters), sums,
    adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` and divides by the batch size, as
    Opacus' ``DPOptimizer`` does in training (here on a fixed batch, no Poisson sampling). The noise
    draws from ``generator``. The model is not modified. ``noise_multiplier=0`` gives clipping only.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise ValueError(f"need noise_multiplier >= 0 and max_grad_norm > 0, got {noise_multiplier}, {max_grad_norm}")
    if local_steps < 1:
        raise ValueError(f"local_steps must be >= 1, got {local_steps}")
    local = copy.deepcopy(model)
    before = [p.detach().clone() for p in local.parameters() if p.requires_grad]
    wrapped = GradSampleModule(local)
    optimizer = DPOptimizer(
        torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=lr),
        noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
        expected_batch_size=int(images.shape[0]), generator=generator,
    )
    inputs = input_transform(images) if input_transform is not None else images
    with warnings.catch_warnings():
        # Opacus' hooks fire on module outputs because the images need no gradient: expected here
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for _ in range(local_steps):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(wrapped(inputs), labels).backward()
            optimizer.step()
    after = [p.detach() for p in local.parameters() if p.requires_grad]
    wrapped._close()  # remove Opacus' hooks from the copy
    return [b - a for b, a in zip(before, after)]


def central_dp_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    clipping_norm: float,
    lr: float = 0.01,
    local_steps: int = 1,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """What the server sees from a central-DP client: its update clipped to ``clipping_norm``.

    Flower's client-side fixed clipping scales the whole update by ``min(1, clipping_norm / ||u||)``
    (its own ``clip_inputs_inplace`` is used here); the Gaussian noise is added by the server to the
    *aggregate*, so an honest-but-curious server observes each clipped update without noise.
    """
    from flwr.supercore.differential_privacy import clip_inputs_inplace

    if clipping_norm <= 0:
        raise ValueError(f"clipping_norm must be > 0, got {clipping_norm}")
    update = client_update(model, images, labels, local_steps, lr, input_transform=input_transform)
    arrays = [u.double().numpy().copy() for u in update]
    clip_inputs_inplace(arrays, float(clipping_norm))
    return [torch.from_numpy(a).to(u.dtype) for a, u in zip(arrays, update)]


def observed_update(
    subject: Subject,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    local_steps: int,
    lr: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """The update the server receives from a client of ``subject`` training on ``images``."""
    from fl_vmix.apps.task import normalise

    p = subject.params
    if subject.method == "dp_sgd":
        return dp_sgd_update(
            model, images, labels, noise_multiplier=float(p.get("noise_multiplier", 1.0)),
            max_grad_norm=float(p.get("max_grad_norm", 1.0)), lr=lr, local_steps=local_steps,
            generator=generator, input_transform=normalise,
        )
    if subject.method == "central_dp":
        return central_dp_update(
            model, images, labels, clipping_norm=float(p.get("clipping_norm", 1.0)), lr=lr,
            local_steps=local_steps, input_transform=normalise,
        )
    return client_update(model, images, labels, local_steps, lr, input_transform=normalise)


# ------------------------------------------------------------------------------------------ attacks
def _row(subject: Subject, attack: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in ATTACK_COLUMNS}
    row.update(method=subject.method, label=subject.label, params=subject.params_text, attack=attack, applicable=True)
    row.update(values)
    return row


def inversion_attack(
    subject: Subject,
    model: nn.Module,
    model_tag: str,
    clear: torch.Tensor,
    obfuscated: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    local_steps: int,
    settings: SuiteSettings,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Invert the updates of ``len(clear) // batch_size`` client batches; one CSV row and the
    reconstructions (paired with the images the client trained on)."""
    from fl_vmix.apps.task import normalise

    start = time.perf_counter()
    num_classes, channels, size = _shape(subject.config)
    model.train()  # the client trains in train mode
    n = (clear.shape[0] // batch_size) * batch_size
    recons, labels_ok = [], 0
    for b, lo in enumerate(range(0, n, batch_size)):
        sl = slice(lo, lo + batch_size)
        generator = _generator(settings.seed, "update", subject.label, model_tag, str(batch_size), str(local_steps), str(b))
        update = observed_update(subject, model, obfuscated[sl], labels[sl], local_steps=local_steps, lr=settings.local_lr, generator=generator)
        result = invert_gradients(
            model, update, batch_size=batch_size, image_shape=(channels, size, size), num_classes=num_classes,
            local_steps=local_steps, local_lr=settings.local_lr, iterations=settings.inversion_iterations,
            tv_weight=settings.tv_weight, restarts=settings.inversion_restarts, seed=settings.seed + b,
            input_transform=normalise, device=settings.device,
        )
        labels_ok += int((result.labels.sort().values == labels[sl].sort().values).sum())
        recons.append(match_to_references(result.images, obfuscated[sl]))
    recon = torch.cat(recons)
    score = score_reconstruction(recon, clear[:n], obfuscated[:n])
    base = score_reconstruction(obfuscated[:n], clear[:n])
    ssim_clear = _mean(score.ssim_to_clear)
    note = {
        "dp_sgd": "Opacus DP-SGD update (clipped, noised)",
        "central_dp": "update clipped as by Flower; server noise comes after aggregation",
    }.get(subject.method, "")
    row = _row(
        subject, "inversion", model=model_tag, batch_size=batch_size, local_steps=local_steps, n=n,
        ssim_to_clear=ssim_clear, psnr_to_clear=_mean(score.psnr_to_clear),
        ssim_to_obfuscated=_mean(score.ssim_to_obfuscated), psnr_to_obfuscated=_mean(score.psnr_to_obfuscated),
        obfuscated_ssim_to_clear=_mean(base.ssim_to_clear), labels_correct=labels_ok / n,
        success=ssim_clear >= INVERSION_SUCCESS_SSIM, seconds=time.perf_counter() - start,
        note=f"{settings.inversion_iterations} iterations, tv {settings.tv_weight}, labels inferred"
        + (f"; {note}" if note else ""),
    )
    return row, recon


def recognition_attack(
    subject: Subject,
    clear_model: nn.Module | None,
    test: tuple[np.ndarray, np.ndarray, np.ndarray, str],
    settings: SuiteSettings,
    clear_note: str,
) -> dict[str, Any]:
    """Accuracy of the clear-data model on this setting's obfuscated test images, next to chance."""
    from scipy.stats import binomtest

    from fl_vmix.apps.task import normalise, obfuscate

    if clear_model is None:
        return _row(subject, "recognition", applicable=False, note=clear_note)
    start = time.perf_counter()
    images, labels, ids, source = test
    method = build_method(subject, client_key(settings.seed, "recognition", subject.label))
    split = obfuscate(method, images, labels, ids, epoch=0, region_size=int(subject.privacy.get("region_size", 8)))
    result = recognition_accuracy(clear_model, split.images, split.labels, input_transform=normalise)
    n = int(result["n"])
    baseline = max(result["chance"], result["majority_rate"])
    p_value = binomtest(round(result["accuracy"] * n), n, baseline, alternative="greater").pvalue
    note = f"{n} images of the {source}, fresh key; {clear_note}"
    if subject.method in TRAINING_METHODS:
        note += "; training-level method: the images themselves are clear"
    return _row(
        subject, "recognition", model="clear", n=n, ssim_to_clear=split.ssim, psnr_to_clear=split.psnr,
        obfuscated_ssim_to_clear=split.ssim, accuracy=result["accuracy"], chance=result["chance"],
        majority_rate=result["majority_rate"], p_value=float(p_value), success=bool(p_value < RECOGNITION_ALPHA),
        seconds=time.perf_counter() - start, note=note,
    )


@dataclass
class JigsawOutcome:
    images: torch.Tensor
    blocks_in_place: float
    neighbours_correct: float
    mean_block_size: float
    shuffled_regions: int


def block_size_map(mixer: Any, params: Any, height: int, width: int) -> torch.Tensor:
    """Block side (px) of every region, ``[B, rows, cols]``, from VisualMixer's levels (the key holder's oracle)."""
    rows, cols = -(-height // mixer.region_size), -(-width // mixer.region_size)
    sizes = torch.tensor(mixer.block_sizes, dtype=torch.long)
    return sizes[params.levels.cpu().long()].view(-1, rows, cols)


def true_block_permutation(mixer: Any, params: Any, shape: torch.Size, block_size: int) -> torch.Tensor:
    """The shuffle of ``mixer`` at ``block_size`` in the jigsaw's gather convention, ``[B, C, Ry, Rx, N]``.

    Replays the shuffle (:meth:`VisualMixer.apply`, which needs the key, so this is for scoring only) on
    an image whose values are their own flat indices: each output pixel then holds its source position.
    Entry ``q`` is the source block (row-major in the region) of the top-left pixel of shuffled block
    ``q``; only regions shuffled at ``block_size`` are meaningful. The source *channel* is ignored:
    the jigsaw restores positions, not the channel order.
    """
    batch, channels, height, width = shape
    index = torch.arange(channels * height * width, dtype=torch.float64).view(1, channels, height, width)
    source = mixer.apply(index.expand(batch, -1, -1, -1).contiguous(), params).long()
    top_left = extract_blocks(source, mixer.region_size, block_size)[..., 0, 0]  # [B, C, Ry, Rx, N]
    pixel = top_left % (height * width)
    y, x = pixel // width, pixel % width
    n = mixer.region_size // block_size
    return ((y % mixer.region_size) // block_size) * n + (x % mixer.region_size) // block_size


def jigsaw_with_oracle_sizes(
    obfuscated: torch.Tensor, mixer: Any, params: Any, refine_steps: int | None = None
) -> JigsawOutcome:
    """Reassemble VisualMixer output region by region at each region's true block size, and score the
    placement against the true shuffle.

    The images are what :func:`~fl_vmix.evaluation.attacks.solve_jigsaw_per_region` returns for the
    same block-size map (one :func:`solve_jigsaw` per distinct size, on the images that use it, merged
    by region); doing the loop here keeps each solve's placement, which blocks-in-place needs.
    Regions at ``block == region_size`` are not shuffled and are neither solved nor counted.
    """
    rs = mixer.region_size
    _, c, h, w = obfuscated.shape
    ry, rx = h // rs, w // rs
    size_map = block_size_map(mixer, params, h, w)[:, :ry, :rx]
    out = obfuscated.clone()
    in_place = adjacent = weight = 0.0
    pixel_weighted_size = 0.0
    shuffled = 0
    for size in torch.unique(size_map).tolist():
        if size == rs:
            continue
        regions = size_map == size  # [B, Ry, Rx]
        users = regions.flatten(1).any(1).nonzero().squeeze(1)
        solved = solve_jigsaw(obfuscated[users], rs, size, refine_steps=refine_steps)
        perm = true_block_permutation(mixer, _subset_params(params, users), obfuscated[users].shape, size)
        mask = regions[users].unsqueeze(1).expand(-1, c, -1, -1)  # [U, C, Ry, Rx]
        k = int(mask.sum())
        in_place += blocks_in_place(solved.placement[mask], perm[mask]) * k
        adjacent += neighbours_correct(solved.placement[mask], perm[mask]) * k
        weight += k
        shuffled += int(regions.sum())
        pixel_weighted_size += size * int(regions.sum())
        pixel_mask = regions[users].repeat_interleave(rs, 1).repeat_interleave(rs, 2).unsqueeze(1)
        core = out[users, :, : ry * rs, : rx * rs]
        out[users, :, : ry * rs, : rx * rs] = torch.where(pixel_mask, solved.images[..., : ry * rs, : rx * rs], core)
    nan = float("nan")
    return JigsawOutcome(
        out, in_place / weight if weight else nan, adjacent / weight if weight else nan,
        pixel_weighted_size / shuffled if shuffled else float(rs), shuffled,
    )


def _subset_params(params: Any, users: torch.Tensor) -> Any:
    return replace(params, sample_ids=params.sample_ids[users.to(params.sample_ids.device)], levels=params.levels[users.to(params.levels.device)])


def _jigsaw_success(in_place: float, ssim_reassembled: float, ssim_obfuscated: float) -> bool:
    gain = ssim_reassembled - ssim_obfuscated
    return bool(in_place >= JIGSAW_SUCCESS_IN_PLACE or (ssim_reassembled >= JIGSAW_SUCCESS_SSIM and gain >= JIGSAW_SUCCESS_GAIN))


def jigsaw_verdict(in_place: float, ssim_reassembled: float, ssim_obfuscated: float) -> str:
    """``"leaks"`` (success), ``"partial"`` (no success, but the reassembly is at least
    ``JIGSAW_SUCCESS_GAIN`` SSIM closer to the clear image than the obfuscated one) or ``"holds"``."""
    if _jigsaw_success(in_place, ssim_reassembled, ssim_obfuscated):
        return "leaks"
    return "partial" if ssim_reassembled - ssim_obfuscated >= JIGSAW_SUCCESS_GAIN else "holds"


def jigsaw_attack(
    subject: Subject, clear: torch.Tensor, obf: Obfuscated, settings: SuiteSettings
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Jigsaw row for a setting (not applicable unless the method shuffles blocks)."""
    if subject.method not in SHUFFLE_METHODS or obf.mixer is None:
        return _row(subject, "jigsaw", applicable=False, note="not applicable: the method does not shuffle blocks"), None
    start = time.perf_counter()
    outcome = jigsaw_with_oracle_sizes(obf.images, obf.mixer, obf.mix_params, settings.jigsaw_refine_steps)
    score = score_reconstruction(outcome.images, clear, obf.images)
    base = score_reconstruction(obf.images, clear)
    ssim_clear, ssim_base = _mean(score.ssim_to_clear), _mean(base.ssim_to_clear)
    oracle = obf.mixer.targeted and len(obf.mixer.block_sizes) > 1
    notes = [
        jigsaw_verdict(outcome.blocks_in_place, ssim_clear, ssim_base),
        f"grid {obf.mixer.region_size} px, mean block {outcome.mean_block_size:.2f} px",
    ]
    if oracle:
        notes.append("per-region block sizes given as an oracle (upper bound)")
    if obf.mixer.permute_channels:
        notes.append("channel order not undone")
    row = _row(
        subject, "jigsaw", model="", n=clear.shape[0], ssim_to_clear=ssim_clear, psnr_to_clear=_mean(score.psnr_to_clear),
        ssim_to_obfuscated=_mean(score.ssim_to_obfuscated), psnr_to_obfuscated=_mean(score.psnr_to_obfuscated),
        obfuscated_ssim_to_clear=ssim_base, blocks_in_place=outcome.blocks_in_place,
        neighbours_correct=outcome.neighbours_correct, success=_jigsaw_success(outcome.blocks_in_place, ssim_clear, ssim_base),
        seconds=time.perf_counter() - start, note="; ".join(notes),
    )
    return row, outcome.images


def region_means(images: torch.Tensor, region_size: int) -> torch.Tensor:
    """Each region replaced by its per-channel mean: what any within-region shuffle leaves intact."""
    pooled = torch.nn.functional.avg_pool2d(images, region_size, ceil_mode=True)
    return pooled.repeat_interleave(region_size, 2).repeat_interleave(region_size, 3)[..., : images.shape[-2], : images.shape[-1]]


def jigsaw_sweep(
    clear: torch.Tensor, ids: torch.Tensor, settings: Sequence[dict[str, Any]], *, seed: int = 0, refine_steps: int | None = None
) -> list[dict[str, Any]]:
    """Item 6: the jigsaw attack against VisualMixer settings, on clear images mixed in-process.

    Each setting is VisualMixer keyword arguments (``region_size``, ``block_sizes``, ``target_ratio``,
    ``permute_channels``, ...) under a fresh key. Rows also give the SSIM of the region-mean image
    (each region's average colour), which every within-region shuffle leaks whatever the key.
    """
    from fl_vmix.privacy import VisualMixer

    rows = []
    for i, kwargs in enumerate(settings):
        start = time.perf_counter()
        mixer = VisualMixer(client_key(seed, "sweep", str(i)), **kwargs)
        mix = mixer.mix(clear, ids, 0)
        outcome = jigsaw_with_oracle_sizes(mix.images, mixer, mix.params, refine_steps)
        score = score_reconstruction(outcome.images, clear)
        base = _mean(score_reconstruction(mix.images, clear).ssim_to_clear)
        ssim_clear = _mean(score.ssim_to_clear)
        rows.append({
            "region_size": mixer.region_size, "block_sizes": json.dumps(list(mixer.block_sizes)),
            "target_ratio": "" if mixer.target_ratio is None else mixer.target_ratio,
            "permute_channels": mixer.permute_channels, "mean_block_size": outcome.mean_block_size, "n": clear.shape[0],
            "blocks_in_place": outcome.blocks_in_place, "neighbours_correct": outcome.neighbours_correct,
            "obfuscated_ssim_to_clear": base, "ssim_to_clear": ssim_clear, "psnr_to_clear": _mean(score.psnr_to_clear),
            "ssim_gain": ssim_clear - base,
            "region_mean_ssim_to_clear": _mean(score_reconstruction(region_means(clear, mixer.region_size), clear).ssim_to_clear),
            "success": _jigsaw_success(outcome.blocks_in_place, ssim_clear, base),
            "verdict": jigsaw_verdict(outcome.blocks_in_place, ssim_clear, base), "seconds": time.perf_counter() - start,
        })
        logger.info("sweep %d/%d %s: in place %.2f, SSIM %.3f -> %.3f", i + 1, len(settings), kwargs, outcome.blocks_in_place, base, ssim_clear)
    return rows


# ------------------------------------------------------------------------------------------- suite
@dataclass
class SubjectResult:
    subject: Subject
    rows: list[dict[str, Any]] = field(default_factory=list)
    clear: torch.Tensor | None = None
    obfuscated: torch.Tensor | None = None
    inverted: torch.Tensor | None = None
    reassembled: torch.Tensor | None = None


def find_clear_model(subjects: Sequence[Subject]) -> tuple[nn.Module | None, str]:
    """The classifier trained on clear images: ``model.pt`` of the first ``none`` run."""
    for s in subjects:
        if s.method == "none":
            for run in s.runs:
                if (run / "model.pt").is_file():
                    return trained_global_model(s.config, run).eval(), f"clear model: {run}/model.pt"
    return None, "skipped: no run with privacy.method=none among --runs, so no classifier trained on clear images"


def attack_subject(
    subject: Subject,
    settings: SuiteSettings,
    clear_model: nn.Module | None,
    clear_note: str,
    test: tuple[np.ndarray, np.ndarray, np.ndarray, str] | None,
) -> SubjectResult:
    """All attacks against one privacy setting."""
    logger.info("attacking %s (%s)", subject.label, subject.params_text)
    clear, labels, ids = client_batch(subject.config, max(settings.images, settings.n_inversion), settings.seed)
    method = build_method(subject, client_key(settings.seed, "client", subject.label))
    obf = obfuscate_batch(method, clear, ids)
    out = SubjectResult(subject, clear=clear[: settings.images], obfuscated=obf.images[: settings.images])

    models = [("initial", initial_global_model(subject.config))]
    if settings.attack_trained and subject.runs and (subject.runs[0] / "model.pt").is_file():
        models.append(("trained", trained_global_model(subject.config, subject.runs[0])))
    m = settings.n_inversion
    for tag, model in models:
        for steps in settings.local_steps:
            for batch_size in settings.inversion_batch_sizes:
                row, recon = inversion_attack(subject, model, tag, clear[:m], obf.images[:m], labels[:m], batch_size, steps, settings)
                out.rows.append(row)
                if tag == "initial" and batch_size == 1 and steps == settings.local_steps[0] and out.inverted is None:
                    out.inverted = recon
    out.rows.append(recognition_attack(subject, clear_model, test, settings, clear_note) if test is not None
                    else _row(subject, "recognition", applicable=False, note=clear_note))
    head = Obfuscated(obf.images[: settings.images], _head_params(obf.mix_params, settings.images), obf.mixer)
    row, out.reassembled = jigsaw_attack(subject, clear[: settings.images], head, settings)
    out.rows.append(row)
    return out


def _head_params(params: Any, n: int) -> Any:
    return None if params is None else replace(params, sample_ids=params.sample_ids[:n], levels=params.levels[:n])


def run_suite(
    run_dirs: Sequence[Path],
    experiment: str,
    out_root: Path = Path("experiments/results"),
    settings: SuiteSettings | None = None,
    methods: Sequence[Sequence[str]] = (),
) -> Path:
    """Run every attack on every privacy setting of ``run_dirs`` (plus ``methods`` specs); returns the output folder."""
    settings = settings or SuiteSettings()
    if not experiment or "/" in experiment:
        raise AttackSuiteError(f"--experiment must be a plain folder name, got {experiment!r}")
    subjects = subjects_from_runs(run_dirs)
    present = {(s.method, s.params_text) for s in subjects}
    for spec in methods:
        extra = subject_from_spec(subjects[0].config, spec)
        if (extra.method, extra.params_text) not in present:
            subjects.append(extra)
            present.add((extra.method, extra.params_text))
    subjects = label_subjects(subjects)
    out_dir = Path(out_root) / experiment
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    clear_model, clear_note = find_clear_model(subjects)
    if clear_model is None:
        logger.warning("recognition attack %s", clear_note)
    test = evaluation_images(subjects[0].config, settings.recognition_images, settings.seed) if clear_model is not None else None
    results = [attack_subject(s, settings, clear_model, clear_note, test) for s in subjects]
    rows = [r for res in results for r in res.rows]
    write_csv(out_dir / "attacks.csv", rows, ATTACK_COLUMNS)
    write_grid(out_dir / "attacks_grid.png", results, settings.grid_images)

    sweep_rows: list[dict[str, Any]] = []
    sweep_source = ""
    if settings.sweep:
        images, _, ids, sweep_source = evaluation_images(subjects[0].config, settings.sweep_images, settings.seed + 1)
        clear = torch.from_numpy(images).float() / 255
        sweep_rows = jigsaw_sweep(clear, torch.from_numpy(ids), settings.sweep, seed=settings.seed, refine_steps=settings.jigsaw_refine_steps)
        write_csv(out_dir / "jigsaw_sweep.csv", sweep_rows, SWEEP_COLUMNS)
    write_markdown(out_dir / "attacks.md", experiment, subjects, rows, sweep_rows, settings, clear_note, sweep_source, time.perf_counter() - started)
    return out_dir


# ------------------------------------------------------------------------------------------ outputs
def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: (f"{row[c]:.6g}" if isinstance(row.get(c), float) else row.get(c, "")) for c in columns})


def write_grid(path: Path, results: Sequence[SubjectResult], per_row: int) -> None:
    """Per setting (row): for ``per_row`` client images, clear / obfuscated / inverted / jigsaw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("clear", "obfuscated", "inverted (b=1)", "jigsaw")
    per_row = min(per_row, *(r.clear.shape[0] for r in results if r.clear is not None))
    cols = per_row * len(kinds)
    fig, axes = plt.subplots(len(results), cols, figsize=(1.3 * cols, 1.45 * len(results)), squeeze=False)
    for r, res in enumerate(results):
        panels = (res.clear, res.obfuscated, res.inverted, res.reassembled)
        for i in range(per_row):
            for k, (kind, images) in enumerate(zip(kinds, panels)):
                ax = axes[r][i * len(kinds) + k]
                ax.set_xticks([])
                ax.set_yticks([])
                available = images is not None and i < images.shape[0]
                img = (images if available else torch.ones_like(res.clear))[i].detach().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
                if not available:  # same-sized blank panel, so the grid stays aligned
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                if r == 0:
                    ax.set_title(kind, fontsize=7)
        axes[r][0].set_ylabel(res.subject.label.replace("(", "\n(").replace(",", ",\n"), fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k, "")) for _, k in columns) + " |")
    return lines


def write_markdown(
    path: Path,
    experiment: str,
    subjects: Sequence[Subject],
    rows: Sequence[dict[str, Any]],
    sweep_rows: Sequence[dict[str, Any]],
    settings: SuiteSettings,
    clear_note: str,
    sweep_source: str,
    seconds: float,
) -> None:
    """Tables and findings, written to be pasted into the experiment report."""
    inv = [r for r in rows if r["attack"] == "inversion"]
    rec = [r for r in rows if r["attack"] == "recognition" and r["applicable"]]
    jig = [r for r in rows if r["attack"] == "jigsaw" and r["applicable"]]
    na = sorted({r["label"] for r in rows if r["attack"] == "jigsaw" and not r["applicable"]})
    lines = [
        f"# Privacy attacks: {experiment}",
        "",
        (f"Scale: {len(subjects)} privacy settings; gradient inversion on {settings.n_inversion} images of client 0 "
        f"per setting ({settings.inversion_iterations} Adam iterations, TV weight {settings.tv_weight}, labels inferred, "
        f"batch sizes {list(settings.inversion_batch_sizes)}, local SGD steps {list(settings.local_steps)}, "
        f"lr {settings.local_lr}); jigsaw on {settings.images} images; recognition on up to {settings.recognition_images} "
        f"test images; seed {settings.seed}; {seconds / 60:.1f} min on {settings.device}. "
        "Threat model and attacks: docs/threat_model.md."),
        "",
        "Settings:",
        "",
    ]
    lines += [f"- `{s.label}`: `{s.method}` {s.params_text or '(no parameters)'}"
              + (f" (runs: {', '.join(str(p) for p in s.runs)})" if s.runs else " (no run: initial model only)") for s in subjects]
    lines += ["", "## Gradient inversion (server, A1)", ""]
    lines += _table(inv, [("setting", "label"), ("model", "model"), ("batch", "batch_size"), ("steps", "local_steps"),
                          ("SSIM clear", "ssim_to_clear"), ("PSNR clear", "psnr_to_clear"), ("SSIM obf.", "ssim_to_obfuscated"),
                          ("PSNR obf.", "psnr_to_obfuscated"), ("obf. vs clear SSIM", "obfuscated_ssim_to_clear"),
                          ("labels ok", "labels_correct"), ("success", "success")])
    lines += ["", (f"Success: mean SSIM to the clear image >= {INVERSION_SUCCESS_SSIM}. 'obf. vs clear SSIM' is the SSIM of the "
                   "images the client trained on to the clear ones: the most a perfect inversion can show of the clear image."), ""]
    lines += ["## Recognition by a clear-data model (A2)", ""]
    if rec:
        lines += _table(rec, [("setting", "label"), ("accuracy", "accuracy"), ("chance", "chance"), ("majority", "majority_rate"),
                              ("p", "p_value"), ("SSIM to clear", "ssim_to_clear"), ("success", "success")])
        lines += ["", f"{rec[0]['note']}. Success: accuracy above max(chance, majority) with one-sided binomial p < {RECOGNITION_ALPHA}.", ""]
    else:
        lines += [f"Recognition {clear_note}.", ""]
    lines += ["## Jigsaw reassembly (A2)", ""]
    if jig:
        lines += _table(jig, [("setting", "label"), ("blocks in place", "blocks_in_place"), ("neighbours ok", "neighbours_correct"),
                              ("SSIM obf. vs clear", "obfuscated_ssim_to_clear"), ("SSIM reassembled vs clear", "ssim_to_clear"),
                              ("PSNR", "psnr_to_clear"), ("success", "success"), ("note", "note")])
        lines += ["", (f"Success: >= {JIGSAW_SUCCESS_IN_PLACE:.0%} of shuffled blocks back in place, or reassembly SSIM to clear >= "
                       f"{JIGSAW_SUCCESS_SSIM} and >= {JIGSAW_SUCCESS_GAIN} above the obfuscated image's.")]
    lines += [f"Not applicable (no block shuffle): {', '.join(na)}." if na else "", ""]
    if sweep_rows:
        lines += [f"## Which VisualMixer settings stop the jigsaw ({len(sweep_rows)} settings, {sweep_rows[0]['n']} images of the {sweep_source})", ""]
        lines += _table(sweep_rows, [("region", "region_size"), ("blocks", "block_sizes"), ("target ratio", "target_ratio"),
                                     ("perm. channels", "permute_channels"), ("mean block", "mean_block_size"),
                                     ("in place", "blocks_in_place"), ("SSIM obf.", "obfuscated_ssim_to_clear"),
                                     ("SSIM reassembled", "ssim_to_clear"), ("gain", "ssim_gain"),
                                     ("SSIM region means", "region_mean_ssim_to_clear"), ("success", "success"),
                                     ("verdict", "verdict")])
        lines.append("")
    lines += ["## Findings", ""] + findings(rows, sweep_rows) + [""]
    path.write_text("\n".join(lines))


def findings(rows: Sequence[dict[str, Any]], sweep_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Plain statements drawn from the numbers (no judgement beyond the success rules)."""
    out = []
    check = [r for r in rows if r["attack"] == "inversion" and r["method"] == "none" and r["batch_size"] == 1 and r["model"] == "initial"]
    if check:
        c = check[0]
        verdict = "recognisable, so the attack is strong enough for low scores elsewhere to mean something" if c["success"] else (
            "NOT recognisable at this scale: the attack is too weak here, and low inversion scores of other settings prove nothing")
        out.append(f"- Attack check: on an unprotected client (batch 1, initial model) inversion reaches SSIM {c['ssim_to_clear']:.3f} "
                   f"(PSNR {c['psnr_to_clear']:.1f} dB) to the clear image: {verdict}.")
        trained = [r for r in rows if r["attack"] == "inversion" and r["method"] == "none" and r["batch_size"] == 1 and r["model"] == "trained"]
        if trained:
            out.append(f"- From the trained global model the same attack reaches only SSIM {trained[0]['ssim_to_clear']:.3f} on the "
                       "unprotected client at this scale: rows with model=trained understate what a longer attack recovers.")
    else:
        out.append("- Attack check missing: no unprotected (`none`) setting was attacked; add a `none` run or `--method none`.")
    for r in rows:
        if r["attack"] == "inversion" and r["model"] == "initial" and r["batch_size"] == 1 and r["method"] != "none":
            gap = r["ssim_to_obfuscated"] - r["ssim_to_clear"]
            text = f"- `{r['label']}` inversion (batch 1): SSIM {r['ssim_to_clear']:.3f} to clear, {r['ssim_to_obfuscated']:.3f} to the image trained on"
            if gap > 0.1:
                text += "; the update leaks the protected image, which is less like the clear one"
            if r["success"]:
                text += "; SUCCESS: recognisable"
            if r["method"] == "central_dp":
                text += " (the server sees each clipped update before adding noise; clipping only rescales it)"
            out.append(text + ".")
    rec = [r for r in rows if r["attack"] == "recognition" and r["applicable"]]
    if rec:
        clear = next((r["accuracy"] for r in rec if r["method"] == "none"), float("nan"))
        parts = [f"`{r['label']}` {r['accuracy']:.3f}" + ("" if r["success"] else " (not above chance)") for r in rec if r["method"] != "none"]
        out.append(f"- Recognition: the clear-data model scores {clear:.3f} on clear test images (chance {rec[0]['chance']:.3f}, "
                   f"majority {rec[0]['majority_rate']:.3f}) and on protected ones: {', '.join(parts)}.")
    for r in rows:
        if r["attack"] == "jigsaw" and r["applicable"]:
            verdict = r["note"].split(";")[0]
            out.append(f"- `{r['label']}` jigsaw: {r['blocks_in_place']:.0%} of blocks back in place, SSIM {r['obfuscated_ssim_to_clear']:.3f} -> "
                       f"{r['ssim_to_clear']:.3f}: {verdict} ({r['note'].split('; ', 1)[-1]}).")
    if sweep_rows:
        def describe(s: dict[str, Any]) -> str:
            ratio = f" ratio {s['target_ratio']}" if s["target_ratio"] != "" else ""
            return f"{s['region_size']}/{s['block_sizes']}{ratio}{' +channels' if s['permute_channels'] else ''}"

        meanings = {
            "leaks": "reassembles (success)",
            "partial": f"partly restores (SSIM gain >= {JIGSAW_SUCCESS_GAIN}, no success)",
            "holds": f"gains less than {JIGSAW_SUCCESS_GAIN} SSIM on",
        }
        for verdict, meaning in meanings.items():
            group = [describe(s) for s in sweep_rows if s["verdict"] == verdict]
            out.append(f"- Sweep (region px/block px): the jigsaw {meaning} {', '.join(group) if group else 'no setting'}.")
        out.append(f"- Every within-region shuffle keeps each region's mean colour; the region-mean image alone has SSIM "
                   f"{min(s['region_mean_ssim_to_clear'] for s in sweep_rows):.3f}-{max(s['region_mean_ssim_to_clear'] for s in sweep_rows):.3f} "
                   "to the clear image (a key-independent leak no block setting removes; smaller regions leak more).")
    return out


# --------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fl_vmix.evaluation.attack_suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="finished run folders (config.json, model.pt)")
    parser.add_argument("--experiment", required=True, help="name of the output folder under --out")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--images", type=int, default=8, help="client images per setting (jigsaw, grid)")
    parser.add_argument("--inversion-images", type=int, default=None, help="images inverted per setting (default: --images)")
    parser.add_argument("--inversion-iterations", type=int, default=300)
    parser.add_argument("--inversion-batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--local-steps", type=int, nargs="+", default=[1])
    parser.add_argument("--local-lr", type=float, default=0.01)
    parser.add_argument("--tv-weight", type=float, default=0.1)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--trained", action="store_true", help="also invert updates computed from each run's final model.pt")
    parser.add_argument("--recognition-images", type=int, default=500)
    parser.add_argument("--refine-steps", type=int, default=None, help="jigsaw swap-refinement rounds (default 2N)")
    parser.add_argument("--sweep-images", type=int, default=16)
    parser.add_argument("--no-sweep", action="store_true", help="skip the VisualMixer jigsaw sweep")
    parser.add_argument("--grid-images", type=int, default=2)
    parser.add_argument("--method", nargs="+", action="append", default=[], metavar="NAME [KEY=VALUE ...]",
                        help="also attack conf/privacy/NAME.yaml with overrides (repeatable)")
    parser.add_argument("--all-methods", action="store_true", help="also attack every conf/privacy/*.yaml setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for the inversion optimisation")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared CPU two threads ran the inversion 15x slower)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SuiteSettings(
        images=args.images, inversion_images=args.inversion_images, inversion_iterations=args.inversion_iterations,
        inversion_batch_sizes=tuple(args.inversion_batch_sizes), local_steps=tuple(args.local_steps), local_lr=args.local_lr,
        tv_weight=args.tv_weight, inversion_restarts=args.restarts, attack_trained=args.trained,
        recognition_images=args.recognition_images, jigsaw_refine_steps=args.refine_steps,
        sweep=() if args.no_sweep else DEFAULT_SWEEP, sweep_images=args.sweep_images, grid_images=args.grid_images,
        seed=args.seed, device=args.device,
    )
    methods = list(args.method) + (all_method_specs() if args.all_methods else [])
    out = run_suite(args.runs, args.experiment, args.out, settings, methods)
    print(f"attack results in {out}: attacks.csv, attacks_grid.png, attacks.md" + (", jigsaw_sweep.csv" if settings.sweep else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
