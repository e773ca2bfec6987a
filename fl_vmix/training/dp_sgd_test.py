"""DP-SGD's accountant spans the run; an empty Poisson batch is a step; BatchNorm models are fixed for Opacus."""

from __future__ import annotations

import logging

import pytest
import torch
from opacus.accountants import RDPAccountant

from fl_vmix.factory import initial_model, local_client
from fl_vmix.models import build_model
from fl_vmix.privacy.training_level import DPSGD
from fl_vmix.training.dp_sgd import make_opacus_compatible, train_dp_sgd

KEY = bytes(range(32))
EMPTY_BATCH_SEED = 0


def test_accountant_history_carries_over_rounds(tiny_experiment):
    experiment = tiny_experiment("privacy=dp_sgd", "privacy.noise_multiplier=1.1")
    from fl_vmix.factory import client_data

    client = local_client(experiment, client_data(experiment, {"partition-id": 0, "num-partitions": 2}), KEY)
    weights = initial_model(experiment).state_dict()
    first = client.train(weights, 1, epochs=1)
    second = client.train(first.weights, 2, epochs=1, accountant_history=first.accountant_history or ())
    eps1, eps2 = first.metrics["epsilon"], second.metrics["epsilon"]
    assert 0 < eps1 < eps2, "the second round's epsilon must include the first round's steps"
    # The history handed back is exactly Opacus' accountant over both rounds' steps (independent accountant).
    accountant = RDPAccountant()
    accountant.history = list(second.accountant_history or ())
    assert accountant.get_epsilon(experiment.privacy.params["delta"]) == pytest.approx(eps2)
    steps = sum(h[2] for h in accountant.history)
    n_train = first.metrics["num-examples"]
    assert steps == 2 * -(-n_train // experiment.batch_size)  # one accounted step per expected batch, both rounds
    assert set(second.weights) == set(weights), "the weights are the plain model's, not Opacus' wrapper's"


def test_an_empty_poisson_batch_is_a_noisy_step_that_the_accountant_counts():
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=3)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    before = [p.detach().clone() for p in model.parameters()]
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    method = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)
    # Batch size 1 over 3 images: Poisson sampling at rate 1/3 leaves a batch empty with probability 8/27.
    result = train_dp_sgd(
        model,
        images,
        labels,
        torch.optim.SGD(model.parameters(), lr=0.1),
        method,
        (),
        epochs=1,
        batch_size=1,
        seed=EMPTY_BATCH_SEED,
    )
    assert 0 in sizes, "this seed draws an empty batch"
    steps = sum(h[2] for h in result.history)
    assert steps == len(sizes) == 3  # every batch is a step, the empty one too
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_batchnorm_models_are_fixed_for_opacus_and_it_is_said(caplog):
    model = build_model("resnet18", num_classes=10)
    with caplog.at_level(logging.WARNING, logger="fl_vmix.dp"):
        fixed = make_opacus_compatible(model)
    assert "BatchNorm -> GroupNorm" in caplog.text
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fixed.modules())
    cnn = build_model("cnn", num_classes=10)
    assert make_opacus_compatible(cnn) is cnn


def test_only_dp_sgd_clients_train_with_opacus():
    from fl_vmix.factory import trainer_for
    from fl_vmix.privacy.methods import build_privacy_method
    from fl_vmix.training.client import DPSGDTrainer, plain_trainer

    assert isinstance(trainer_for(build_privacy_method("dp_sgd")), DPSGDTrainer)
    assert trainer_for(build_privacy_method("central_dp")) is plain_trainer
    assert trainer_for(build_privacy_method("visualmixer", key=KEY)) is plain_trainer
