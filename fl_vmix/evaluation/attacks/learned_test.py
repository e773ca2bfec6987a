import hashlib

import pytest
import torch
from torch import nn

from fl_vmix.evaluation.attacks._testing import one_thread, smooth_images
from fl_vmix.evaluation.attacks.jigsaw import shuffle_blocks
from fl_vmix.evaluation.attacks.learned import (
    LearnedAttackConfig,
    LearnedDeobfuscator,
    ReconstructionUNet,
    attack_features,
    attacker_key,
    feature_channels,
    keeps_region_values,
    keyed_method_factory,
    quantile_lookup,
    score_learned_attack,
    train_deobfuscator,
)
from fl_vmix.evaluation.attacks.regions import region_sorted, thumbnail
from fl_vmix.privacy import VisualMixer
from fl_vmix.privacy.similarity import psnr

_one_thread = pytest.fixture(autouse=True)(one_thread)

TINY = {"widths": (8, 16), "batch_size": 32, "lr": 1e-2, "chunk_size": 256, "validation_images": 0, "log_every": 10}


def _fixed_shuffle(region: int):
    """A key-independent shuffle: every region of every image and channel rotated by one pixel."""
    perm = torch.roll(torch.arange(region * region), 1).view(1, 1, 1, 1, -1)

    def method(images: torch.Tensor, ids: torch.Tensor, epoch: int) -> torch.Tensor:
        return shuffle_blocks(images, region, 1, perm)

    return method


def _keyed_shuffle(key: bytes):
    mixer = VisualMixer(key, region_size=4, block_sizes=(1,), target_ratio=None)
    return lambda images, ids, epoch: mixer(images, ids, epoch)


def test_quantile_lookup_reads_region_values_at_a_rank():
    x = torch.rand(2, 3, 10, 7, generator=torch.Generator().manual_seed(0))  # partial regions too
    values, _ = region_sorted(x, 4)
    lo, hi = quantile_lookup(torch.zeros_like(x), x, 4), quantile_lookup(torch.ones_like(x), x, 4)
    assert torch.equal(lo[..., :4, :4], values[:, :, 0, 0, :1].unsqueeze(-1).expand(2, 3, 4, 4))
    assert torch.allclose(hi[..., 8:, 4:], x[..., 8:, 4:].amax((-1, -2), keepdim=True).expand(2, 3, 2, 3))
    # each pixel's own normalised rank gives the image back: the head can represent any arrangement
    y = x[..., :8, :4]
    windows = y.reshape(2, 3, 2, 4, 1, 4).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 1, 16)
    rank = windows.argsort(-1).argsort(-1).float() / 15
    rank = rank.view(2, 3, 2, 1, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 8, 4)
    assert torch.allclose(quantile_lookup(rank, y, 4), y, atol=1e-6)


def test_features_are_shuffle_invariant_except_the_image_itself():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a, b = (
        _keyed_shuffle(attacker_key(0, "a"))(x, torch.arange(3), 0),
        _keyed_shuffle(attacker_key(0, "b"))(x, torch.arange(3), 0),
    )
    fa, fb = attack_features(a, 4, 8), attack_features(b, 4, 8)
    assert fa.shape == (3, feature_channels(3, 8), 16, 16)
    assert not torch.equal(fa[:, :3], fb[:, :3]) and torch.allclose(fa[:, 3:], fb[:, 3:])
    assert keeps_region_values(x, a, 4) and not keeps_region_values(x, 1 - x, 4)


def test_unet_size_and_odd_inputs():
    net = ReconstructionUNet(feature_channels(3, 16), 3)
    assert 400_000 < sum(p.numel() for p in net.parameters()) < 600_000  # the ~0.5M of the reference attack
    for side in (28, 27, 32):
        assert net(torch.rand(2, feature_channels(3, 16), side, side)).shape == (2, 3, side, side)


