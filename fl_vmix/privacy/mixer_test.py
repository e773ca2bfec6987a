import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torchvision.transforms import v2

from fl_vmix.privacy import MixParams, VisualMixer, vfe, vfe_map
from fl_vmix.privacy.keyed_test import oracle_words
from fl_vmix.privacy.permutations_test import reference_fisher_yates

KEY = bytes(range(32))
ALICE = hashlib.sha256(b"alice").digest()
BOB = hashlib.sha256(b"bob").digest()
REPO = Path(__file__).resolve().parents[2]


POSITION_SCALE = 2.0**-14  # positions as exact float64 values in [0, 1): 0-1 images, decodable


def position_image(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Each value encodes its own flat position inside the image, so an output tells where it came from."""
    positions = torch.arange(channels * height * width, dtype=torch.float64) * POSITION_SCALE
    return positions.view(1, channels, height, width).repeat(batch, 1, 1, 1)


def positions(images: torch.Tensor) -> torch.Tensor:
    """The flat source position of every value of a (shuffled) position image."""
    return (images / POSITION_SCALE).round().long()


def smooth_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Natural-looking content (low-frequency) so that shuffling raises VFE, as on photographs."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)


def textured_images(batch: int, seed: int = 9) -> torch.Tensor:
    """Smooth content with mild texture and a busy top-left region, like a photograph with one detailed spot."""
    g = torch.Generator().manual_seed(seed)
    images = (smooth_images(batch, 3, 32, 32) + 0.03 * torch.randn(batch, 3, 32, 32, generator=g)).clamp(0, 1)
    images[:, :, :8, :8] = (images[:, :, :8, :8] + 0.3 * torch.randn(batch, 3, 8, 8, generator=g)).clamp(0, 1)
    return images


def region_of(positions: torch.Tensor, height: int, width: int, region: int) -> torch.Tensor:
    pixel = positions % (height * width)
    return (pixel // width // region) * 1000 + (pixel % width // region)


SHAPES = [(1, 32, 32), (3, 32, 32), (3, 30, 29), (1, 28, 28), (3, 9, 17)]


@pytest.mark.parametrize("channels, height, width", SHAPES)
@pytest.mark.parametrize("permute_channels", [False, True])
@pytest.mark.parametrize("target_ratio", [None, 1.5])
def test_pixels_stay_in_region_and_nothing_is_lost(channels, height, width, permute_channels, target_ratio):
    region = 8
    mixer = VisualMixer(
        KEY, region_size=region, block_sizes=(4, 3, 1), target_ratio=target_ratio, permute_channels=permute_channels
    )
    images = position_image(2, channels, height, width)
    out = positions(mixer(images, [3, 4]))
    expected_region = region_of(positions(images), height, width, region)
    assert torch.equal(region_of(out, height, width, region), expected_region)
    if not permute_channels:
        assert torch.equal(out // (height * width), positions(images) // (height * width))
    # A permutation: every source position used exactly once per image.
    assert torch.equal(out.flatten(1).sort(1).values, positions(images).flatten(1))


@pytest.mark.parametrize("permute_channels", [False, True])
def test_multiset_preserved_per_region_and_channel(permute_channels):
    images = torch.rand(3, 3, 32, 32)
    out = VisualMixer(KEY, permute_channels=permute_channels)(images, [0, 1, 2])

    def regions(x):  # [B, C, 4, 4, 64]
        return x.unfold(2, 8, 8).unfold(3, 8, 8).reshape(3, 3, 4, 4, 64)

    if permute_channels:
        a = regions(images).permute(0, 2, 3, 1, 4).reshape(3, 4, 4, -1).sort(-1).values
        b = regions(out).permute(0, 2, 3, 1, 4).reshape(3, 4, 4, -1).sort(-1).values
    else:
        a, b = regions(images).sort(-1).values, regions(out).sort(-1).values
    assert torch.equal(a, b)
    assert not torch.equal(images, out)


def test_channels_get_their_own_permutation():
    images = position_image(1, 3, 32, 32)
    out = positions(VisualMixer(KEY, target_ratio=None)(images, [0]))
    within_plane = out % (32 * 32)
    assert not torch.equal(within_plane[0, 0], within_plane[0, 1])
    assert not torch.equal(within_plane[0, 1], within_plane[0, 2])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("channels, height, width", SHAPES)
@pytest.mark.parametrize("options", [dict(), dict(target_ratio=None), dict(permute_channels=True, mode="dynamic")])
def test_exact_inversion(dtype, channels, height, width, options):
    images = smooth_images(4, channels, height, width)
    images = (images * 255).round().to(torch.uint8) if dtype == torch.uint8 else images.to(dtype)
    mixer = VisualMixer(KEY, region_size=8, block_sizes=(4, 2, 1), **options)
    ids = torch.tensor([10, 11, 12, 13])
    result = mixer.mix(images, ids, epoch=3)
    assert result.images.dtype == dtype and result.images.shape == images.shape
    assert torch.equal(mixer.invert(result.images, ids, epoch=3, params=result.params), images)
    # Replaying the parameters reproduces the obfuscation exactly.
    assert torch.equal(mixer.replay(images, result.params), result.images)


def test_invert_without_params_in_targeted_mode_needs_the_last_call():
    images = smooth_images(2, 3, 32, 32)
    mixer = VisualMixer(KEY, target_ratio=2.0)
    mixed = mixer(images, [0, 1])
    assert torch.equal(mixer.invert(mixed, [0, 1]), images)
    mixer(images, [5, 6])
    with pytest.raises(ValueError, match="MixParams"):
        mixer.invert(mixed, [0, 1])


@pytest.mark.parametrize("target_ratio", [2.0, None])
def test_invert_refuses_params_planned_for_other_ids(target_ratio):
    images = smooth_images(2, 3, 32, 32)
    mixer = VisualMixer(KEY, target_ratio=target_ratio)
    result = mixer.mix(images, [0, 1])
    for other in ([0, 2], [1, 0]):
        with pytest.raises(ValueError, match="params were planned for other sample_ids"):
            mixer.invert(result.images, other, params=result.params)
    assert torch.equal(mixer.invert(result.images, torch.tensor([0, 1]), params=result.params), images)


def test_invert_without_params_uses_the_last_call_only_for_its_epoch():
    images = smooth_images(2, 3, 32, 32)
    mixer = VisualMixer(KEY, target_ratio=2.0, mode="dynamic")
    mixed = mixer(images, [0, 1], epoch=3)
    assert torch.equal(mixer.invert(mixed, [0, 1], epoch=3), images)
    assert torch.equal(mixer.invert(mixed, [0, 1]), images)  # no epoch given: the last call's
    with pytest.raises(ValueError, match="MixParams"):
        mixer.invert(mixed, [0, 1], epoch=4)


def test_replay_refuses_params_of_another_batch_shape():
    images = smooth_images(2, 3, 32, 32)
    mixer = VisualMixer(KEY, target_ratio=2.0)
    params = mixer.mix(images, [0, 1]).params
    with pytest.raises(ValueError, match=r"levels for \(2, 16\).*need \(1, 16\)"):
        mixer.replay(images[:1], params)
    with pytest.raises(ValueError, match=r"need \(2, 25\)"):
        mixer.invert(smooth_images(2, 3, 40, 40), [0, 1], params=params)


def test_fixed_mode_inverts_from_key_and_ids_alone():
    images = smooth_images(2, 3, 32, 32)
    mixed = VisualMixer(KEY, target_ratio=None)(images, [7, 8])
    assert torch.equal(VisualMixer(KEY, target_ratio=None).invert(mixed, [7, 8]), images)
    # Dynamic mode: the epoch given to invert is the one used (not the static epoch 0, not another).
    dynamic = VisualMixer(KEY, target_ratio=None, mode="dynamic")
    mixed = dynamic(images, [7, 8], epoch=3)
    fresh = VisualMixer(KEY, target_ratio=None, mode="dynamic")
    assert torch.equal(fresh.invert(mixed, [7, 8], epoch=3), images)
    assert not torch.equal(fresh.invert(mixed, [7, 8], epoch=4), images)
    with pytest.raises(ValueError, match="pass epoch="):
        fresh.invert(mixed, [7, 8])


def test_deterministic_and_key_id_epoch_sensitive():
    images = smooth_images(2, 3, 32, 32)
    ids = [1, 2]
    first = VisualMixer(ALICE, mode="dynamic")(images, ids, epoch=0)
    again = VisualMixer(ALICE, mode="dynamic")(images, ids, epoch=0)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], VisualMixer(BOB, mode="dynamic")(images, ids, epoch=0)[0])
    assert not torch.equal(first[0], VisualMixer(ALICE, mode="dynamic")(images, [3, 2], epoch=0)[0])
    assert not torch.equal(first[0], VisualMixer(ALICE, mode="dynamic")(images, ids, epoch=1)[0])
    static = VisualMixer(ALICE, mode="static")
    assert torch.equal(static(images, ids, epoch=0), static(images, ids, epoch=5))


def test_does_not_touch_or_depend_on_global_rng():
    images = smooth_images(2, 3, 32, 32)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = VisualMixer(KEY)(images, [0, 1])
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    torch.manual_seed(123)
    assert torch.equal(VisualMixer(KEY)(images, [0, 1]), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree():
    images = smooth_images(8, 3, 32, 32)
    mixer = VisualMixer(KEY, permute_channels=True)
    cpu = mixer(images, list(range(8)))
    cuda = mixer.to("cuda")(images.cuda(), list(range(8)))
    assert torch.equal(cpu, cuda.cpu())


def order_by_importance(images: torch.Tensor, method: str) -> torch.Tensor:
    return torch.argsort(vfe_map(images, 8, method).flatten(1), dim=1, descending=True, stable=True)


def first_state_reaching_target(mixer: VisualMixer, image: torch.Tensor, sample_id: int, target: float) -> torch.Tensor:
    """Brute force: walk the refinement states in order (most important region first, each to the finest
    level before the next moves), apply each, measure its VFE, return the levels of the first that reaches."""
    levels_count = len(mixer.block_sizes)
    order = order_by_importance(image.unsqueeze(0), mixer.vfe_method)[0]
    regions = order.numel()
    for state in range(regions * levels_count):
        rank, level = divmod(state, levels_count)
        by_rank = torch.tensor([levels_count - 1 if r < rank else level if r == rank else 0 for r in range(regions)])
        levels = torch.empty_like(by_rank).scatter_(0, order, by_rank).view(1, -1)
        mixed = mixer.replay(image.unsqueeze(0), MixParams(torch.tensor([sample_id]), 0, levels))
        if float(vfe(mixed, 8, mixer.vfe_method)) >= target * (1 - 1e-6):
            return levels[0]
    return torch.full((regions,), levels_count - 1)


@pytest.mark.parametrize("ratio", [1.1, 1.4])
def test_levels_are_the_first_refinement_state_that_reaches_the_target(ratio):
    # 'reference' VFE with window = region: regions do not interact, so the choice must be exact.
    images = smooth_images(6, 3, 32, 32, seed=3)
    mixer = VisualMixer(KEY, target_ratio=ratio, vfe_method="reference", block_sizes=(4, 2, 1))
    result = mixer.mix(images, list(range(6)))
    partial = 0
    for i in range(6):
        target = float(result.report.target_vfe[i])
        expected = first_state_reaching_target(mixer, images[i], i, target)
        assert torch.equal(result.params.levels[i], expected), f"image {i}"
        partial += int(expected.min() == 0 and expected.max() == 2)
    assert partial >= 2, "the targets must leave some regions coarse and refine others for this test to bite"


@pytest.mark.parametrize("method, ratio", [("reference", 1.1), ("corrected", 2.0)])
def test_most_important_regions_refined_first(method, ratio):
    images = textured_images(4)
    result = VisualMixer(KEY, target_ratio=ratio, vfe_method=method, block_sizes=(8, 2, 1)).mix(images, [0, 1, 2, 3])
    order = order_by_importance(images, method)
    assert torch.all(order[:, 0] == 0), "the busy top-left region is the most important"
    by_rank = result.params.levels.gather(1, order)
    assert torch.all(by_rank[:, 1:] <= by_rank[:, :-1]), "levels must not increase as importance falls"
    assert torch.all(by_rank[:, 0] == 2) and torch.all(by_rank[:, -1] == 0), "busiest region finest, calmest untouched"
    assert torch.all(result.report.reached)
    assert torch.all(result.report.achieved_vfe >= result.report.target_vfe * (1 - 1e-6))


@pytest.mark.parametrize("method", ["reference", "corrected"])
def test_report_measures_with_the_configured_vfe_definition(method):
    images = smooth_images(3, 3, 32, 32)
    result = VisualMixer(KEY, target_ratio=2.0, vfe_method=method).mix(images, [0, 1, 2])
    assert torch.allclose(result.report.clear_vfe, vfe(images, 8, method))
    assert torch.allclose(result.report.target_vfe, 2.0 * vfe(images, 8, method))
    assert torch.allclose(result.report.achieved_vfe, vfe(result.images, 8, method))


@pytest.mark.parametrize(
    "method, ratio", [("corrected", 2.0), ("corrected", 3.0), ("reference", 1.05), ("reference", 1.2)]
)
def test_target_reached_on_smooth_images(method, ratio):
    images = smooth_images(16, 3, 32, 32)
    result = VisualMixer(KEY, vfe_method=method, target_ratio=ratio).mix(images, list(range(16)))
    assert torch.all(result.report.reached)
    assert torch.all(result.report.achieved_vfe >= result.report.target_vfe * (1 - 1e-6))
    assert bool((result.params.levels == 0).any()), "a reachable target leaves some regions at the coarse level"


@pytest.mark.parametrize("method", ["reference", "corrected"])
@pytest.mark.parametrize("block_sizes", [(2,), (4, 2, 1)])
def test_fixed_mode_report_measures_clear_and_shuffled_vfe(method, block_sizes):
    images = smooth_images(3, 3, 30, 29)
    result = VisualMixer(KEY, target_ratio=None, vfe_method=method, block_sizes=block_sizes).mix(images, [0, 1, 2])
    assert result.report.target_vfe is None and result.report.num_unreached == 0
    assert torch.equal(result.report.reached, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(result.report.clear_vfe, vfe(images, 8, method), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.report.achieved_vfe, vfe(result.images, 8, method), rtol=1e-4, atol=1e-6)
    assert bool((result.report.achieved_vfe > 1.1 * result.report.clear_vfe).all())
    assert torch.equal(result.params.levels, torch.full((3, 16), len(block_sizes) - 1))  # the finest level


@pytest.mark.parametrize(
    "ids",
    [
        np.array([4, 9], dtype=np.int32),
        [np.int64(4), 9],
        (4, 9),
        torch.tensor([4, 9], dtype=torch.int16),
    ],
    ids=["numpy-int32", "list-numpy-scalar", "tuple", "torch-int16"],
)
def test_sample_ids_in_any_integer_form_give_the_same_shuffle(ids):
    images = smooth_images(2, 3, 16, 16)
    mixer = VisualMixer(KEY, target_ratio=2.0)
    expected = mixer.mix(images, torch.tensor([4, 9]))
    result = mixer.mix(images, ids)
    assert torch.equal(result.images, expected.images)
    assert result.params.sample_ids.dtype == torch.int64 and result.params.sample_ids.tolist() == [4, 9]
    single = mixer.mix(images[1:], 9)  # one image: a bare int id
    assert torch.equal(single.images, expected.images[1:])
    assert torch.equal(mixer.mix(images[1:], np.int64(9)).images, expected.images[1:])


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.array([0.0, 1.0]), "numpy dtype float64"),
        ([0, True], "sequence of ints"),
        (True, "tensor, array or list"),
        (torch.tensor([True, False]), "integer dtype, got torch.bool"),
    ],
)
def test_sample_ids_that_are_not_integers_are_refused(ids, message):
    with pytest.raises(ValueError, match=message):
        VisualMixer(KEY)(smooth_images(2, 3, 16, 16), ids)


def test_epoch_must_be_a_small_non_negative_int_in_dynamic_mode():
    mixer = VisualMixer(KEY, mode="dynamic", target_ratio=None)
    images = smooth_images(1, 3, 16, 16)
    assert torch.equal(mixer(images, [0], epoch=np.int64(2)), mixer(images, [0], epoch=2))
    assert not torch.equal(mixer(images, [0], epoch=2**32 - 1), mixer(images, [0], epoch=0))
    for epoch in (2**32, True, 1.0, "1"):
        with pytest.raises(ValueError, match="epoch must be an int"):
            mixer(images, [0], epoch=epoch)


def test_description_names_every_setting():
    text = repr(VisualMixer(KEY, region_size=4, block_sizes=(1, 2), target_ratio=1.5, mode="dynamic"))
    assert "region_size=4, block_sizes=(2, 1), target_ratio=1.5, vfe_method='corrected', mode='dynamic'" in text
    assert "permute_channels=False" in text
    assert "target_vfe=0.5," in repr(VisualMixer(KEY, target_vfe=0.5, target_ratio=None))
    assert "block_sizes=(2, 1), fixed finest, vfe_method=" in repr(VisualMixer(KEY, target_ratio=None))
    assert str(KEY) not in text and KEY.hex() not in text


def test_unreachable_target_uses_finest_and_is_reported():
    noise = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mixer = VisualMixer(KEY, target_ratio=3.0)
    result = mixer.mix(noise, [0, 1, 2])
    assert result.report.num_unreached == 3
    assert torch.all(result.params.levels == len(mixer.block_sizes) - 1)


@pytest.mark.parametrize("method", ["reference", "corrected"])
def test_absolute_target(method):
    images = smooth_images(8, 3, 32, 32)
    # Above every clear image (max 6.6 reference, 0.22 corrected), so each needs shuffling; the finest shuffle
    # reaches it for some images only (finest: 6.7-9.5 reference, 2.6-4.6 corrected).
    target = {"reference": 7.5, "corrected": 3.7}[method]
    assert float(vfe(images, 8, method).max()) < target
    mixer = VisualMixer(KEY, target_vfe=target, target_ratio=None, vfe_method=method, block_sizes=(4, 2, 1))
    result = mixer.mix(images, list(range(8)))
    assert torch.allclose(result.report.target_vfe, torch.full((8,), target))
    measured = vfe(result.images, 8, method)  # independent of the mixer's integer energies
    reached = measured >= target * (1 - 1e-6)
    assert torch.equal(result.report.reached, reached)
    assert 0 < int(reached.sum()) < 8, "the target must be reachable for some images only"
    assert torch.allclose(result.report.achieved_vfe, measured, rtol=1e-4)
    assert torch.all(result.params.levels[~reached] == 2), "unreached images use the finest setting everywhere"
    assert bool((result.params.levels[reached] < 2).any()), "reached images leave some regions coarser"
    if method == "reference":  # regions do not interact: the levels are exactly the first state that reaches
        for i in torch.nonzero(reached).flatten().tolist():
            assert torch.equal(result.params.levels[i], first_state_reaching_target(mixer, images[i], i, target))


class RegionScorer(nn.Module):
    def __init__(self, region: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.pool = nn.AvgPool2d(region)

    def forward(self, x):
        return self.pool(self.conv(x)).squeeze(1)


def test_attention_scorer_receives_gradient():
    images = smooth_images(4, 3, 32, 32)
    scorer = RegionScorer(8)
    mixer = VisualMixer(KEY, target_ratio=1.5, attention=scorer)
    out = mixer(images, [0, 1, 2, 3])
    (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
    assert scorer.conv.weight.grad is not None and scorer.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():  # forward value is the hard shuffle, identical with or without grad
        assert torch.equal(mixer(images, [0, 1, 2, 3]), out.detach())


class FixedScores(nn.Module):
    """An attention module whose region scores are a parameter (the images are ignored)."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores.clone())

    def forward(self, x):
        return self.scores


@pytest.mark.parametrize(
    "height, width, ratio, method, block_sizes, budget",
    [
        (32, 32, 1.25, "reference", (4, 2, 1), 8),
        (30, 29, 1.25, "reference", (4, 2, 1), 8),
        (32, 32, 50.0, "reference", (4, 2, 1), 8),  # unreachable: every region at its finest
        (32, 32, 5.0, "corrected", (8, 2, 1), 0),  # no refinement step: two images stay short of the target
    ],
)
def test_attention_gradient_is_the_documented_straight_through_estimate(
    height, width, ratio, method, block_sizes, budget
):
    # The forward value is the hard shuffle; the gradient is that of coarse + w * (fine - coarse) per region, with
    # w = sigmoid((score - score of the frontier region) / T): written out here from the documented formula.
    batch, levels, temperature = 3, 3, 0.5
    images = smooth_images(batch, 3, height, width, seed=5)
    rows, cols = -(-height // 8), -(-width // 8)
    scores = torch.randn(batch, rows, cols, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    scorer = FixedScores(scores)
    mixer = VisualMixer(
        KEY, target_ratio=ratio, vfe_method=method, block_sizes=block_sizes, attention=scorer,
        attention_temperature=temperature, max_refinements=budget,
    )  # fmt: skip
    weights = torch.linspace(-1, 1, images.numel()).view_as(images)
    result = mixer.mix(images, [0, 1, 2])
    (result.images * weights).sum().backward()
    with torch.no_grad():
        assert torch.equal(result.images, mixer.replay(images, result.params)), "forward value is the hard shuffle"
    ids = torch.tensor([0, 1, 2])
    regions = rows * cols
    coarse = mixer.replay(images, MixParams(ids, 0, torch.zeros(batch, regions, dtype=torch.long)))
    fine = mixer.replay(images, MixParams(ids, 0, torch.full((batch, regions), levels - 1)))
    flat = scores.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    by_rank = result.params.levels.gather(1, order)
    region_of_pixel = (torch.arange(height).view(-1, 1) // 8 * cols + torch.arange(width).view(1, -1) // 8).flatten()
    expected = torch.zeros(batch, regions)
    partial = 0
    for b in range(batch):
        finest = int((by_rank[b] == levels - 1).int().cumprod(0).sum())  # leading ranks at the finest level
        if finest < regions and (by_rank[b, finest] > 0 or finest == 0):
            frontier = finest  # the first state with these levels refines the region at this rank
        else:
            frontier = finest - 1  # the last finest region, at its finest level
        partial += int(0 < finest < regions)
        z = (flat[b] - flat[b, order[b, frontier]]) / temperature
        slope = torch.sigmoid(z) * (1 - torch.sigmoid(z)) / temperature
        per_pixel = (weights[b] * (fine[b] - coarse[b])).sum(0).flatten()
        expected[b] = slope * torch.zeros(regions).index_add_(0, region_of_pixel, per_pixel)
    if ratio < 50:
        assert partial >= 1, "some image must stop refining part way for the frontier to matter"
    else:  # unreachable: every region at its finest, the frontier is the last (least important) rank
        assert bool((result.params.levels == levels - 1).all())
    if budget == 0:
        assert not bool(result.report.reached.all()), "the refinement budget must run out for some image"
    torch.testing.assert_close(scorer.scores.grad.flatten(1), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("target_ratio", [2.0, None])
def test_gradient_reaches_images_through_the_shuffle(target_ratio):
    # Images that carry gradient take the differentiable gathers: d(out)/d(images) is the shuffle itself, so the
    # gradient of sum(out * w) is w moved back by the inverse shuffle.
    images = smooth_images(2, 3, 32, 32).requires_grad_()
    mixer = VisualMixer(KEY, target_ratio=target_ratio)
    out = mixer(images, [0, 1])
    weights = torch.linspace(0, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    assert torch.equal(images.grad, mixer.invert(weights, [0, 1], params=mixer.last_params))
    with torch.no_grad():
        assert torch.equal(out.detach(), mixer(images, [0, 1]))


def test_attention_keeps_uint8_images_uint8():
    # The straight-through term adds zeros in the images' dtype: uint8 in, uint8 out (no gradient can enter uint8).
    images = (smooth_images(2, 3, 32, 32) * 255).round().to(torch.uint8)
    seen = []
    scorer = RegionScorer(8)
    scorer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    mixer = VisualMixer(KEY, target_ratio=1.5, attention=scorer)
    out = mixer(images, [0, 1])
    assert out.dtype == torch.uint8
    assert torch.equal(seen[0], images.float() / 255), "the scorer sees the clear images on the 0-1 scale"
    with torch.no_grad():
        assert torch.equal(out, mixer(images, [0, 1]))


@pytest.mark.parametrize("height, width", [(32, 32), (30, 29), (32, 29), (30, 32), (33, 32), (32, 33)])
def test_per_pixel_broadcasts_region_values_over_any_leading_dims(height, width):
    layout = VisualMixer(KEY)._layout(height, width, 3, torch.device("cpu"))
    rows, cols = -(-height // 8), -(-width // 8)
    values = torch.arange(2 * 3 * rows * cols).view(2, 3, rows * cols)
    region = (torch.arange(height).view(-1, 1) // 8 * cols + torch.arange(width).view(1, -1) // 8).flatten()
    assert torch.equal(layout.per_pixel(values), values[..., region])


@pytest.mark.parametrize("compiled", [True, False])
def test_flat_images_meet_any_relative_target(compiled, monkeypatch):
    # VFE 0 times any ratio is 0, which the (unchanged-energy) shuffle reaches exactly: reached, nothing to report.
    monkeypatch.setattr(VisualMixer, "compiled_cpu", compiled)
    result = VisualMixer(KEY, target_ratio=3.0).mix(torch.full((2, 3, 32, 32), 0.5), [0, 1])
    report = result.report
    assert report.reached.tolist() == [True, True] and report.num_unreached == 0
    assert report.achieved_vfe.tolist() == [0.0, 0.0] and report.target_vfe.tolist() == [0.0, 0.0]
    assert torch.equal(result.params.levels, torch.zeros(2, 16, dtype=torch.long)), "met at once: nothing refined"


@pytest.mark.parametrize("seed, block_sizes", [(2, (4, 1)), (5, (8, 2, 1))])
def test_a_target_just_below_the_finest_shuffle_refines_to_the_last_region(seed, block_sizes, monkeypatch):
    # The most a shuffle can reach is every region at its finest level; a target 1% below it is reached only
    # there on these smooth images, after refinement steps that end at the last state, on both paths.
    # The target is in the keyed context, so each candidate ratio has its own permutations and its own finest
    # shuffle: take the first candidate within 2% below the finest shuffle of its own mixer.
    image = smooth_images(1, 3, 32, 32, seed=seed)
    fixed = VisualMixer(KEY, block_sizes=block_sizes, target_ratio=None).mix(image, [0]).report
    finest = torch.full((1, 16), len(block_sizes) - 1)
    for fraction in (0.99, 0.985, 0.98, 0.975, 0.97, 0.96, 0.95, 0.94):
        mixer = VisualMixer(
            KEY, block_sizes=block_sizes, target_ratio=fraction * float(fixed.achieved_vfe / fixed.clear_vfe)
        )
        most = vfe(mixer.replay(image, MixParams(torch.tensor([0]), 0, finest)), 8, "corrected") / fixed.clear_vfe
        if 0.98 * float(most) <= mixer.target_ratio < float(most):
            break
    else:
        pytest.fail("no candidate target lies just below its finest shuffle")
    compiled = mixer.mix(image, [0])
    monkeypatch.setattr(VisualMixer, "compiled_cpu", False)
    batch_wide = mixer.mix(image, [0])
    assert torch.equal(compiled.params.levels, batch_wide.params.levels)
    assert compiled.report.reached.tolist() == batch_wide.report.reached.tolist() == [True]


def test_first_state_reaching_the_target():
    predicted = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    target = torch.tensor([2, 0, 9])  # reached exactly at state 1; by the first state; by none (the last then)
    assert VisualMixer._first_state_reaching(predicted, target).tolist() == [1, 0, 3]


def test_absolute_target_total_is_the_integer_ceiling():
    # 0.1 * 65535**2 = 429483622.5 energy units for one 8x8 single-channel region: reaching it needs 429483623.
    mixer = VisualMixer(KEY, target_vfe=0.1, target_ratio=None)
    layout = mixer._layout(8, 8, 1, torch.device("cpu"))
    total = mixer._target_totals(torch.tensor([5, 7]), layout, 1)
    assert total.dtype == torch.int64 and total.tolist() == [429483623, 429483623]
    ratio = VisualMixer(KEY, target_ratio=1.5)._target_totals(torch.tensor([5, 6]), layout, 1)
    assert ratio.dtype == torch.int64 and ratio.tolist() == [8, 9]


def test_transform_keeps_the_image_type_and_refuses_other_input():
    from torchvision import tv_tensors

    mixer = VisualMixer(KEY, target_ratio=None)
    plain = (smooth_images(1, 3, 32, 32)[0] * 255).round().to(torch.uint8)
    expected = mixer(plain.unsqueeze(0), [4])[0]
    out, sample_id = mixer.as_transform()(plain, 4)
    assert type(out) is torch.Tensor and out.dtype == torch.uint8 and torch.equal(out, expected) and sample_id == 4
    wrapped, _ = mixer.as_transform()(tv_tensors.Image(plain), 4)
    assert type(wrapped) is tv_tensors.Image and torch.equal(wrapped.as_subclass(torch.Tensor), expected)
    for bad in (plain.numpy(), plain[0], plain.unsqueeze(0)):
        with pytest.raises(ValueError, match=r"one \[C, H, W\] tensor image"):
            mixer.as_transform()(bad, 4)


def test_transforms_v2_pipeline():
    mixer = VisualMixer(KEY, target_ratio=None)
    pipeline = v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), mixer.as_transform(), v2.Normalize([0.5] * 3, [0.25] * 3)]
    )
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    out, sample_id = pipeline(image, 9)
    assert sample_id == 9 and out.shape == (3, 32, 32)
    clear = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])(image)
    expected = (mixer(clear.unsqueeze(0), [9])[0] - 0.5) / 0.25
    assert torch.allclose(out, expected)


@pytest.mark.parametrize(
    "images, ids, message",
    [
        (torch.rand(3, 32, 32), [0], "shape"),
        (torch.full((1, 3, 32, 32), float("nan")), [0], "NaN"),
        (torch.full((1, 3, 32, 32), float("inf")), [0], "NaN or inf"),
        (torch.rand(0, 3, 32, 32), [], "empty batch"),
        (torch.rand(1, 3, 6, 32), [0], "smaller than one region"),
        (torch.rand(2, 3, 32, 32), [0], "one id per image"),
        (torch.rand(2, 3, 32, 32), torch.tensor([0.0, 1.0]), "integer dtype"),
        (torch.rand(2, 3, 32, 32), ["a", "b"], "sequence of ints"),
        (torch.rand(2, 3, 32, 32), "ab", "tensor, array or list"),
        (torch.ones(1, 3, 32, 32, dtype=torch.int32), [0], "unsupported dtype"),
    ],
)
def test_bad_input(images, ids, message):
    with pytest.raises(ValueError, match=message):
        VisualMixer(KEY)(images, ids)


def test_defaults_and_the_edges_of_each_setting():
    mixer = VisualMixer(KEY)
    settings = (mixer.region_size, mixer.block_sizes, mixer.target_vfe, mixer.target_ratio, mixer.vfe_method)
    assert settings == (8, (2, 1), None, 4.0, "corrected")
    assert (mixer.mode, mixer.permute_channels, mixer.attention) == ("static", False, None)
    assert (mixer.max_refinements, mixer.attention_temperature) == (8, 1.0)
    assert mixer.last_params is None and mixer.last_report is None
    with pytest.raises(ValueError, match="invert needs the MixParams"):  # a fresh mixer has no last call
        mixer.invert(smooth_images(1, 3, 32, 32), [0])
    # The edges are allowed: 1-px regions (nothing can move) and a target of 1x (the coarsest shuffle).
    one = VisualMixer(KEY, region_size=1, block_sizes=(1,), target_ratio=None)
    assert torch.equal(one(smooth_images(1, 3, 8, 8), [0]), smooth_images(1, 3, 8, 8))
    assert VisualMixer(KEY, target_ratio=1.0).target_ratio == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_ratio=0.5), "target_ratio must be >= 1"),
        (dict(target_vfe=1.0), "not both"),
        (dict(target_vfe=-1.0, target_ratio=None), "positive"),
        (dict(block_sizes=(16,)), "block_sizes"),
        (dict(block_sizes=(2, 2)), "repeated"),
        (dict(region_size=0), "region_size must be a positive int"),
        (dict(region_size="8"), "region_size must be a positive int"),
        (dict(block_sizes=(2.0, 1)), "block_sizes must be ints"),
        (dict(block_sizes=(True,)), "block_sizes must be ints"),
        (dict(target_vfe=0.0, target_ratio=None), "positive"),
        (dict(vfe_method="entropy"), "vfe_method"),
        (dict(mode="weekly"), "mode"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisualMixer(KEY, **kwargs)


def test_bad_key():
    with pytest.raises(ValueError, match="key"):
        VisualMixer(3.5)


# ------------------------------------------------------------------------------- fresh permutations
def pixel_permutations(mixer: VisualMixer, ids: list[int], size: int = 32) -> torch.Tensor:
    """``[ids, C, regions, 64]``: for each (id, channel, 8-px region), the source of each output pixel,
    relative to the region (a permutation of 0..63 when the mixer shuffles single pixels)."""
    images = position_image(len(ids), 3, size, size)
    out = positions(mixer(images, ids)) % (size * size)
    y, x = out // size % 8, out % size % 8
    local = (y * 8 + x).view(len(ids), 3, size // 8, 8, size // 8, 8).permute(0, 1, 2, 4, 3, 5)
    return local.reshape(len(ids), 3, (size // 8) ** 2, 64)


def test_every_image_channel_and_region_gets_its_own_permutation():
    perms = pixel_permutations(VisualMixer(KEY, target_ratio=None, block_sizes=(1,)), list(range(200)))
    rows = {tuple(p) for p in perms.reshape(-1, 64).tolist()}
    assert len(rows) == 200 * 3 * 16, "two (image, channel, region) share a permutation"
    # Beyond equality: two different permutations agree on a position with probability 1/64.
    flat = perms.reshape(-1, 64)
    agree = (flat[1:] == flat[:-1]).float().mean().item()
    assert abs(agree - 1 / 64) < 0.004


def test_block_level_permutations_are_fresh_too():
    # 2-px blocks: 16! arrangements per region; a shared bank of permutations would repeat them.
    images = position_image(300, 3, 32, 32)
    out = positions(VisualMixer(KEY, target_ratio=None, block_sizes=(2,))(images, list(range(300))))
    pattern = (out % 1024).view(300, 3, 4, 8, 4, 8).permute(0, 1, 2, 4, 3, 5).reshape(-1, 64)
    assert len({tuple(p) for p in pattern.tolist()}) == 300 * 3 * 16


def test_where_a_pixel_moves_is_uniform_over_its_region():
    perms = pixel_permutations(VisualMixer(KEY, target_ratio=None, block_sizes=(1,)), list(range(3200)))
    for channel, region, pixel in [(0, 0, 0), (1, 5, 27), (2, 15, 63)]:
        destination = (perms[:, channel, region] == pixel).float().argmax(1)
        counts = np.bincount(destination.numpy(), minlength=64)
        assert stats.chisquare(counts).pvalue > 1e-3, (channel, region, pixel)


def test_different_keys_give_unrelated_shuffles():
    a = pixel_permutations(VisualMixer(ALICE, target_ratio=None, block_sizes=(1,)), list(range(100)))
    b = pixel_permutations(VisualMixer(BOB, target_ratio=None, block_sizes=(1,)), list(range(100)))
    assert abs((a == b).float().mean().item() - 1 / 64) < 0.004


def test_a_sample_shuffle_does_not_depend_on_its_batch():
    images = textured_images(5)
    mixer = VisualMixer(KEY, target_ratio=2.0, permute_channels=True)
    together = mixer(images, [10, 11, 12, 13, 14])
    assert torch.equal(together[2:3], mixer(images[2:3], [12]))
    assert torch.equal(together.flip(0), mixer(images.flip(0), [14, 13, 12, 11, 10]))


def test_same_key_and_id_give_the_same_output_in_another_process():
    images = textured_images(3)
    here = VisualMixer(KEY, target_ratio=2.0, permute_channels=True, mode="dynamic")(images, [4, 5, 6], epoch=2)
    code = (
        "import torch, sys\n"
        "from fl_vmix.privacy import VisualMixer\n"
        "from fl_vmix.privacy.mixer_test import textured_images, KEY\n"
        "mixer = VisualMixer(KEY, target_ratio=2.0, permute_channels=True, mode='dynamic')\n"
        "out = mixer(textured_images(3), [4, 5, 6], epoch=2)\n"
        "sys.stdout.write(str(int((out * 1e6).round().long().sum())) + ' ' + str(out.flatten()[:50].tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    total, _, head = result.stdout.partition(" ")
    assert int(total) == int((here * 1e6).round().long().sum())
    assert head == str(here.flatten()[:50].tolist())


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one core: starting Numba cannot change the count")
def test_the_first_cpu_mix_of_a_process_leaves_torchs_thread_count_alone():
    """Starting Numba's OpenMP layer (the first parallel kernel of a process) sets OpenMP's thread count to all
    cores, torch's included: a client meant to train on one thread would train on all of them from then on."""
    code = (
        "import torch, numba\n"
        "torch.set_num_threads(1)\n"
        "from fl_vmix.privacy import VisualMixer\n"
        "from fl_vmix.privacy.mixer_test import textured_images, KEY\n"
        "VisualMixer(KEY, target_ratio=2.0)(textured_images(2), [0, 1])\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.split() == ["1", "1"], "torch's and the kernel's thread counts after the first mix"


@pytest.mark.parametrize("permute_channels", [False, True])
def test_channel_permutation_moves_whole_region_planes(permute_channels):
    out = positions(
        VisualMixer(KEY, target_ratio=None, permute_channels=permute_channels)(position_image(2, 3, 32, 32), [0, 1])
    )
    source_channel = (out // (32 * 32)).view(2, 3, 4, 8, 4, 8)
    per_region = source_channel.amin(dim=(3, 5))
    assert torch.equal(per_region, source_channel.amax(dim=(3, 5))), "a region plane comes from one channel"
    identity = torch.arange(3).view(1, 3, 1, 1).expand_as(per_region)
    assert torch.equal(per_region.sort(dim=1).values, identity), "each region's channel map is a permutation"
    assert bool((per_region != identity).any()) == permute_channels


def test_pinned_output():
    # A change of PRF, word layout or permutation construction changes this (and breaks every client's
    # ability to invert data it obfuscated before): bump the PRF version string deliberately if intended.
    out = positions(VisualMixer(KEY, target_ratio=None, block_sizes=(1,))(position_image(1, 1, 8, 8), [3]))
    assert out.flatten()[:12].tolist() == PINNED_SOURCES


PINNED_SOURCES = [52, 62, 14, 53, 15, 56, 24, 51, 11, 22, 35, 43]  # new contexts (settings, dataset) and draws


def test_pinned_output_follows_the_documented_construction():
    # Independently of fl_vmix: the context as length-prefixed reprs of every setting, the dataset and the shape;
    # the words from pycryptodome's AES; Fisher-Yates with rejected draws replaced by the row's spare words.
    fields = ("visualmixer.shuffle.v3", 8, (1,), False, "static", None, None, "corrected", 8, None, 1.0)
    fields += ("cifar10/train/ab", 1, 8, 8)
    context = b"".join(struct.pack("<I", len(repr(f).encode())) + repr(f).encode() for f in fields)
    words = oracle_words(KEY, context, 3, 0, 63 + 3)  # 63 draws and 3 spare words
    expected = reference_fisher_yates(words, 64, 3)
    mixer = VisualMixer(KEY, target_ratio=None, block_sizes=(1,))
    out = positions(mixer(position_image(1, 1, 8, 8), [3], dataset="cifar10/train/ab"))
    assert out.flatten().tolist() == expected


def test_pinned_output_of_another_setting():
    # Every public setting enters the PRF's context (region, blocks, channel permutation, mode, target, ...) and the
    # channel permutation draws its own words: a change to either changes these sources of a 3 x 8 x 12 image.
    mixer = VisualMixer(
        KEY, region_size=4, block_sizes=(2, 1), target_ratio=None, permute_channels=True, mode="dynamic"
    )
    out = positions(mixer(position_image(1, 3, 8, 12), [3], epoch=5))
    assert out.flatten()[::8].tolist() == PINNED_SOURCES_CHANNELS


PINNED_SOURCES_CHANNELS = [1, 20, 5, 26, 11, 7, 74, 275, 282, 49, 272, 246, 192, 236, 234, 216, 224, 198]
PINNED_SOURCES_CHANNELS += [276, 80, 53, 254, 56, 91, 121, 131, 137, 133, 104, 136, 158, 188, 172, 146, 154, 175]


def test_no_default_key_and_short_keys_are_refused():
    with pytest.raises(ValueError, match="none was given") as err:
        VisualMixer()
    assert "key file" in str(err.value)
    for key in (b"0123456789abcde", "a string key long enough", 2**200):
        with pytest.raises(ValueError, match="key"):
            VisualMixer(key)


@pytest.mark.parametrize(
    "images, ids, message",
    [
        (torch.rand(2, 3, 32, 32), torch.tensor([[0, 1]]), "1-D"),
        (torch.rand(2, 3, 32, 32), torch.tensor([0, 1, 2]), "one id per image"),
        (torch.rand(1, 3, 7, 32), [0], "smaller than one region"),
    ],
)
def test_bad_input_leaves_the_images_untouched(images, ids, message):
    before = images.clone()
    with pytest.raises(ValueError, match=message):
        VisualMixer(KEY)(images, ids)
    assert torch.equal(images, before)


def test_dynamic_mode_needs_an_epoch():
    with pytest.raises(ValueError, match="epoch"):
        VisualMixer(KEY, mode="dynamic")(textured_images(1), [0])
    with pytest.raises(ValueError, match="epoch"):
        VisualMixer(KEY, mode="dynamic")(textured_images(1), [0], epoch=-1)


# Ratios between what the coarse and the fine level reach on these images, so regions end up at both.
BETWEEN_LEVELS = {
    "corrected": {32: 13.0, 21: 10.0, 13: 8.0, 64: 2.2},
    "reference": {32: 1.4, 21: 1.42, 13: 1.45, 64: 1.2},
}
COMPILED_CASES = [
    dict(block_sizes=(2, 1), target_ratio="between"),
    dict(block_sizes=(2, 1), target_ratio="between", vfe_method="reference"),
    dict(block_sizes=(4, 2, 1), target_ratio=8.0, permute_channels=True, mode="dynamic"),
    dict(block_sizes=(3, 2), target_ratio=4.5, vfe_method="reference", mode="dynamic"),
    dict(block_sizes=(8, 4, 2), target_vfe=0.01, target_ratio=None, permute_channels=True),
    dict(block_sizes=(8, 2, 1), target_ratio=8.0),  # refinement steps after the prediction
    dict(block_sizes=(4, 1), target_ratio=50.0, max_refinements=2),  # unreachable: every refinement step
    dict(block_sizes=(1,), target_ratio=None),
    dict(block_sizes=(3,), target_ratio=None, permute_channels=True, mode="dynamic"),
    dict(block_sizes=(8, 2), target_ratio=None),
    dict(block_sizes=(8, 4, 2, 1), target_ratio=1.5),  # four levels: refinement by single states
    dict(block_sizes=(8, 2, 1), target_ratio=8.0, max_refinements=1),  # the refinement budget runs out
]


@pytest.mark.parametrize("options", COMPILED_CASES)
@pytest.mark.parametrize("channels, height, width", [(3, 32, 32), (1, 21, 17), (3, 13, 30), (3, 64, 72)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.bfloat16])
def test_compiled_cpu_shuffle_equals_the_torch_path(options, channels, height, width, dtype, monkeypatch):
    # mix_kernel / shuffle_kernel redo per image what mix does batch-wide (energies, selection, refinement,
    # take): outputs, levels and report must be the same bits.
    g = torch.Generator().manual_seed(height)
    images = smooth_images(5, channels, height, width, seed=height) + 0.05 * torch.rand(
        5, channels, height, width, generator=g
    )
    if height == 64:  # one region's content tiled: 72 regions of equal clear energy, ranked by index
        images = images[:, :, :8, :8].repeat(1, 1, 8, 9)
    images = images.clamp(0, 1)
    images = (images * 255).round().to(torch.uint8) if dtype == torch.uint8 else images.to(dtype)
    if options.get("target_ratio") == "between":
        options = {**options, "target_ratio": BETWEEN_LEVELS[options.get("vfe_method", "corrected")][height]}
    mixer = VisualMixer(KEY, region_size=8, **options)
    ids, epoch = torch.tensor([4, 0, 9, 2**40, 7]), 3 if options.get("mode") == "dynamic" else None
    compiled = mixer.mix(images, ids, epoch)
    monkeypatch.setattr(VisualMixer, "compiled_cpu", False)
    expected = mixer.mix(images, ids, epoch)
    assert compiled.images.dtype == dtype and torch.equal(compiled.images, expected.images)
    assert torch.equal(compiled.params.levels, expected.params.levels)
    assert compiled.params.levels.dtype == expected.params.levels.dtype
    for name in ("clear_vfe", "achieved_vfe", "reached"):
        assert torch.equal(getattr(compiled.report, name), getattr(expected.report, name)), name
    assert (compiled.report.target_vfe is None) == (expected.report.target_vfe is None)
    if expected.report.target_vfe is not None:
        assert torch.equal(compiled.report.target_vfe, expected.report.target_vfe)
    if options["block_sizes"] == (2, 1):
        assert len(set(expected.params.levels.flatten().tolist())) > 1  # the selection did some work here
