"""Training-level methods: parameters checked, images left alone."""

from __future__ import annotations

import pytest
import torch

from fl_vmix.privacy.methods import build_privacy_method
from fl_vmix.privacy.training_level import DPSGD, CentralDP


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("dp_sgd", dict(noise_multiplier=0.0), "noise_multiplier must be .*> 0"),
        ("dp_sgd", dict(max_grad_norm=-1.0), "max_grad_norm must be .*> 0"),
        ("central_dp", dict(clipping_norm=0), "clipping_norm must be .*> 0"),
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
