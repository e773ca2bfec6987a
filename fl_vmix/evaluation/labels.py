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
    "reproducible_noise",  # how the noise is drawn, not its distribution (the guarantee text says which)
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


def _is_param(key: str) -> bool:
    return key.startswith("privacy.") and key != "privacy.method"


def _outside(flats: Sequence[dict[str, Any]]) -> list[str]:
    """The settings outside the privacy method, sorted."""
    return sorted({k for f in flats for k in f if not k.startswith("privacy.")})


def _usual(group: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, str | None]:
    """For each of ``keys`` that differs within ``group``: the JSON value most of the group has (None: none)."""
    return {k: _majority(group, k) for k in keys if _differs(group, k)}


def _named(flats: Sequence[dict[str, Any]]) -> list[list[str]]:
    """For each experiment, the settings its label names: those where it stands out among the experiments
    of its privacy method (it does not have the value most of them have, in a setting that differs among
    them), and the other settings where it stands out among all experiments (so that a setting in which two
    methods' rows differ is never hidden)."""
    outside = _outside(flats)
    overall = _usual(flats, outside)
    by_method: dict[str, dict[str, str | None]] = {}
    for method in dict.fromkeys(f["privacy.method"] for f in flats):
        group = [f for f in flats if f["privacy.method"] == method]
        params = sorted({k for f in group for k in f if _is_param(k)})
        by_method[method] = _usual(group, params + outside)
    named = []
    for flat in flats:
        usual = by_method[flat["privacy.method"]]
        stands_out = [k for k, top in usual.items() if json.dumps(flat.get(k)) != top]
        stands_out += [k for k, top in overall.items() if json.dumps(flat.get(k)) != top and k not in stands_out]
        params = [k for k in sorted(flat) if _is_param(k) and k in stands_out]
        named.append(params + [k for k in outside if k in stands_out])
    return named


def labels(experiments: Sequence[Experiment]) -> list[str]:
    """One label per experiment: its method and the settings in which it stands out (:func:`_named`), e.g.
    ``visualmixer`` for the usual setting and ``visualmixer region_size=16`` next to it.

    No two experiments get the same label: two of one method that differ in a setting either both stand
    out in it (no value is held by most of the method's experiments) and name their different values, or
    at least one of them names it and the other does not. :func:`unnamed_values` says what a label that
    names nothing means; a report states it once."""
    flats = [settings(e) for e in experiments]
    return [
        " ".join([e.privacy.method] + [_show(k, flat.get(k)) for k in keys])
        for e, flat, keys in zip(experiments, flats, _named(flats), strict=True)
    ]


def _left_out(rows: Sequence[tuple[dict[str, Any], list[str]]], key: str) -> str | None:
    """``key=value`` of a row whose label leaves ``key`` out (all such rows hold the same value)."""
    return next((_show(key, flat.get(key)) for flat, named in rows if key not in named), None)


def unnamed_values(experiments: Sequence[Experiment]) -> list[str]:
    """What a label means where it names nothing, for the settings that differ among ``experiments``: one
    entry per method whose parameters vary (``visualmixer: block_sizes=[2,1] mode=static ...``), then
    one for the other settings (``other settings: model.invariant=false ...``)."""
    flats = [settings(e) for e in experiments]
    rows = list(zip(flats, _named(flats), strict=True))
    out = []
    for method in dict.fromkeys(f["privacy.method"] for f in flats):
        group = [(f, n) for f, n in rows if f["privacy.method"] == method]
        params = sorted({k for f, _ in group for k in f if _is_param(k)})
        left = [v for k in params if _differs([f for f, _ in group], k) and (v := _left_out(group, k))]
        out += [f"{method}: {' '.join(left)}"] if left else []
    left = [v for k in _outside(flats) if _differs(flats, k) and (v := _left_out(rows, k))]
    return out + ([f"other settings: {' '.join(left)}"] if left else [])
