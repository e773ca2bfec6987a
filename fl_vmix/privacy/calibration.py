"""Gaussian-mechanism calibration: noise for a budget, budget for a noise (pure functions).

The exact privacy curve of the Gaussian mechanism (Balle & Wang 2018, the "analytic Gaussian") is
Google's ``dp_accounting`` (``GaussianPrivacyLoss.get_delta_for_epsilon``); its monotone-inverse
search finds sigma for a budget and epsilon for a sigma. We only set the search precision: its
default (absolute 1e-7 on sigma) is coarser than a test of the inversion can tolerate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from fl_vmix.privacy.checks import check_delta, check_epsilon, check_positive

_RELATIVE_TOLERANCE = 1e-13


def gaussian_delta(*, epsilon: float, sigma: float, sensitivity: float = 1.0) -> float:
    """Smallest delta for which Gaussian noise ``sigma`` on an L2-``sensitivity`` query is (epsilon, delta)-DP.

    Exact (analytic Gaussian mechanism, Balle & Wang 2018), from ``dp_accounting``.
    """
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    return float(GaussianPrivacyLoss(sigma, sensitivity=sensitivity).get_delta_for_epsilon(epsilon))


def _smallest(decreasing_delta: Callable[[float], float], target: float, start: float) -> float:
    """Smallest x > 0 with ``decreasing_delta(x) <= target``, to a relative precision of 1e-13."""
    from dp_accounting.pld.common import BinarySearchParameters, inverse_monotone_function

    # Bracket the solution, lower failing and upper meeting the target, within a factor of 2.
    upper = start
    while decreasing_delta(upper) > target:
        upper *= 2.0
    lower = upper / 2
    while lower > 1e-300 and decreasing_delta(lower) <= target:
        upper, lower = lower, lower / 2
    found = inverse_monotone_function(
        decreasing_delta, target, BinarySearchParameters(lower, upper, tolerance=upper * _RELATIVE_TOLERANCE)
    )
    assert found is not None  # the bracket holds a solution by construction
    return float(found)


def _classical_factor(delta: float) -> float:
    return math.sqrt(2.0 * math.log(1.25 / delta))


def gaussian_sigma(
    *,
    epsilon: float,
    delta: float,
    sensitivity: float = 1.0,
    calibration: Literal["analytic", "classical"] = "analytic",
) -> float:
    """Gaussian noise std giving (epsilon, delta)-DP for an L2-``sensitivity`` query.

    ``"classical"``: sigma = sqrt(2 ln(1.25/delta)) * Delta2 / epsilon (Dwork & Roth 2014, Thm A.1), proven only
    for epsilon < 1.  ``"analytic"``: the smallest sigma whose exact privacy curve meets (epsilon, delta)
    (Balle & Wang 2018); valid for every epsilon > 0 and never larger than the classical one.
    """
    check_epsilon(epsilon)
    check_delta(delta)
    check_positive("sensitivity", sensitivity, "use sqrt(m) for m-neighbouring images")
    if calibration == "classical":
        if epsilon >= 1:
            raise ValueError(
                f"the classical Gaussian calibration is only proven for epsilon < 1, got epsilon={epsilon}; "
                "use calibration='analytic' (valid for every epsilon)"
            )
        return _classical_factor(delta) * sensitivity / epsilon
    if calibration != "analytic":
        raise ValueError(f"unknown calibration {calibration!r}; use 'analytic' or 'classical'")
    return _smallest(
        lambda s: gaussian_delta(epsilon=epsilon, sigma=s, sensitivity=sensitivity),
        delta,
        _classical_factor(delta) * sensitivity / epsilon,
    )


def gaussian_epsilon(
    *,
    sigma: float,
    delta: float,
    sensitivity: float = 1.0,
    calibration: Literal["analytic", "classical"] = "analytic",
) -> float:
    """The epsilon that Gaussian noise ``sigma`` guarantees at ``delta`` (inverse of :func:`gaussian_sigma`)."""
    check_positive("noise_scale", sigma, "pass the Gaussian standard deviation in [0, 1] pixel units")
    check_delta(delta)
    check_positive("sensitivity", sensitivity, "use sqrt(m) for m-neighbouring images")
    if calibration == "classical":
        epsilon = _classical_factor(delta) * sensitivity / sigma
        if epsilon >= 1:
            raise ValueError(
                f"noise_scale={sigma} gives classical epsilon={epsilon:.4g} >= 1, outside the range where the "
                "classical bound is proven; use calibration='analytic' or a larger noise_scale"
            )
        return epsilon
    if calibration != "analytic":
        raise ValueError(f"unknown calibration {calibration!r}; use 'analytic' or 'classical'")
    if gaussian_delta(epsilon=0.0, sigma=sigma, sensitivity=sensitivity) <= delta:
        return 0.0
    return _smallest(lambda e: gaussian_delta(epsilon=e, sigma=sigma, sensitivity=sensitivity), delta, 1.0)
