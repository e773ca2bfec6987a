"""The shared parameter checks: what each accepts and refuses, and that every refusal names the fix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fl_vmix.privacy.checks import check_delta, check_epsilon, check_int, check_positive, check_seed, is_real


def test_real_numbers_are_ints_and_floats_of_python_and_numpy_but_not_bools():
    assert all(is_real(v) for v in (0, -3, 2.5, np.int32(4), np.float32(0.5), np.float64(-1.0)))
    assert not any(is_real(v) for v in (True, False, "1", None, [1.0], np.bool_(True), 1j))


@pytest.mark.parametrize("value", [1e-12, 0.5, 7, np.float32(2.0), np.int64(3)])
def test_positive_numbers_pass(value):
    check_positive("x", value, "fix")


@pytest.mark.parametrize("value", [0, 0.0, -1e-12, float("inf"), float("nan"), "2", True, None])
def test_positive_check_names_the_parameter_the_value_and_the_fix(value):
    with pytest.raises(ValueError) as err:
        check_positive("sigma", value, "use e.g. sigma=1.0")
    assert str(err.value) == f"sigma must be a finite number > 0, got {value!r}; use e.g. sigma=1.0"


def test_epsilon_check_says_what_epsilon_is():
    check_epsilon(0.1)
    with pytest.raises(ValueError) as err:
        check_epsilon(-1.0)
    assert str(err.value) == (
        "epsilon must be a finite number > 0, got -1.0; pass the privacy budget per image, e.g. epsilon=1.0 "
        "(smaller = more private)"
    )


@pytest.mark.parametrize("delta", [1e-12, 1e-5, 0.999, np.float64(0.5)])
def test_delta_inside_the_open_unit_interval_passes(delta):
    check_delta(delta)


@pytest.mark.parametrize("delta", [0, 0.0, 1, 1.0, -1e-5, 2.0, float("nan"), "1e-5", True])
def test_delta_outside_the_open_unit_interval_is_refused(delta):
    with pytest.raises(ValueError) as err:
        check_delta(delta)
    assert str(err.value) == (f"delta must be in (0, 1), got {delta!r}; use e.g. delta=1e-5 (below 1/number of images)")


def test_int_check_has_an_inclusive_minimum():
    check_int("b", 3, 3, "fix")
    check_int("b", np.int16(4), 3, "fix")
    for bad in (2, 3.0, True, "3", None):
        with pytest.raises(ValueError) as err:
            check_int("b", bad, 3, "b is the cell side")
        assert str(err.value) == f"b must be an integer >= 3, got {bad!r}; b is the cell side"


def test_seed_check_takes_any_integer():
    for seed in (0, -5, 2**70, np.uint64(7)):
        check_seed(seed)
    for bad in (1.0, True, "0", None, math.pi):
        with pytest.raises(ValueError) as err:
            check_seed(bad)
        assert str(err.value) == f"seed must be an integer, got {bad!r}; pass e.g. seed=0 (or the client's id)"