@pytest.mark.parametrize(
    ("head", "widths", "side", "epochs"),
    [("auto", (8, 16), 12, 4), pytest.param("direct", (16, 32), 16, 4, marks=pytest.mark.slow)],
)
def test_fixed_key_independent_shuffle_is_fully_learned(head, widths, side, epochs):
    g = torch.Generator().manual_seed(0)
    public, victims = torch.rand(512, 1, side, side, generator=g), torch.rand(64, 1, side, side, generator=g)
    method = _fixed_shuffle(2)
    config = LearnedAttackConfig(
        region_size=2, quantiles=4, epochs=epochs, flip=False, head=head, **{**TINY, "widths": widths}
    )
    model, history = train_deobfuscator(public, lambda key: method, config)
    assert history.head == ("quantile" if head == "auto" else head) and history.steps == 16 * epochs
    obfuscated = method(victims, torch.arange(64), 0)
    result = score_learned_attack(model.reconstruct(obfuscated), victims, obfuscated, 2)
    assert result.ssim_to_clear > 0.95 and result.thumbnail_ssim < 0.5


def test_auto_head_is_direct_when_region_values_change():
    x = smooth_images(64, 3, 12, seed=2)
    config = LearnedAttackConfig(region_size=4, quantiles=4, epochs=1, **TINY)
    _, history = train_deobfuscator(x, lambda key: lambda images, ids, epoch: 1 - images, config)
    assert history.head == "direct" and history.steps == 2


def test_pure_noise_is_not_restored_beyond_the_thumbnail():
    g = torch.Generator().manual_seed(3)
    public, victims = torch.rand(512, 1, 16, 16, generator=g), torch.rand(64, 1, 16, 16, generator=g)
    keys_seen = []

    def factory(key: bytes):
        keys_seen.append(key)
        return _keyed_shuffle(key)

    config = LearnedAttackConfig(region_size=4, quantiles=4, epochs=2, flip=False, **TINY)
    model, _ = train_deobfuscator(public, factory, config)
    obfuscated = _keyed_shuffle(hashlib.sha256(b"victim").digest())(victims, torch.arange(64), 0)
    result = score_learned_attack(model.reconstruct(obfuscated), victims, obfuscated, 4)
    assert len(set(keys_seen)) == len(keys_seen) >= 4 and all(len(k) == 32 for k in keys_seen)  # a fresh key per chunk
    # For iid pixels the region mean is the best estimate of every pixel given its region's values (least
    # squares), so no attack can beat the nearest-neighbour thumbnail in PSNR; nothing is restored either.
    # (SSIM alone would reward a contrast-amplified thumbnail, so it only has to stay far from restoration.)
    optimum = float(psnr(thumbnail(obfuscated, 4, "nearest"), victims).mean())
    assert result.psnr_to_clear < optimum + 0.05 and result.ssim_to_clear < 0.25


def test_seeded_training_is_reproducible_and_the_budget_stops_it():
    x = smooth_images(96, 1, 12, seed=4)
    config = LearnedAttackConfig(region_size=4, quantiles=4, epochs=1, **{**TINY, "chunk_size": 48})
    a, _ = train_deobfuscator(x, lambda key: _keyed_shuffle(key), config)
    b, _ = train_deobfuscator(x, lambda key: _keyed_shuffle(key), config)
    probe = _keyed_shuffle(b"\1" * 32)(x[:8], torch.arange(8), 0)
    assert torch.equal(a.reconstruct(probe), b.reconstruct(probe))
    budget = LearnedAttackConfig(region_size=4, quantiles=4, epochs=1000, time_budget_s=0.5, **TINY)
    _, history = train_deobfuscator(x, lambda key: _keyed_shuffle(key), budget)
    assert history.stopped_by_budget and history.seconds < 5 and history.steps < 1000 * 3


