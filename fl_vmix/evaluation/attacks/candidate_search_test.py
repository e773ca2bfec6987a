import pytest
import torch

from fl_vmix.evaluation.attacks._testing import one_thread, smooth_images
from fl_vmix.evaluation.attacks.candidate_search import _cost, _regions, candidate_search, estimate_block_sizes
from fl_vmix.evaluation.attacks.jigsaw import random_block_permutation, shuffle_blocks
from fl_vmix.privacy.similarity import ssim

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _shuffled(clear: torch.Tensor, region: int, block: int, seed: int = 0) -> torch.Tensor:
    b, c, h, w = clear.shape
    shape = (b, c, h // region, w // region)
    perm = random_block_permutation(shape, (region // block) ** 2, torch.Generator().manual_seed(seed))
    return shuffle_blocks(clear, region, block, perm)


@pytest.mark.parametrize("cost", ["l2", "l1"])
def test_restores_the_blocks_of_smooth_images(cost):
    clear = smooth_images(4, 3, 32, seed=1)
    obfuscated = _shuffled(clear, 8, 4)
    result = candidate_search(obfuscated, 8, (4,), rounds=2, cost=cost)  # 24 arrangements per region: all tried
    assert ssim(obfuscated, clear).mean() < 0.7
    assert ssim(result.images, clear).min() > 0.99
    exact = (result.images - clear).abs().flatten(1).amax(1) < 1e-6
    if cost == "l2":  # total variation (l1) ties on linear ramps, where several orders are equally smooth
        assert exact.float().mean() >= 0.75  # a region whose blocks are near-identical may stay swapped
    assert (result.block_size == 4).all()
    assert (result.cost_after < result.cost_before).all()


def test_unknown_block_size_per_region():
    # like VisualMixer with a VFE target: some regions shuffled with 4-px blocks, others with 2-px ones;
    # the attacker only knows the candidates (4, 2)
    clear = smooth_images(3, 3, 32, seed=3)
    coarse, fine = _shuffled(clear, 8, 4, seed=1), _shuffled(clear, 8, 2, seed=2)
    checker = ((torch.arange(32) // 8).view(-1, 1) + (torch.arange(32) // 8).view(1, -1)) % 2 == 0
    obfuscated = torch.where(checker, coarse, fine)
    result = candidate_search(obfuscated, 8, (4, 2), candidates=256, rounds=3, seed=0)
    before, after = ssim(obfuscated, clear).mean(), ssim(result.images, clear).mean()
    assert after > 0.9 and after > before + 0.2
    coarse_regions = checker[::8, ::8].expand_as(result.block_size)
    # on the 4-px regions the right size wins (a 2-px arrangement could reproduce it, but seldom as smoothly)
    assert (result.block_size[coarse_regions] == 4).float().mean() > 0.8


def test_block_size_estimate_on_a_known_mixture():
    clear = smooth_images(2, 3, 32, seed=8) + 0.02 * torch.rand(
        2, 3, 32, 32, generator=torch.Generator().manual_seed(0)
    )
    sizes = torch.tensor([[4, 2, 1, 4], [2, 1, 4, 2], [1, 4, 2, 1], [4, 2, 1, 4]])  # per region, both images
    obfuscated = clear.clone()
    for size in (4, 2, 1):
        mask = (sizes == size).repeat_interleave(8, 0).repeat_interleave(8, 1)
        obfuscated = torch.where(mask, _shuffled(clear, 8, size, seed=size), obfuscated)
    estimate = estimate_block_sizes(_regions(obfuscated, 8), (4, 2, 1))
    assert (estimate == sizes).float().mean() >= 0.9


def test_swaps_alone_climb_towards_the_answer():
    clear = smooth_images(2, 1, 32, seed=9)
    obfuscated = _shuffled(clear, 8, 2, seed=3)  # 16 blocks per region: far too many to enumerate
    result = candidate_search(obfuscated, 8, (2,), candidates=0, ramps=0, swaps=32, rounds=12)
    assert ssim(result.images, clear).mean() > ssim(obfuscated, clear).mean() + 0.3
    assert (result.cost_after < 0.7 * result.cost_before).all()


def test_output_is_a_rearrangement_inside_each_region_and_partial_regions_stay():
    x = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    result = candidate_search(x, 8, (2, 1), candidates=32, ramps=4, swaps=8, rounds=2)
    assert torch.equal(result.images[..., 16:, :], x[..., 16:, :])
    assert torch.equal(result.images[..., :, 16:], x[..., :, 16:])

    def regions(t: torch.Tensor) -> torch.Tensor:
        return t[..., :16, :16].reshape(2, 1, 2, 8, 2, 8).permute(0, 1, 2, 4, 3, 5).reshape(2, 1, 4, 64)

    assert torch.equal(regions(result.images).sort(-1).values, regions(x).sort(-1).values)
    assert (result.cost_after <= result.cost_before + 1e-9).all()


def test_seeded_and_deterministic():
    x = _shuffled(smooth_images(2, 3, 16, seed=4), 8, 1)
    a = candidate_search(x, 8, (1,), candidates=64, seed=5)
    b = candidate_search(x, 8, (1,), candidates=64, seed=5)
    assert torch.equal(a.images, b.images)


def test_cost_counts_border_pairs_with_known_neighbours_only():
    region = torch.zeros(1, 2, 2)
    borders = torch.tensor([[[1.0, 1.0], [float("nan")] * 2, [float("nan")] * 2, [0.0, 2.0]]])
    assert float(_cost(region, borders, "l2")) == pytest.approx(1 + 1 + 0 + 4)
    assert float(_cost(region, borders, "l1")) == pytest.approx(1 + 1 + 0 + 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"region_size": 8, "block_sizes": (3,)}, "block_sizes"),
        ({"region_size": 8, "block_sizes": ()}, "block_sizes"),
        ({"region_size": 64, "block_sizes": (2,)}, "no full"),
        ({"region_size": 8, "block_sizes": (2,), "candidates": 0, "ramps": 0, "swaps": 0}, "candidates"),
        ({"region_size": 8, "block_sizes": (2,), "cost": "l3"}, "cost"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        candidate_search(torch.rand(1, 1, 16, 16), **kwargs)
