"""Gaussian-mechanism calibration against the closed form of its privacy curve (scipy), and at its boundaries."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from fl_vmix.privacy.calibration import gaussian_delta, gaussian_epsilon, gaussian_sigma


def closed_form_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Balle & Wang 2018, Theorem 8: delta = Phi(D/2s - e s/D) - exp(e) Phi(-D/2s - e s/D)."""
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return float(stats.norm.cdf(a - b) - math.exp(epsilon) * stats.norm.cdf(-a - b))


@pytest.mark.parametrize(("epsilon", "sigma", "sensitivity"), [(1.0, 3.0, 1.0), (0.3, 2.0, 1.5), (4.0, 0.7, 0.5)])
def test_delta_is_the_analytic_gaussian_closed_form(epsilon, sigma, sensitivity):
    got = gaussian_delta(epsilon=epsilon, sigma=sigma, sensitivity=sensitivity)
    assert got == pytest.approx(closed_form_delta(epsilon, sigma, sensitivity), rel=1e-9)


@pytest.mark.parametrize(("epsilon", "delta", "sensitivity"), [(1.0, 1e-5, 1.0), (0.2, 1e-6, 3.0), (8.0, 1e-3, 0.5)])
def test_sigma_is_the_smallest_noise_whose_curve_meets_the_budget(epsilon, delta, sensitivity):
    sigma = gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
    assert closed_form_delta(epsilon, sigma, sensitivity) == pytest.approx(delta, rel=1e-6)
    assert closed_form_delta(epsilon, sigma * (1 - 1e-6), sensitivity) > delta  # a hair less noise breaks it
    # The curve depends on sigma / sensitivity only: sigma scales with the sensitivity.
    assert sigma == pytest.approx(sensitivity * gaussian_sigma(epsilon=epsilon, delta=delta), rel=1e-9)


def test_epsilon_of_a_noise_and_its_sensitivity():
    for sigma, sensitivity in [(2.0, 1.0), (2.0, 3.0), (0.4, 0.5)]:
        epsilon = gaussian_epsilon(sigma=sigma, delta=1e-5, sensitivity=sensitivity)
        assert closed_form_delta(epsilon, sigma, sensitivity) == pytest.approx(1e-5, rel=1e-6)


def test_enough_noise_is_epsilon_zero():
    # At epsilon 0 the curve is delta = 2 Phi(D / 2s) - 1: below the target delta, no privacy loss is left.
    assert closed_form_delta(0.0, 1e6, 1.0) < 1e-5
    assert gaussian_epsilon(sigma=1e6, delta=1e-5) == 0.0
    sigma = 1 / (2 * stats.norm.ppf(0.5 + 1e-5 / 2))  # delta at epsilon 0 exactly 1e-5
    assert gaussian_epsilon(sigma=sigma * 0.999, delta=1e-5) > 0.0


def test_classical_calibration_is_refused_from_epsilon_one():
    factor = math.sqrt(2 * math.log(1.25 / 1e-5))
    assert gaussian_sigma(epsilon=0.999, delta=1e-5, calibration="classical") == pytest.approx(factor / 0.999)
    with pytest.raises(ValueError, match="only proven for epsilon < 1"):
        gaussian_sigma(epsilon=1.0, delta=1e-5, calibration="classical")
    assert gaussian_epsilon(sigma=factor * 1.001, delta=1e-5, calibration="classical") == pytest.approx(1 / 1.001)
    with pytest.raises(ValueError, match="classical epsilon=1 >= 1"):
        gaussian_epsilon(sigma=factor, delta=1e-5, calibration="classical")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gaussian_sigma(epsilon=0.0, delta=1e-5), "epsilon must be a finite number > 0"),
        (lambda: gaussian_sigma(epsilon=1.0, delta=0.0), r"delta must be in \(0, 1\)"),
        (lambda: gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=0.0), "sensitivity must be .* use sqrt"),
        (lambda: gaussian_sigma(epsilon=1.0, delta=1e-5, calibration="rdp"), "unknown calibration 'rdp'"),
        (
            lambda: gaussian_epsilon(sigma=0.0, delta=1e-5),
            r"^noise_scale must be a finite number > 0, got 0.0; "
            r"pass the Gaussian standard deviation in \[0, 1\] pixel units$",
        ),
        (lambda: gaussian_epsilon(sigma=1.0, delta=1.0), r"delta must be in \(0, 1\)"),
        (
            lambda: gaussian_epsilon(sigma=1.0, delta=1e-5, sensitivity=-1.0),
            r"^sensitivity must be a finite number > 0, got -1.0; use sqrt\(m\) for m-neighbouring images$",
        ),
        (lambda: gaussian_epsilon(sigma=1.0, delta=1e-5, calibration="pld"), "unknown calibration 'pld'"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("calibration", ["analytic", "classical"])
@pytest.mark.parametrize("sensitivity", [0.5, 2.0, 3.0])
def test_epsilon_depends_on_noise_over_sensitivity_only(calibration, sensitivity):
    # The Gaussian mechanism's privacy curve is a function of sigma / sensitivity: scaling both changes nothing.
    sigma = 7.0  # classical epsilon stays below 1 for every sensitivity here
    scaled = gaussian_epsilon(sigma=sigma * sensitivity, delta=1e-5, sensitivity=sensitivity, calibration=calibration)
    assert scaled == pytest.approx(gaussian_epsilon(sigma=sigma, delta=1e-5, calibration=calibration), rel=1e-9)
    if calibration == "classical":
        assert scaled == pytest.approx(math.sqrt(2 * math.log(1.25 / 1e-5)) / sigma, rel=1e-12)


def test_epsilon_zero_is_judged_at_the_given_sensitivity():
    # delta at epsilon 0 is 2 Phi(D / 2 sigma) - 1: about 0.6e-5 for D = 1 but 1.2e-5 for D = 2 at this sigma, so
    # delta = 1e-5 needs epsilon > 0 only for the larger sensitivity.
    sigma = 1 / (math.sqrt(2 * math.pi) * 0.6e-5)
    assert gaussian_epsilon(sigma=sigma, delta=1e-5) == 0.0
    epsilon = gaussian_epsilon(sigma=sigma, delta=1e-5, sensitivity=2.0)
    assert epsilon > 0 and closed_form_delta(epsilon, sigma, 2.0) == pytest.approx(1e-5, rel=1e-6)
