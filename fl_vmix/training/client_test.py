"""LocalClient without Flower: protect once (static) or every round (dynamic), train, evaluate, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_vmix.data.client import ClientData
from fl_vmix.factory import build_privacy, client_data, initial_model, local_client
from fl_vmix.training.client import BoundedCache
from fl_vmix.training.obfuscation import obfuscate

KEY = bytes(range(32))


@pytest.fixture()
def data(tiny_experiment) -> ClientData:
    return client_data(tiny_experiment(), {"partition-id": 0, "num-partitions": 2})


def test_static_clients_protect_their_images_once(tiny_experiment, data):
    experiment = tiny_experiment()
    client = local_client(experiment, data, KEY)
    first, again = client.train_split(1), client.train_split(2)
    assert first is again, "a static shuffle is the same every round: protect once, reuse"
    # Oracle: the privacy method applied directly to the clear uint8 images.
    method = build_privacy(experiment.privacy, KEY)
    token = data.dataset.token  # the client binds its data's identity into the shuffle
    expected = method(torch.from_numpy(data.train_images).float() / 255, torch.from_numpy(data.train_ids), 0, token)
    assert torch.equal(first.images, expected)
    assert not np.isnan(first.ssim) and np.isnan(client.test_split().ssim), "SSIM is measured only where it is reported"


def test_dynamic_clients_reshuffle_every_round(tiny_experiment, data):
    experiment = tiny_experiment("privacy.mode=dynamic")
    client = local_client(experiment, data, KEY)
    one, two = client.train_split(1), client.train_split(2)
    assert not torch.equal(one.images, two.images)
    method = build_privacy(experiment.privacy, KEY)
    replay = obfuscate(
        method, data.train_images, data.train_labels, data.train_ids, epoch=2, vfe_window=8, dataset=data.dataset
    )
    assert torch.equal(two.images, replay.images)
    assert client.test_split() is client.test_split(), "the test split stays fixed so rounds are comparable"


def test_a_round_reports_its_metrics_and_returns_trained_weights(tiny_experiment, data):
    experiment = tiny_experiment()
    client = local_client(experiment, data, KEY)
    weights = initial_model(experiment).state_dict()
    result = client.train(weights, 1, epochs=1)
    assert result.accountant_history is None
    assert set(result.metrics) == {
        "train_loss",
        "train_accuracy",
        "num-examples",
        "vfe_corrected",
        "vfe_reference",
        "ssim",
        "psnr",
        "obfuscation_s",
        "vfe_unreached_fraction",
        "train_time_s",
    }
    assert result.metrics["num-examples"] == len(data.train_labels)
    assert any(not torch.equal(result.weights[k], weights[k]) for k in weights)
    again = local_client(experiment, data, KEY).train(weights, 1, epochs=1)
    assert all(torch.equal(result.weights[k], again.weights[k]) for k in weights), "a round is reproducible"
    evaluation = client.evaluate(result.weights)
    assert set(evaluation.metrics) == {"loss", "accuracy", "num-examples"} and evaluation.weights == {}


def test_local_dp_methods_report_their_epsilon(tiny_experiment, data):
    static = local_client(tiny_experiment("privacy=pixel_dp_laplace", "privacy.epsilon=4.0"), data, KEY)
    weights = initial_model(tiny_experiment("privacy=pixel_dp_laplace")).state_dict()
    assert static.train(weights, 3, epochs=1).metrics["epsilon"] == 4.0
    dynamic = local_client(
        tiny_experiment("privacy=pixel_dp_laplace", "privacy.epsilon=4.0", "privacy.noise_mode=dynamic"), data, KEY
    )
    assert dynamic.train(weights, 3, epochs=1).metrics["epsilon"] == 12.0  # three releases, basic composition


def test_bounded_cache_keeps_the_most_recently_used():
    cache: BoundedCache[str, int] = BoundedCache(2)
    made: list[str] = []

    def make(key: str) -> int:
        made.append(key)
        return len(made)

    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get(key, lambda key=key: make(key))
    assert made == ["a", "b", "c", "b"]  # "b" was evicted by "c" (least recently used), "a" stayed
    assert len(cache) == 2 and "a" in cache and "c" not in cache
    cache.resize(1)
    assert len(cache) == 1 and "b" in cache
    with pytest.raises(ValueError, match="engine.client_cache"):
        BoundedCache(0)


def test_clients_augment_and_resize_their_clear_images_before_protecting_them(tiny_experiment, data):
    from fl_vmix.data.transforms import crop_flip, resize_images
    from fl_vmix.training.seeds import seed_for

    experiment = tiny_experiment("dataset.image_size=40", "dataset.augment=crop_flip", "privacy.region_size=5")
    client = local_client(experiment, data, KEY)
    one, two = client.train_split(1), client.train_split(2)
    assert one.images.shape[-2:] == (40, 40) and client.test_split().images.shape[-2:] == (40, 40)
    assert not torch.equal(one.images, two.images), "a new augmentation every round, even in static mode"
    # Oracle: augment the clear images with the round's public seed, resize, then protect (epoch 0: static).
    clear = resize_images(crop_flip(data.train_images, seed_for(experiment.seed, 0, 2, 2)), 40)
    method = build_privacy(experiment.privacy, KEY)
    token = data.dataset.token
    assert torch.equal(
        two.images, method(torch.from_numpy(clear).float() / 255, torch.from_numpy(data.train_ids), 0, token)
    )
    # The test split is resized, never augmented, and protected once.
    test_clear = resize_images(data.test_images, 40)
    expected = method(torch.from_numpy(test_clear).float() / 255, torch.from_numpy(data.test_ids), 0, token)
    assert torch.equal(client.test_split().images, expected)
    # The model is built for the size it sees, and a round trains on it.
    weights = initial_model(experiment).state_dict()
    assert client.train(weights, 1, epochs=1).metrics["num-examples"] == len(data.train_labels)


def test_a_cosine_schedule_sets_each_rounds_learning_rate(tiny_experiment):
    from fl_vmix.factory import build_optimizer

    experiment = tiny_experiment("optimizer=sgd", "optimizer.lr=0.1", "optimizer.schedule=cosine", "num_rounds=4")
    params = [torch.nn.Parameter(torch.zeros(1))]
    lrs = [build_optimizer(experiment, params, r).param_groups[0]["lr"] for r in range(1, 5)]
    # cos(pi * (r - 1) / 4) for r = 1..4 is 1, 1/sqrt(2), 0, -1/sqrt(2)
    half = 0.5**0.5
    assert lrs == pytest.approx([0.1, 0.05 * (1 + half), 0.05, 0.05 * (1 - half)])
    constant = tiny_experiment("optimizer=sgd", "optimizer.lr=0.1")
    assert build_optimizer(constant, params, 3).param_groups[0]["lr"] == 0.1
