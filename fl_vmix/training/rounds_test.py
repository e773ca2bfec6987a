"""A client's rounds: the same trained weights in another process, bit for bit; in dynamic mode each round trains
on that round's own shuffle (or noise), in static mode every round on the same one.

Only the public interface of :class:`fl_vmix.training.client.LocalClient` is used (its ``trainer`` is the
seam that records what a round trains on); the oracles are fresh privacy methods built with the same key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_vmix.data.client import ClientData
from fl_vmix.factory import build_privacy, client_data, initial_model, local_client
from fl_vmix.privacy import VisualMixer
from fl_vmix.training.client import LocalClient, LocalTraining
from fl_vmix.training.obfuscation import ObfuscatedSplit

KEY = bytes(range(32))
REPO = Path(__file__).resolve().parents[2]
NODE = {"partition-id": 1, "num-partitions": 2}

# Two rounds of one client, run in a fresh interpreter: the initial and the trained weights are saved. Both sides
# train on one torch thread: float sums are reproducible for a fixed thread count (a ClientApp fixes it with
# engine.threads_per_client), and tests run earlier in this process may have changed the count.
THREADS = 1
TWO_ROUNDS = f"""
import json, sys, torch
torch.set_num_threads({THREADS})
from fl_vmix.experiment import compose
from fl_vmix.factory import client_data, initial_model, local_client
overrides, node, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
experiment = compose(overrides)
client = local_client(experiment, client_data(experiment, node), bytes(range(32)))
weights = initial_model(experiment).state_dict()
first = client.train(weights, 1, epochs=1, accountant_history=())
second = client.train(first.weights, 2, epochs=1, accountant_history=first.accountant_history or ())
torch.save({{"initial": weights, "trained": second.weights, "metrics": second.metrics}}, out)
"""


def two_rounds_here(overrides: list[str], make) -> dict:
    experiment = make(*overrides)
    client = local_client(experiment, client_data(experiment, NODE), KEY)
    weights = initial_model(experiment).state_dict()
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        first = client.train(weights, 1, epochs=1, accountant_history=())
        second = client.train(first.weights, 2, epochs=1, accountant_history=first.accountant_history or ())
    finally:
        torch.set_num_threads(before)
    return {"initial": weights, "trained": second.weights, "metrics": second.metrics}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.mark.slow  # a fresh interpreter imports torch, torchmetrics and the data stack: 10-45 s here
@pytest.mark.parametrize(
    "overrides",
    [
        ["privacy.mode=dynamic", "optimizer=sgd"],  # VisualMixer, a new shuffle in round 2, SGD with momentum
        # DP-SGD: keyed Poisson sampling and noise, reproducible only on request (by default they come from OS entropy)
        ["privacy=dp_sgd", "privacy.noise_multiplier=0.8", "reproducible_noise=true"],
    ],
    ids=["visualmixer-dynamic", "dp_sgd"],
)
def test_a_clients_weights_are_reproduced_bit_for_bit_in_another_process(tiny_experiment, tmp_path, overrides):
    experiment = tiny_experiment(*overrides)
    # The subprocess composes the same experiment: the fixture's data folder and cache, these overrides.
    dataset = experiment.dataset
    full = [
        "dataset=imagefolder", f"dataset.root={dataset.root}", f"dataset.cache_dir={dataset.cache_dir}",
        "num_clients=2", "batch_size=8", *overrides,
    ]  # fmt: skip
    here = two_rounds_here(overrides, tiny_experiment)
    out = tmp_path / "there.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [sys.executable, "-c", TWO_ROUNDS, json.dumps(full), json.dumps(NODE), str(out)],
        cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    there = torch.load(out)
    assert_bitwise_equal(here["initial"], there["initial"])
    assert any(not torch.equal(here["initial"][k], here["trained"][k]) for k in here["initial"]), "training moved"
    assert_bitwise_equal(here["trained"], there["trained"])
    for name in ("train_loss", "train_accuracy", "vfe_corrected", "ssim"):
        assert here["metrics"][name] == there["metrics"][name], name


# --------------------------------------------------------------------------------------- what each round sees
class Recorder:
    """A trainer that records the split and the job of every round instead of training."""

    def __init__(self) -> None:
        self.rounds: list[tuple[torch.Tensor, LocalTraining]] = []

    def __call__(self, model, split: ObfuscatedSplit, optimizer, job: LocalTraining):
        self.rounds.append((split.images.clone(), job))
        return {"train_loss": 0.0, "train_accuracy": 0.0}, None


def recording_client(experiment, data: ClientData) -> tuple[LocalClient, Recorder]:
    client = local_client(experiment, data, KEY)
    recorder = Recorder()
    client.trainer = recorder
    return client, recorder


def clear(images) -> torch.Tensor:
    return torch.from_numpy(images).float() / 255


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_visualmixer_rounds_train_on_the_keyed_shuffle_of_their_epoch(tiny_experiment, mode):
    experiment = tiny_experiment(f"privacy.mode={mode}", "privacy.target_ratio=2.0", "privacy.permute_channels=true")
    data = client_data(experiment, NODE)
    client, recorder = recording_client(experiment, data)
    weights = initial_model(experiment).state_dict()
    for server_round in (1, 2, 3):
        client.train(weights, server_round, epochs=1)
    # Oracle: a fresh mixer with the client's key and the experiment's settings, at epoch = round (dynamic) or 0.
    mixer = VisualMixer(
        KEY, region_size=8, block_sizes=(2, 1), target_ratio=2.0, mode=mode, permute_channels=True
    )  # fmt: skip
    images, ids = clear(data.train_images), torch.from_numpy(data.train_ids)
    seen = [round_images for round_images, _ in recorder.rounds]
    for server_round, round_images in zip((1, 2, 3), seen, strict=True):
        epoch = server_round if mode == "dynamic" else None
        expected = mixer.mix(images, ids, epoch=epoch, dataset=data.dataset.token).images
        assert torch.equal(round_images, expected), f"round {server_round}"
    if mode == "dynamic":
        assert (
            not torch.equal(seen[0], seen[1])
            and not torch.equal(seen[1], seen[2])
            and not torch.equal(seen[0], seen[2])
        )
    else:
        assert torch.equal(seen[0], seen[2])
    # Every round's batch order has its own public seed, the same for the same round.
    seeds = [job.seed for _, job in recorder.rounds]
    assert len(set(seeds)) == 3
    # The test split is shuffled once, at epoch 0, whatever the mode: accuracies stay comparable across rounds.
    test_images = clear(data.test_images)
    test_ids, token = torch.from_numpy(data.test_ids), data.dataset.token
    expected_test = mixer.mix(test_images, test_ids, epoch=0 if mode == "dynamic" else None, dataset=token)
    assert torch.equal(client.test_split().images, expected_test.images)
    assert client.test_split() is client.test_split()


def test_dynamic_image_noise_is_fresh_every_round(tiny_experiment):
    experiment = tiny_experiment("privacy=pixel_dp_laplace", "privacy.epsilon=8.0", "privacy.noise_mode=dynamic")
    data = client_data(experiment, NODE)
    client, recorder = recording_client(experiment, data)
    weights = initial_model(experiment).state_dict()
    results = [client.train(weights, server_round, epochs=1) for server_round in (1, 2)]
    method = build_privacy(experiment.privacy, KEY)
    images, ids = clear(data.train_images), torch.from_numpy(data.train_ids)
    for server_round, (round_images, _) in zip((1, 2), recorder.rounds, strict=True):
        assert torch.equal(round_images, method(images, ids, server_round, data.dataset.token)), f"round {server_round}"
    assert not torch.equal(recorder.rounds[0][0], recorder.rounds[1][0])
    # Each round is a new release of the images: the reported epsilon composes (Laplace: it adds up).
    assert [r.metrics["epsilon"] for r in results] == [8.0, 16.0]
