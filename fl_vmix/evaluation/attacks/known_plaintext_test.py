import pytest
import torch

from conftest import require_shared
from fl_vmix.evaluation.attacks._testing import smooth_images
from fl_vmix.evaluation.attacks.known_plaintext import (
    _regions,
    known_plaintext_attack,
    learn_permutations,
    restore_smoothest,
    reused_permutation_shuffle,
)
from fl_vmix.privacy import VisualMixer

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def bank_shuffle(images: torch.Tensor, bank_size: int, seed: int = 0) -> torch.Tensor:
    return reused_permutation_shuffle(images, bank_size, 8, seed)


def test_a_known_pair_reveals_its_permutations_exactly():
    clear = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # distinct values
    obfuscated = bank_shuffle(clear, bank_size=1000)
    learned = learn_permutations(clear, obfuscated, 8)
    rows = _regions(clear, 8, pool_channels=False)
    shuffled = _regions(obfuscated, 8, pool_channels=False)
    assert learned.shape[0] == len({tuple(r) for r in learned.tolist()}) <= 2 * 3 * 4
    # every shuffled row is its clear row under one of the learned permutations
    assert all(any(torch.equal(rows[i][p], shuffled[i]) for p in learned) for i in range(rows.shape[0]))


def test_smoothest_candidate_restores_smooth_regions():
    clear = smooth_images(3, 3, 16)
    g = torch.Generator().manual_seed(1)
    rows = _regions(clear, 8, pool_channels=False)
    true_perms = torch.argsort(torch.rand(rows.shape[0], 64, generator=g), dim=1)
    shuffled = rows.gather(1, true_perms)
    decoys = torch.argsort(torch.rand(500, 64, generator=g), dim=1)
    restored = restore_smoothest(shuffled, torch.cat([decoys, true_perms]), 8, budget=2**16)
    assert torch.equal(restored, rows)


def test_reused_permutations_are_restored_from_known_pairs():
    images = smooth_images(70, 3, 32, seed=2)
    obfuscated = bank_shuffle(images, bank_size=32)
    control = bank_shuffle(images[:20], bank_size=32, seed=1)  # the same scheme under another key
    result = known_plaintext_attack(images[:20], obfuscated[:20], control, images[20:], obfuscated[20:], region=8)
    assert result.exact_fraction > 0.9 and result.value_fraction > 0.95
    assert result.control_exact_fraction < 0.05 and result.control_value_fraction < 0.3
    assert result.ssim > result.control_ssim + 0.2


def test_fresh_visualmixer_permutations_give_nothing_over_the_control():
    images = smooth_images(110, 3, 32, seed=3)
    obfuscated = VisualMixer(KEY, block_sizes=(2, 1), target_ratio=3.0)(images, list(range(110)))
    control = VisualMixer(OTHER_KEY, block_sizes=(2, 1), target_ratio=3.0)(images[:100], list(range(100)))
    result = known_plaintext_attack(images[:100], obfuscated[:100], control, images[100:], obfuscated[100:], region=8)
    assert result.candidates >= 100 * 3 * 16 * 0.99  # fresh: (almost) every learned permutation is distinct
    assert result.exact_fraction <= result.control_exact_fraction + 0.01
    assert result.value_fraction <= result.control_value_fraction + 0.01
    assert abs(result.ssim - result.control_ssim) < 0.03


def test_bad_input():
    a = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        learn_permutations(a, a[:1], 8)
    with pytest.raises(ValueError, match="same shape"):
        known_plaintext_attack(a, a, a, a, a[:1], region=8)
    with pytest.raises(ValueError, match="full"):
        tiny = torch.rand(1, 3, 4, 4)
        known_plaintext_attack(tiny, tiny, tiny, tiny, tiny, 8)


@pytest.mark.integration
@pytest.mark.slow
def test_real_cifar10_known_pairs_do_not_help(tmp_path):
    from fl_vmix.data import load_dataset

    archive = require_shared("cifar10-jpg.tar.xz")
    data = load_dataset("cifar10", archive.parent, "test", cache_dir=tmp_path)
    images = torch.from_numpy(data.images[:120].copy()).float() / 255
    obfuscated = VisualMixer(KEY, block_sizes=(2, 1), target_ratio=3.0)(images, list(range(120)))
    control = VisualMixer(OTHER_KEY, block_sizes=(2, 1), target_ratio=3.0)(images[:100], list(range(100)))
    result = known_plaintext_attack(images[:100], obfuscated[:100], control, images[100:], obfuscated[100:], region=8)
    assert result.exact_fraction <= result.control_exact_fraction + 0.01
    assert abs(result.ssim - result.control_ssim) < 0.03
