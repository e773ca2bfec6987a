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


def _differs(flats: Sequence[dict[str, Any]], key: str) -> bool:
    return len({json.dumps(f.get(key)) for f in flats}) > 1


def _majority(flats: Sequence[dict[str, Any]], key: str) -> str | None:
    """The JSON value of ``key`` that more than half of the experiments have, if one does."""
    values = [json.dumps(f.get(key)) for f in flats]
    top = max(set(values), key=values.count)
    return top if 2 * values.count(top) > len(values) else None


def _named(flats: Sequence[dict[str, Any]]) -> list[list[str]]:
    """For each experiment, the settings its label names: the method's parameters that differ among the
    experiments of its method, then the other settings that differ among all experiments, unless the
    experiment has the majority's value and that setting is the same throughout its method."""
    outside = sorted({k for f in flats for k in f if not k.startswith("privacy.")})
    varying = [k for k in outside if _differs(flats, k)]
    majority = {k: _majority(flats, k) for k in varying}
    named = []
    for flat in flats:
        same_method = [f for f in flats if f["privacy.method"] == flat["privacy.method"]]
        params = [k for k in sorted(flat) if k.startswith("privacy.") and k != "privacy.method"]
        named.append(
            [k for k in params if _differs(same_method, k)]
            + [k for k in varying if json.dumps(flat.get(k)) != majority[k] or _differs(same_method, k)]
        )
    return named


def labels(experiments: Sequence[Experiment]) -> list[str]:
    """One label per experiment: its method and the settings :func:`_named` picks.

    No two experiments get the same label: two of one method that differ anywhere differ in a setting that
    varies among that method's experiments, and all such settings are named. The majority values some
    labels leave out are :func:`unnamed_values` (a report states them once instead of on every row)."""
    flats = [settings(e) for e in experiments]
    return [
        " ".join([e.privacy.method] + [_show(k, flat.get(k)) for k in keys])
        for e, flat, keys in zip(experiments, flats, _named(flats), strict=True)
    ]


def unnamed_values(experiments: Sequence[Experiment]) -> list[str]:
    """``key=value`` for each setting that differs among ``experiments`` but is left out of some label
    (always with the majority's value, which is what such a label means)."""
    flats = [settings(e) for e in experiments]
    named = _named(flats)
    outside = sorted({k for f in flats for k in f if not k.startswith("privacy.")})
    return [
        _show(k, json.loads(top))
        for k in outside
        if _differs(flats, k) and (top := _majority(flats, k)) is not None and any(k not in n for n in named)
    ]
