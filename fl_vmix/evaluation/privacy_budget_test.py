"""Units, other-unit epsilons, guarantees and leaks of each DP method, against independent figures."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant

from fl_vmix.evaluation.privacy_budget import central_dp_epsilons, dp_sgd_events, privacy_budget
from fl_vmix.experiment import compose

SENT = {
    "partition-id", "num-examples", "train_loss", "train_accuracy", "vfe_corrected", "vfe_reference", "ssim", "psnr",
    "obfuscation_s", "vfe_unreached_fraction", "train_time_s", "epsilon", "eval_loss", "eval_accuracy",
    "eval_num-examples",
}  # fmt: skip


def rounds(n_rounds: int, sizes: dict[int, int]) -> list[dict]:
    """metrics.json rounds as the recorder writes them, every client sending every metric in SENT."""
    return [
        {"round": r, "clients": {str(pid): {**dict.fromkeys(SENT, 1.0), "num-examples": n} for pid, n in sizes.items()}}
        for r in range(1, n_rounds + 1)
    ]


def test_image_dp_units_from_the_dataset_shape():
    experiment = compose(["privacy=pixel_dp_gaussian", "privacy.epsilon=1.0"])  # CIFAR-10: shape known, no data read
    budget = privacy_budget(experiment, rounds(2, {0: 10}), experiment.to_dict())
    assert budget.epsilon_unit == "value"
    # CIFAR-10 (3 x 32 x 32): one RGB pixel and a whole image at the noise of epsilon 1 per value (issue 14's figures)
    assert budget.epsilon_pixel == pytest.approx(1.84, rel=5e-3)
    assert budget.epsilon_image == pytest.approx(173.0, rel=5e-3)
    assert math.isnan(budget.epsilon_pld) and math.isnan(budget.epsilon_replace_one)
    # Post-processing of the noisy images is covered; comparisons with the clear images and sizes are not.
    assert "ssim (" in budget.leaks and "num-examples (" in budget.leaks
    assert "train_loss" not in budget.leaks and "eval_accuracy" not in budget.leaks
    assert "the server included" in budget.guarantee


def test_dp_sgd_events_reproduce_opacus_and_pld_is_reported(tiny_experiment):
    # Random simulation keys are secret from the server (derived ones are not: see the test below).
    experiment = tiny_experiment("privacy=dp_sgd", "privacy.noise_multiplier=1.0", "engine.simulation_keys=random")
    sizes = {0: 300, 1: 120}
    budget = privacy_budget(experiment, rounds(4, sizes), experiment.to_dict())
    assert budget.epsilon_unit == "example"
    # The events are Opacus' own steps: rate 1/ceil(n/B), ceil(n/B) steps per epoch; its RDP epsilon of the smaller
    # client (fewer examples: a larger sampling rate) is the larger one, and the PLD epsilon is below it.
    b = experiment.batch_size
    rdp = []
    for n in sizes.values():
        accountant = RDPAccountant()
        batches = -(-n // b)
        accountant.history = [(1.0, 1 / batches, 4 * experiment.local_epochs * batches)]
        rdp.append(accountant.get_epsilon(1e-5))
    assert 0 < budget.epsilon_pld < max(rdp)
    events = dp_sgd_events([120], b, 4, experiment.local_epochs, 1.0)[0]
    assert events[0].count == 4 * experiment.local_epochs * -(-120 // b)
    assert events[0].event.sampling_probability == pytest.approx(1 / -(-120 // b))
    assert "train_loss (un-noised" in budget.leaks and "eval_accuracy (" in budget.leaks
    assert "the server and everyone downstream" in budget.guarantee


def test_derived_simulation_keys_void_the_guarantee_against_the_server(tiny_experiment):
    experiment = tiny_experiment("privacy=dp_sgd")
    config = experiment.to_dict()
    config["engine"] = {**config["engine"], "name": "simulation", "simulation_keys": "derived"}
    budget = privacy_budget(experiment, rounds(1, {0: 50}), config)
    assert "third parties only" in budget.guarantee and "simulation_keys=random" in budget.guarantee


@pytest.mark.parametrize(("noise", "add_remove_rdp", "replace_one"), [(0.5, 41.65, 111.4), (0.1, 534.86, 1840.0)])
def test_central_dp_replace_one_and_pld(tiny_experiment, noise, add_remove_rdp, replace_one):
    # Figures checked independently when the units question was raised (5 clients, 8 rounds, delta 1e-5).
    pld, replaced = central_dp_epsilons(noise, 8, 1e-5)
    assert replaced == pytest.approx(replace_one, rel=2e-3)
    assert pld < add_remove_rdp  # PLD is tighter than the RDP the server's accountant reports
    experiment = tiny_experiment("privacy=central_dp", f"privacy.noise_multiplier={noise}")
    budget = privacy_budget(experiment, rounds(8, {0: 10}), experiment.to_dict())
    assert budget.epsilon_unit == "client" and budget.epsilon_replace_one == pytest.approx(replaced)
    assert "not the server" in budget.guarantee or "anyone but the server" in budget.guarantee
    assert "update (the clipped model update itself" in budget.leaks


def test_methods_without_dp_have_no_unit(tiny_experiment):
    for overrides in (("privacy=none",), ("privacy=visualmixer",), ("privacy=gaussian_blur",)):
        experiment = tiny_experiment(*overrides)
        budget = privacy_budget(experiment, rounds(1, {0: 10}), experiment.to_dict())
        assert budget.epsilon_unit == "" and budget.leaks == "" and "attacks" in budget.guarantee
