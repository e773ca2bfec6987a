"""What a run's epsilon protects: its unit, other units of the same noise, against whom, and what else leaves.

Epsilons of different methods are not in one unit: image-level DP protects ``m`` values of one image
(``m = 1``: one colour value), DP-SGD one training example of one client, central DP one client's
whole data. A report that puts them in one column must say which is which, and the same noise read in
another unit can be orders of magnitude weaker (one value vs a whole image). For every run this module
gives:

* ``epsilon_unit``, and for image-level DP the epsilon of the same noise for one whole pixel
  (``epsilon_pixel``, ``C`` values) and a whole image (``epsilon_image``, ``C*H*W`` values);
* for central DP the replace-one epsilon (one client's data replaced: twice the add/remove sensitivity
  of the fixed-divisor mean) and for both training-level methods a PLD epsilon from Google's
  ``dp_accounting`` beside the run's RDP one (tighter; RDP is what the runs report);
* ``guarantee``: one sentence on what is protected against whom in this run. Two things weaken it and
  are said in every row they apply to: derived simulation keys (anyone with ``config.json`` derives
  every key, so nothing a key protects is secret) and ``reproducible_noise=true`` (central DP's noise
  from the public seed, DP-SGD's from the key and the seed). Configs recorded before that setting
  existed drew their noise that way, so they count as reproducible;
* ``leaks``: every metric the clients sent that the accountant (for methods without DP: the protected
  images) does not cover, and why; with derived keys also the keys themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fl_vmix.apps.keys import DERIVED_KEYS_WARNING, rests_on_key
from fl_vmix.experiment import Experiment
from fl_vmix.factory import build_privacy, dataset_shape
from fl_vmix.privacy.training_level import DPSGD, CentralDP

ACCOUNTING_KEY = bytes(32)  # epsilons do not depend on the key; the methods only refuse to be built without one
IMAGE_DP = ("pixel_dp_gaussian", "pixel_dp_laplace", "dp_pix")

# Why a metric a client sends is outside its method's accountant ("" for metrics that stay inside).
_SIZES = "the partition size, exact"
_TIMING = "a timing, which grows with the partition size"
_CLEAR_SIMILARITY = "compares the protected training images with the clear ones"
_REASONS: dict[str, dict[str, str]] = {
    "image": {  # everything computed from the noisy images alone is post-processing, hence covered
        "ssim": _CLEAR_SIMILARITY,
        "psnr": _CLEAR_SIMILARITY,
        "num-examples": _SIZES,
        "eval_num-examples": _SIZES,
        "obfuscation_s": _TIMING,
        "train_time_s": _TIMING,
    },
    "dp_sgd": {  # only the noisy model update (and the accountant's epsilon) is covered
        "train_loss": "un-noised forward passes on the clear training examples",
        "train_accuracy": "un-noised forward passes on the clear training examples",
        "eval_loss": "the global model on the clear local test split",
        "eval_accuracy": "the global model on the clear local test split",
        "vfe_corrected": "VFE of the clear training images",
        "vfe_reference": "VFE of the clear training images",
        "ssim": "trivially 1 (the images are clear): carries no data, listed for completeness",
        "psnr": "trivially capped (the images are clear): carries no data, listed for completeness",
        "num-examples": _SIZES,
        "eval_num-examples": _SIZES,
        "obfuscation_s": _TIMING,
        "train_time_s": _TIMING,
    },
}
# Methods without DP: what attacks cannot see in the protected images. SSIM and PSNR compare them with the clear ones.
_REASONS["obfuscation"] = {k: v for k, v in _REASONS["image"].items() if k in ("ssim", "psnr")}
_DERIVED_KEYS_LEAK = "client keys (derivable from config.json's seed: engine.simulation_keys=derived)"
_REASONS["central_dp"] = {
    **_REASONS["dp_sgd"],
    "update": "the clipped model update itself: the server adds the noise after it has seen it",
    "train_loss": "forward passes on the clear training examples",
    "train_accuracy": "forward passes on the clear training examples",
}


@dataclass(frozen=True)
class PrivacyBudget:
    epsilon_unit: str  # "" when the method is not DP
    epsilon_pixel: float  # image-level DP: one whole pixel (C values); NaN otherwise
    epsilon_image: float  # image-level DP: a whole image (C*H*W values); NaN otherwise
    epsilon_replace_one: float  # central DP, replace-one neighbours (PLD); NaN otherwise
    epsilon_pld: float  # DP-SGD / central DP: the PLD accountant beside the run's RDP; NaN otherwise
    guarantee: str
    leaks: str  # "metric (why); ..." for DP methods, "" otherwise


def _pld_epsilon(events: Iterable[Any], delta: float) -> float:
    """PLD epsilon, discretised at about 1e-4 of its own size: a coarse pass sizes the fine one (the default
    fixed interval of 1e-4 takes minutes for the epsilons in the thousands that weak noise gives)."""
    from dp_accounting.pld import PLDAccountant

    def epsilon(interval: float) -> float:
        accountant = PLDAccountant(value_discretization_interval=interval)
        for event in composed:
            accountant.compose(event)
        return float(accountant.get_epsilon(delta))

    composed = list(events)
    rough = epsilon(1e-2)
    return epsilon(min(1e-2, max(1e-4, rough * 1e-4)))


def dp_sgd_events(sizes: Iterable[int], batch_size: int, rounds: int, epochs: int, noise: float) -> list[list[Any]]:
    """Per client, Opacus' Poisson-sampled Gaussian steps: rate 1/ceil(n/B), ceil(n/B) steps per epoch."""
    from dp_accounting import PoissonSampledDpEvent, SelfComposedDpEvent
    from dp_accounting.dp_event import GaussianDpEvent

    events = []
    for n in sizes:
        batches = max(1, -(-int(n) // batch_size))
        step = PoissonSampledDpEvent(1.0 / batches, GaussianDpEvent(noise))
        events.append([SelfComposedDpEvent(step, rounds * epochs * batches)])
    return events


def central_dp_epsilons(noise: float, rounds: int, delta: float) -> tuple[float, float]:
    """(add/remove, replace-one) PLD epsilons of ``rounds`` releases of the fixed-divisor noisy mean."""
    from dp_accounting import SelfComposedDpEvent
    from dp_accounting.dp_event import GaussianDpEvent

    add_remove = _pld_epsilon([SelfComposedDpEvent(GaussianDpEvent(noise), rounds)], delta)
    replace_one = _pld_epsilon([SelfComposedDpEvent(GaussianDpEvent(noise / 2), rounds)], delta)
    return add_remove, replace_one


def _sent(rounds: Iterable[Mapping[str, Any]]) -> tuple[set[str], list[int]]:
    """Metric keys the clients sent (as recorded) and each client's number of training examples."""
    keys: set[str] = set()
    sizes: dict[str, int] = {}
    for record in rounds:
        for pid, metrics in record["clients"].items():  # the recorder writes "clients" in every round
            keys.update(metrics)
            if "num-examples" in metrics:
                sizes[pid] = int(metrics["num-examples"])
    return keys, list(sizes.values())


def _leaks(kind: str, sent: set[str], public_keys: bool = False) -> str:
    reasons = _REASONS[kind]
    # Every client also sends its model update; only central DP lists it (its server sees it before the noise).
    keys = sorted(k for k in sent | {"update"} if k in reasons)
    return "; ".join([f"{k} ({reasons[k]})" for k in keys] + ([_DERIVED_KEYS_LEAK] if public_keys else []))


def _budget(
    experiment: Experiment, rounds_recorded: list[Mapping[str, Any]], raw_config: Mapping[str, Any]
) -> PrivacyBudget:
    """The budget with the keys' and the noise's caveats added to its guarantee and leaks."""
    engine = raw_config.get("engine", {})  # configs recorded before the engine group: the simulation
    simulated = engine.get("name", "simulation") == "simulation"
    reproducible = bool(raw_config.get("reproducible_noise", True))  # older runs drew their noise from the seed
    method = experiment.privacy.method
    derived = simulated and engine.get("simulation_keys") == "derived"
    public_keys = derived and rests_on_key(method, reproducible)
    budget = _method_budget(experiment, rounds_recorded, reproducible, public_keys)
    if not public_keys:
        return budget
    return replace(budget, guarantee=f"{budget.guarantee}; {DERIVED_KEYS_WARNING}")


def privacy_budget(
    experiment: Experiment, rounds_recorded: list[Mapping[str, Any]], raw_config: Mapping[str, Any]
) -> PrivacyBudget:
    """The budget of one finished run: its experiment, its ``metrics.json`` rounds and its recorded config."""
    return _budget(experiment, rounds_recorded, raw_config)


def _method_budget(
    experiment: Experiment, rounds_recorded: list[Mapping[str, Any]], reproducible: bool, public_keys: bool
) -> PrivacyBudget:
    method = experiment.privacy.method
    nan = math.nan
    sent, sizes = _sent(rounds_recorded)
    rounds = sum(1 for r in rounds_recorded if int(r["round"]) > 0)
    if method in IMAGE_DP:
        protected = build_privacy(experiment.privacy, ACCOUNTING_KEY)
        _, channels, side = dataset_shape(experiment)
        epochs = max(rounds, 1)
        pixel = protected.epsilon_for(channels, epochs) or nan
        image = protected.epsilon_for(channels * side * side, epochs) or nan
        guarantee = (
            f"local DP per image for neighbours differing in {protected.epsilon_unit} (one whole pixel: epsilon "
            f"{pixel:.4g}; a whole image: {image:.4g}), against anyone who sees the protected images or anything "
            "computed from them, the server included, while the client's key stays secret"
        )
        leaks = _leaks("image", sent, public_keys)
        return PrivacyBudget(protected.epsilon_unit or "", pixel, image, nan, nan, guarantee, leaks)
    if method == DPSGD.name:
        dp_sgd = build_privacy(experiment.privacy, ACCOUNTING_KEY)  # its noise and delta, defaults included
        assert isinstance(dp_sgd, DPSGD)
        per_client = dp_sgd_events(
            sizes, experiment.batch_size, rounds, experiment.local_epochs, dp_sgd.noise_multiplier
        )
        pld = max((_pld_epsilon(events, dp_sgd.delta) for events in per_client), default=nan)
        if not reproducible:
            against = "the server and everyone downstream: each client draws its noise and sampling from OS entropy"
        elif public_keys:
            against = (
                "third parties only: reproducible_noise=true draws the noise and sampling from the client's key, which "
                "this simulation derives from the public seed, so the server can regenerate them (use "
                "reproducible_noise=false, engine.simulation_keys=random or the Deployment Engine)"
            )
        else:
            against = (
                "the server and everyone downstream, since the noise and sampling come from the secret node keys "
                "(reproducible_noise=true: each key holder can regenerate its own)"
            )
        guarantee = (
            f"example-level DP for each client's training data (the largest client's epsilon), against {against}"
        )
        return PrivacyBudget(DPSGD.epsilon_unit, nan, nan, nan, pld, guarantee, _leaks("dp_sgd", sent, public_keys))
    if method == CentralDP.name:
        central = build_privacy(experiment.privacy, None)
        assert isinstance(central, CentralDP)
        pld, replace_one = central_dp_epsilons(central.noise_multiplier, max(rounds, 1), central.delta)
        against = (
            "only those who know neither the seed nor the updates: reproducible_noise=true draws the server's noise "
            "from the run's public seed, which every client receives, so any of them can subtract it from the released "
            "models (and the server sees every clipped update before the noise)"
            if reproducible
            else "anyone but the server, which sees every clipped update before the noise and draws the noise from OS "
            "entropy"
        )
        guarantee = (
            "client-level DP (add or remove one client's data) for the released global models, against "
            f"{against} (replace-one neighbours: {replace_one:.4g})"
        )
        return PrivacyBudget(CentralDP.epsilon_unit, nan, nan, replace_one, pld, guarantee, _leaks("central_dp", sent))
    leaks = "" if method == "none" else _leaks("obfuscation", sent, public_keys)
    return PrivacyBudget("", nan, nan, nan, nan, "no DP guarantee: privacy is graded by attacks", leaks)
