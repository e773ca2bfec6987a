import pytest
import torch

from fl_vmix.evaluation.attacks._testing import one_thread, smooth_images
from fl_vmix.evaluation.attacks.jigsaw import (
    blocks_in_place,
    extract_blocks,
    insert_blocks,
    neighbours_correct,
    random_block_permutation,
    shuffle_blocks,
    solve_jigsaw,
)
from fl_vmix.privacy.similarity import ssim

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _shuffled(clear: torch.Tensor, region: int, block: int, seed: int = 0):
    b, c, h, w = clear.shape
    generator = torch.Generator().manual_seed(seed)
    perm = random_block_permutation((b, c, h // region, w // region), (region // block) ** 2, generator)
    return perm, shuffle_blocks(clear, region, block, perm)


def test_extract_insert_round_trip_and_gather_convention():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    blocks = extract_blocks(x, 4, 2)
    assert blocks.shape == (1, 1, 1, 1, 4, 2, 2)
    assert blocks[0, 0, 0, 0, 1].tolist() == [[2.0, 3.0], [6.0, 7.0]]  # block 1 = top-right
    assert torch.equal(insert_blocks(x, blocks, 4), x)
    # gather: shuffled block q comes from clear block perm[q]
    out = shuffle_blocks(x, 4, 2, torch.tensor([3, 0, 1, 2]).view(1, 1, 1, 1, 4))
    assert out[0, 0, :2, :2].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    assert out[0, 0, :2, 2:].tolist() == [[0.0, 1.0], [4.0, 5.0]]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("region", "block"), [(16, 8), (32, 8)])
def test_solver_reassembles_smooth_images(channels, region, block):
    clear = smooth_images(4, channels, 32, seed=channels)
    perm, shuffled = _shuffled(clear, region, block, seed=region)
    result = solve_jigsaw(shuffled, region, block)
    assert result.placement.shape == perm.shape
    assert blocks_in_place(result.placement, perm) >= 0.9
    assert neighbours_correct(result.placement, perm) >= 0.9
    before = ssim(shuffled, clear).mean()
    after = result.score(clear, shuffled).ssim_to_clear.mean()
    assert after > before + 0.3 and after > 0.95


def test_ideal_placement_scores_one_and_restores_clear():
    clear = smooth_images(2, 3, 16)
    perm, shuffled = _shuffled(clear, 16, 4)
    ideal = perm.argsort(dim=-1)  # position p takes the shuffled block that came from p
    assert blocks_in_place(ideal, perm) == 1.0 and neighbours_correct(ideal, perm) == 1.0
    restored = shuffle_blocks(shuffled, 16, 4, ideal)
    assert torch.allclose(restored, clear)


def test_neighbour_metric_forgives_a_shifted_assembly():
    # the true 2-column layout shifted one column to the right, wrapping: direct 0, some adjacencies kept
    perm = torch.arange(9).view(1, 1, 1, 1, 9)
    shifted = torch.tensor([2, 0, 1, 5, 3, 4, 8, 6, 7]).view(1, 1, 1, 1, 9)
    assert blocks_in_place(shifted, perm) == 0.0
    assert neighbours_correct(shifted, perm) == pytest.approx(9 / 12)


def test_partial_border_regions_are_left_untouched():
    clear = smooth_images(2, 3, 40, seed=5)
    perm, shuffled_core = _shuffled(clear[..., :32, :32], 16, 8)
    shuffled = clear.clone()
    shuffled[..., :32, :32] = shuffled_core
    result = solve_jigsaw(shuffled, 16, 8)
    assert result.placement.shape == (2, 3, 2, 2, 4)
    assert torch.equal(result.images[..., 32:, :], shuffled[..., 32:, :])
    assert torch.equal(result.images[..., :, 32:], shuffled[..., :, 32:])
    assert blocks_in_place(result.placement, perm) >= 0.9


def test_anchor_fixes_the_top_left_block():
    clear = smooth_images(3, 1, 32, seed=2)
    perm, shuffled = _shuffled(clear, 32, 8, seed=4)
    anchor = perm.argsort(dim=-1)[..., 0]
    result = solve_jigsaw(shuffled, 32, 8, anchor=anchor)
    assert torch.equal(result.placement[..., 0], anchor)
    assert blocks_in_place(result.placement, perm) >= 0.9


def test_ssd_compatibility_also_solves_coarse_puzzles():
    clear = smooth_images(4, 3, 32, seed=7)
    perm, shuffled = _shuffled(clear, 16, 8)
    assert blocks_in_place(solve_jigsaw(shuffled, 16, 8, compatibility="ssd").placement, perm) >= 0.75


@pytest.mark.parametrize(("region", "block"), [(16, 6), (4, 8), (64, 8)])
def test_bad_grid_raises(region, block):
    with pytest.raises(ValueError, match="region"):
        solve_jigsaw(torch.rand(1, 1, 32, 32), region, block)


def _seam_cost(right: torch.Tensor, below: torch.Tensor, board: torch.Tensor, n: int) -> torch.Tensor:
    """Brute-force total seam cost of boards ``[P, N]`` (the quantity refinement must lower)."""
    grid = board.view(-1, n, n)
    rows = torch.arange(board.shape[0]).view(-1, 1, 1)
    across = right[rows, grid[:, :, :-1], grid[:, :, 1:]].sum((1, 2))
    return across + below[rows, grid[:, :-1, :], grid[:, 1:, :]].sum((1, 2))


def test_swap_refinement_reaches_a_true_local_optimum():
    from fl_vmix.evaluation.attacks.jigsaw import _refine

    g = torch.Generator().manual_seed(0)
    p, n = 5, 3
    right, below = torch.rand(p, n * n, n * n, generator=g).double(), torch.rand(p, n * n, n * n, generator=g).double()
    board = random_block_permutation((p,), n * n, g)
    refined = _refine(right, below, board, n, steps=1000)
    before, after = _seam_cost(right, below, board, n), _seam_cost(right, below, refined, n)
    assert (after < before).all() and (refined.sort(dim=1).values == torch.arange(n * n)).all()
    for i in range(n * n):  # no single exchange improves any puzzle any more (checked by brute force)
        for j in range(i + 1, n * n):
            swapped = refined.clone()
            swapped[:, [i, j]] = swapped[:, [j, i]]
            assert (_seam_cost(right, below, swapped, n) >= after - 1e-9).all()


def test_per_region_block_sizes_with_oracle_map():
    from fl_vmix.evaluation.attacks.jigsaw import solve_jigsaw_per_region

    clear = smooth_images(3, 3, 40, seed=11)  # 2 x 2 full 16-px regions plus a partial border
    block_map = torch.tensor([[8, 4, 16], [4, 8, 16], [16, 16, 16]]).expand(3, 3, 3).clone()
    block_map[2, :2, :2] = 16  # the third image is not shuffled at all
    shuffled = clear.clone()
    for size in (8, 4):
        _, candidate = _shuffled(clear[..., :32, :32], 16, size, seed=size)
        mask = (block_map[:, :2, :2] == size).repeat_interleave(16, 1).repeat_interleave(16, 2).unsqueeze(1)
        shuffled[..., :32, :32] = torch.where(mask, candidate, shuffled[..., :32, :32])
    restored = solve_jigsaw_per_region(shuffled, 16, block_map)
    assert torch.equal(restored[2], clear[2])
    assert torch.equal(restored[..., 32:, :], shuffled[..., 32:, :])
    assert ssim(restored, clear).min() > 0.95 > ssim(shuffled[:2], clear[:2]).max()
    with pytest.raises(ValueError, match="block_size_map"):
        solve_jigsaw_per_region(shuffled, 16, block_map[:, :1])
