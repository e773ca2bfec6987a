"""Names for experiments side by side: what differs between them, and which clear run each is compared with.

Reports and the attack suite put several runs (or privacy settings) in one table. A row's label
names its privacy method and every setting in which the rows differ, so no two rows read the same
while meaning different runs. A method's accuracy cost is measured against the clear run
(``privacy=none``) that shares every other setting: the same model (with the same invariant-stage
region), optimiser, data, partition, strategy, rounds and seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fl_vmix.experiment import Experiment

# Settings that change where and how a run is executed, not its results. (``amp`` changes results and is
# not one of them; ``device`` changes floating-point rounding only.)
RUN_ONLY = (
    "experiment",
    "output_dir",
    "dataset.root",
    "dataset.cache_dir",
    "engine.",
    "central_eval",
    "min_success_fraction",
    "device",
    "checkpoint_every",
    "resume",
    "tensorboard",
)
_CHOICE_SUFFIXES = (".name", ".scheme")  # shown as the Hydra choice: optimizer=sgd, partition=dirichlet


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def settings(experiment: Experiment) -> dict[str, Any]:
    """Every setting that can change a run's results, by dotted name (privacy ones under ``privacy.``).

    The invariant model's region comes from the privacy method (its region size), so it is listed as
    ``model.invariant_region``: two invariant models with different regions are different models.
    """
    flat = {k: v for k, v in _flatten(experiment.to_dict()).items() if not k.startswith(RUN_ONLY)}
    flat["model.invariant_region"] = experiment.privacy.region_size if experiment.model.invariant else None
    return flat


def baseline_key(experiment: Experiment) -> str:
    """Equal for a run and the clear run its accuracy loss is measured against."""
    return json.dumps({k: v for k, v in settings(experiment).items() if not k.startswith("privacy.")}, sort_keys=True)


def _show(key: str, value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    if key.startswith("privacy."):
        return f"{key.removeprefix('privacy.')}={text}"
    if key.endswith(_CHOICE_SUFFIXES):
        return f"{key.rsplit('.', 1)[0]}={text}"
    return f"{key}={text}"


def labels(experiments: Sequence[Experiment]) -> list[str]:
    """One label per experiment: its method, the method's parameters that differ among the experiments
    using that method, and every other setting that differs among all of them."""
    flats = [settings(e) for e in experiments]
    keys = sorted({k for f in flats for k in f})
    varying = [
        k
        for k in keys
        if k != "privacy.method" and not k.startswith("privacy.") and len({json.dumps(f.get(k)) for f in flats}) > 1
    ]
    out = []
    for experiment, flat in zip(experiments, flats, strict=True):
        same_method = [f for f in flats if f["privacy.method"] == flat["privacy.method"]]
        params = [
            k
            for k in keys
            if k.startswith("privacy.")
            and k != "privacy.method"
            and k in flat
            and len({json.dumps(f.get(k)) for f in same_method}) > 1
        ]
        parts = (
            [experiment.privacy.method] + [_show(k, flat[k]) for k in params] + [_show(k, flat.get(k)) for k in varying]
        )
        out.append(" ".join(parts))
    return out