def test_scores_and_clear_classifier_recognition():
    clear = smooth_images(6, 3, 16, seed=5)
    obfuscated = _keyed_shuffle(b"\2" * 32)(clear, torch.arange(6), 0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    labels = classifier(clear).argmax(1).detach()  # the classifier is right on clear images by construction
    result = score_learned_attack(clear.clone(), clear, obfuscated, 4, classifier=classifier, labels=labels)
    assert result.ssim_to_clear == pytest.approx(1.0, abs=1e-4) and result.psnr_to_clear == 100.0
    assert result.recognition_reconstructed == result.recognition_clear == 1.0 and result.chance == 0.25
    assert result.obfuscated_ssim < result.thumbnail_ssim < 1 and len(result.per_image_ssim) == 6
    with pytest.raises(ValueError, match="same shape"):
        score_learned_attack(clear[:3], clear, obfuscated, 4)


def test_method_factory_gives_keys_or_nothing():
    x, ids = smooth_images(2, 3, 16), torch.arange(2)
    vm = keyed_method_factory("visualmixer", region_size=8, block_sizes=[1], target_ratio=None)
    assert not torch.equal(vm(b"a" * 32)(x, ids, 0), vm(b"b" * 32)(x, ids, 0))
    noise = keyed_method_factory("pixel_dp_gaussian", noise_scale=0.1)
    assert not torch.equal(noise(b"a" * 32)(x, ids, 0), noise(b"b" * 32)(x, ids, 0))
    blur = keyed_method_factory("gaussian_blur")
    assert torch.equal(blur(b"a" * 32)(x, ids, 0), blur(b"b" * 32)(x, ids, 0))
    with pytest.raises(ValueError, match="unknown privacy method"):
        keyed_method_factory("rot13")
    with pytest.raises(ValueError, match="training"):
        keyed_method_factory("dp_sgd")
    with pytest.raises(ValueError, match="no key"):
        keyed_method_factory("visualmixer", key=b"x" * 32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"region_size": 0}, "region_size"),
        ({"head": "magic"}, "head"),
        ({"lr": 0}, "lr"),
        ({"time_budget_s": 0}, "time_budget"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearnedAttackConfig(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_deobfuscator(
            torch.rand(64, 1, 12, 12) * 2, lambda key: _fixed_shuffle(2), LearnedAttackConfig(region_size=2)
        )
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_deobfuscator(torch.rand(8, 1, 12, 12), lambda key: _fixed_shuffle(2), LearnedAttackConfig(region_size=2))
    with pytest.raises(ValueError, match="expected the input shape"):
        train_deobfuscator(
            torch.rand(80, 1, 12, 12), lambda key: lambda x, i, e: x[:, :, :8], LearnedAttackConfig(region_size=2)
        )
    model = LearnedDeobfuscator(LearnedAttackConfig(region_size=4, widths=(4,)), 3, "direct")
    with pytest.raises(ValueError, match="3-channel"):
        model.reconstruct(torch.rand(2, 1, 12, 12))


@pytest.mark.parametrize(
    ("name", "params", "head"),
    [
        ("visualmixer", {"region_size": 4, "block_sizes": [2, 1]}, "quantile"),
        ("visualmixer", {"region_size": 4, "block_sizes": [1], "permute_channels": True}, "direct"),
        ("block_shuffle", {"region_size": 4, "permute_channels": False}, "quantile"),
        ("gaussian_blur", {"kernel_size": 3}, "direct"),
        ("mosaic", {"cell_size": 4}, "direct"),
        ("pixel_dp_gaussian", {"epsilon": 8.0}, "direct"),
        ("pixel_dp_laplace", {"epsilon": 8.0}, "direct"),
        ("dp_pix", {"epsilon": 1.0, "b": 4}, "direct"),
    ],
)
def test_every_image_level_method_trains_with_the_head_its_invariants_allow(name, params, head):
    x = smooth_images(48, 3, 12, seed=6)
    config = LearnedAttackConfig(region_size=4, quantiles=4, epochs=1, **{**TINY, "chunk_size": 24})
    model, history = train_deobfuscator(x, keyed_method_factory(name, **params), config)
    assert history.head == head and history.keys_used == 2 and history.steps == 2
    assert model.reconstruct(x[:2]).shape == (2, 3, 12, 12)
