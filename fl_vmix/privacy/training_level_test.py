"""Training-level methods: parameters checked, images left alone."""

from __future__ import annotations

import pytest
import torch

from fl_vmix.privacy.methods import build_privacy_method
from fl_vmix.privacy.training_level import DPSGD, CentralDP


@pytest.mark.parametrize(
    "name, params, message",
    [
        (
            "dp_sgd",
            dict(noise_multiplier=0.0),
            r"^noise_multiplier must be .*> 0, got 0.0; DP-SGD needs noise; use e\.g\. 1\.0$",
        ),
        (
            "dp_sgd",
            dict(max_grad_norm=-1.0),
            r"^max_grad_norm must be .*> 0, got -1.0; per-sample clipping bound; use e\.g",
        ),
        (
            "central_dp",
            dict(noise_multiplier=0),
            r"^noise_multiplier must be .*> 0, got 0; central DP needs noise; use e\.g",
        ),
        ("central_dp", dict(clipping_norm=0), r"^clipping_norm must be .*> 0, got 0; update clipping bound; use e\.g"),
        ("central_dp", dict(delta=1.5), "delta must be in"),
    ],
)
def test_bad_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_privacy_method(name, **params)


def test_training_level_methods_leave_images_alone():
    images = torch.rand(2, 3, 8, 8)
    for method in (DPSGD(), CentralDP()):
        assert torch.equal(method(images, torch.tensor([0, 1])), images)
        assert method.level == "training" and method.epsilon is None
        assert method.protect(images, torch.tensor([0, 1])).report is None


def test_defaults_and_settings_are_kept_and_reported():
    assert DPSGD().params == {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}
    assert CentralDP().params == {"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1e-5}
    central = CentralDP(noise_multiplier=0.7, clipping_norm=2.5, delta=1e-6)
    assert central.params == {"noise_multiplier": 0.7, "clipping_norm": 2.5, "delta": 1e-6}
    assert (central.noise_multiplier, central.clipping_norm, central.delta) == (0.7, 2.5, 1e-6)
    sgd = DPSGD(noise_multiplier=1.3, max_grad_norm=0.5, delta=1e-7)
    assert (sgd.noise_multiplier, sgd.max_grad_norm, sgd.delta) == (1.3, 0.5, 1e-7)


def test_a_bad_key_is_named_as_dp_sgds():
    with pytest.raises(ValueError, match=r"^DPSGD: a key needs 16 to 64 bytes"):
        DPSGD(key=b"short")
