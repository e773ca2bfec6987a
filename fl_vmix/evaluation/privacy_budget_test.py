"""Units, other-unit epsilons, guarantees and leaks of each DP method, against independent figures."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant

from fl_vmix.apps.keys import DERIVED_KEYS_WARNING
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
    assert all(math.isnan(e) for e in (budget.epsilon_pixel, budget.epsilon_image, budget.epsilon_replace_one))


def test_derived_simulation_keys_void_dp_sgds_guarantee_only_with_reproducible_noise(tiny_experiment):
    experiment = tiny_experiment("privacy=dp_sgd", "engine.simulation_keys=derived", "reproducible_noise=true")
    budget = privacy_budget(experiment, rounds(1, {0: 50}), experiment.to_dict())
    assert "third parties only" in budget.guarantee and "reproducible_noise=false" in budget.guarantee
    assert budget.guarantee.endswith(DERIVED_KEYS_WARNING) and budget.leaks.endswith("simulation_keys=derived)")
    # By default the noise and sampling come from OS entropy: the key does not matter to DP-SGD.
    secret = tiny_experiment("privacy=dp_sgd", "engine.simulation_keys=derived")
    budget = privacy_budget(secret, rounds(1, {0: 50}), secret.to_dict())
    assert "against the server and everyone downstream: each client draws its noise and sampling from OS entropy" in (
        budget.guarantee
    )
    assert DERIVED_KEYS_WARNING not in budget.guarantee and "client keys" not in budget.leaks


def test_reproducible_central_dp_noise_is_said_to_hold_against_no_one_who_knows_the_seed(tiny_experiment):
    for flag, says in (("true", "reproducible_noise=true draws the server's noise from the run's public seed"),
                       ("false", "anyone but the server, which sees every clipped update before the noise and draws "
                                 "the noise from OS entropy")):  # fmt: skip
        experiment = tiny_experiment("privacy=central_dp", f"reproducible_noise={flag}")
        assert says in privacy_budget(experiment, rounds(2, {0: 10}), experiment.to_dict()).guarantee
    # A config recorded before the setting existed: its noise came from the seed.
    old = {k: v for k, v in experiment.to_dict().items() if k != "reproducible_noise"}
    assert "public seed" in privacy_budget(experiment, rounds(2, {0: 10}), old).guarantee


@pytest.mark.parametrize("method", ["visualmixer", "block_shuffle", "pixel_dp_laplace", "dp_pix"])
def test_every_keyed_row_says_its_keys_are_derived_from_the_seed(tiny_experiment, method):
    derived = tiny_experiment(f"privacy={method}", "engine.simulation_keys=derived")
    budget = privacy_budget(derived, rounds(1, {0: 10}), derived.to_dict())
    assert budget.guarantee.endswith("; " + DERIVED_KEYS_WARNING)
    assert "anyone with the run's config.json can derive every client's key" in budget.guarantee
    assert budget.leaks.endswith("client keys (derivable from config.json's seed: engine.simulation_keys=derived)")
    for secret in (tiny_experiment(f"privacy={method}", "engine.simulation_keys=random"),
                   tiny_experiment(f"privacy={method}", "engine=deployment")):  # fmt: skip
        budget = privacy_budget(secret, rounds(1, {0: 10}), secret.to_dict())
        assert "derive" not in budget.guarantee and "client keys" not in budget.leaks


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
    similarity = (
        "psnr (compares the protected training images with the clear ones); "
        "ssim (compares the protected training images with the clear ones)"
    )
    for overrides, leaks in ((("privacy=none",), ""), (("privacy=visualmixer", "engine.simulation_keys=random"),
                             similarity), (("privacy=gaussian_blur",), similarity)):  # fmt: skip
        experiment = tiny_experiment(*overrides)
        budget = privacy_budget(experiment, rounds(1, {0: 10}), experiment.to_dict())
        assert budget.epsilon_unit == "" and budget.leaks == leaks
        assert budget.guarantee == "no DP guarantee: privacy is graded by attacks"
        epsilons = (budget.epsilon_pixel, budget.epsilon_image, budget.epsilon_replace_one, budget.epsilon_pld)
        assert all(math.isnan(e) for e in epsilons), epsilons


# ---------------------------------------------------------------------------------------------- independent oracles


def gaussian_epsilon_closed_form(mu: float, delta: float) -> float:
    """Epsilon of a Gaussian mechanism with sensitivity / sigma = mu at delta (Balle & Wang 2018, Theorem 8):
    delta(eps) = Phi(-eps / mu + mu / 2) - e^eps Phi(-eps / mu - mu / 2), solved with scipy."""
    from scipy import optimize, stats

    def excess(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2)) - delta

    return float(optimize.brentq(excess, 0.0, 50.0 * mu * mu + 50.0, xtol=1e-12))


@pytest.mark.parametrize(("noise", "releases"), [(0.5, 8), (2.0, 3), (1.0, 1), (25.0, 1)])
def test_central_dp_epsilons_are_the_gaussian_closed_form(noise, releases):
    # k releases of the noisy mean at noise multiplier z are one Gaussian mechanism with mu = sqrt(k) / z (exact);
    # replacing a client moves the fixed-divisor mean twice as far as adding or removing one: mu doubles.
    add_remove, replace_one = central_dp_epsilons(noise, releases, 1e-5)
    mu = math.sqrt(releases) / noise
    # Discretised at about 1e-4 of its own size: at noise 25 (epsilon 0.13) a fixed interval of 1e-2 is 0.8% off.
    assert add_remove == pytest.approx(gaussian_epsilon_closed_form(mu, 1e-5), rel=1e-4)
    assert replace_one == pytest.approx(gaussian_epsilon_closed_form(2 * mu, 1e-5), rel=1e-4)


def test_central_dp_budget_counts_the_recorded_rounds_and_its_delta(tiny_experiment):
    experiment = tiny_experiment("privacy=central_dp", "privacy.noise_multiplier=2.0", "privacy.delta=1e-4")
    recorded = [{"round": 0, "clients": {}}, *rounds(3, {0: 10, 1: 20})]  # round 0: central evaluation only
    budget = privacy_budget(experiment, recorded, experiment.to_dict())
    mu = math.sqrt(3) / 2.0
    assert budget.epsilon_pld == pytest.approx(gaussian_epsilon_closed_form(mu, 1e-4), rel=1e-3)
    assert budget.epsilon_replace_one == pytest.approx(gaussian_epsilon_closed_form(2 * mu, 1e-4), rel=1e-3)
    assert f"replace-one neighbours: {budget.epsilon_replace_one:.4g}" in budget.guarantee
    assert math.isnan(budget.epsilon_pixel) and math.isnan(budget.epsilon_image)


def test_dp_sgd_pld_is_the_largest_clients_epsilon(tiny_experiment):
    # An independent numerical accountant (Opacus' PRV accountant, Gopi et al. 2021) for each client's Poisson-
    # subsampled Gaussian steps: the run's epsilon is the worst client's, the one with the fewest examples (the
    # largest sampling rate), at the configured noise and delta.
    from opacus.accountants import PRVAccountant

    experiment = tiny_experiment("privacy=dp_sgd", "privacy.noise_multiplier=1.3", "privacy.delta=1e-4")
    sizes = {0: 300, 1: 64, 2: 200}
    recorded = rounds(3, sizes)
    budget = privacy_budget(experiment, recorded, experiment.to_dict())
    b, epochs = experiment.batch_size, experiment.local_epochs

    def prv(n: int) -> float:
        batches = -(-n // b)
        accountant = PRVAccountant()
        accountant.history = [(1.3, 1 / batches, 3 * epochs * batches)]
        return float(accountant.get_epsilon(1e-4))

    per_client = {pid: prv(n) for pid, n in sizes.items()}
    assert budget.epsilon_pld == pytest.approx(per_client[1], rel=0.01)
    assert per_client[1] > 1.2 * max(per_client[0], per_client[2]), "the clients' epsilons must differ clearly"
    # A client's latest recorded size counts (sizes do not change within a run; the last one is kept).
    assert budget.epsilon_unit == "example" and math.isnan(budget.epsilon_replace_one)


def test_dp_sgd_events_count_local_epochs():
    events = dp_sgd_events([100, 7], batch_size=10, rounds=3, epochs=2, noise=0.8)
    assert [e[0].count for e in events] == [3 * 2 * 10, 3 * 2 * 1]
    assert [e[0].event.sampling_probability for e in events] == [0.1, 1.0]
    assert all(e[0].event.event.noise_multiplier == 0.8 for e in events)


@pytest.mark.parametrize(
    ("overrides", "pixel", "image"),
    [
        # Laplace, epsilon 2 per value: linear in the values (3 per RGB pixel, 3 x 32 x 32 per image).
        (("privacy=pixel_dp_laplace", "privacy.epsilon=2.0"), 6.0, 6144.0),
        # Fresh noise every round (dynamic): each of the 3 recorded rounds is a release, epsilons add up.
        (("privacy=pixel_dp_laplace", "privacy.epsilon=2.0", "privacy.noise_mode=dynamic"), 18.0, 18432.0),
        # DP-Pix, epsilon 1 per value (m = 1): every value costs epsilon / m.
        (("privacy=dp_pix", "privacy.epsilon=1.0"), 3.0, 3072.0),
        # Grey 28 px images (PneumoniaMNIST): one value per pixel, 784 per image.
        (("privacy=pixel_dp_laplace", "privacy.epsilon=2.0", "dataset=pneumoniamnist"), 2.0, 1568.0),
    ],
)
def test_image_dp_epsilons_in_other_units(overrides, pixel, image):
    experiment = compose(list(overrides))  # known datasets: shapes without reading data
    budget = privacy_budget(experiment, rounds(3, {0: 10}), experiment.to_dict())
    assert budget.epsilon_pixel == pytest.approx(pixel, rel=1e-9)
    assert budget.epsilon_image == pytest.approx(image, rel=1e-9)
    assert budget.epsilon_unit == "value"
    assert f"one whole pixel: epsilon {pixel:.4g}; a whole image: {image:.4g}" in budget.guarantee


def test_public_simulation_keys_are_said_for_image_dp():
    experiment = compose(["privacy=pixel_dp_laplace", "privacy.epsilon=2.0"])
    config = experiment.to_dict()
    config["engine"] = {**config["engine"], "name": "simulation", "simulation_keys": "derived"}
    budget = privacy_budget(experiment, rounds(1, {0: 10}), config)
    assert budget.guarantee.endswith("; " + DERIVED_KEYS_WARNING)
    deployed = {**config, "engine": {**config["engine"], "name": "deployment"}}
    assert DERIVED_KEYS_WARNING not in privacy_budget(experiment, rounds(1, {0: 10}), deployed).guarantee


def test_leaks_list_exactly_the_metrics_sent_outside_the_accountant(tiny_experiment):
    experiment = tiny_experiment("privacy=dp_sgd")
    sent = [{"round": 1, "clients": {"0": {"num-examples": 5, "epsilon": 1.0, "train_loss": 0.5, "custom": 1.0}}}]
    budget = privacy_budget(experiment, sent, experiment.to_dict())
    assert budget.leaks == (
        "num-examples (the partition size, exact); train_loss (un-noised forward passes on the clear training examples)"
    )
    central = tiny_experiment("privacy=central_dp")
    leaks = privacy_budget(central, sent, central.to_dict()).leaks
    assert leaks.startswith("num-examples (") and "; train_loss (forward passes on the clear" in leaks
    assert leaks.endswith("update (the clipped model update itself: the server adds the noise after it has seen it)")


def test_a_run_without_training_rounds_is_charged_one_release(tiny_experiment):
    """Round 0 (the central evaluation) is not a release; the images or the model are still released once."""
    only_round_0 = [{"round": 0, "clients": {}}]
    central = tiny_experiment("privacy=central_dp", "privacy.noise_multiplier=2.0")
    budget = privacy_budget(central, only_round_0, central.to_dict())
    assert budget.epsilon_pld == pytest.approx(gaussian_epsilon_closed_form(1 / 2.0, 1e-5), rel=1e-4)
    # Fresh noise every round: epsilon grows with the rounds (Laplace: linearly), and no round counts as one.
    image_dp = compose(["privacy=pixel_dp_laplace", "privacy.epsilon=2.0", "privacy.noise_mode=dynamic"])
    none, one, two = (
        privacy_budget(image_dp, r, image_dp.to_dict()).epsilon_pixel
        for r in (only_round_0, rounds(1, {0: 10}), rounds(2, {0: 10}))
    )
    assert none == one == 6.0 and two == 12.0  # one RGB pixel: 3 values at epsilon 2 each


def test_configs_recorded_without_engine_settings_are_simulations_with_secret_keys(tiny_experiment):
    experiment = tiny_experiment("privacy=dp_sgd")
    # Recorded before engine settings and reproducible_noise: DP-SGD's noise came from the key.
    config = {k: v for k, v in experiment.to_dict().items() if k not in ("engine", "reproducible_noise")}
    budget = privacy_budget(experiment, rounds(1, {0: 50}), config)
    assert "the server and everyone downstream" in budget.guarantee
    derived = privacy_budget(experiment, rounds(1, {0: 50}), {**config, "engine": {"simulation_keys": "derived"}})
    assert "third parties only" in derived.guarantee  # no engine name recorded: a simulation


def test_a_dp_sgd_run_that_recorded_no_client_has_no_epsilon(tiny_experiment):
    experiment = tiny_experiment("privacy=dp_sgd")
    budget = privacy_budget(experiment, [], experiment.to_dict())
    assert budget.epsilon_unit == "example" and math.isnan(budget.epsilon_pld)
