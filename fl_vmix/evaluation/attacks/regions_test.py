import hashlib

import pytest
import torch

from fl_vmix.evaluation.attacks.regions import (
    broadcast_regions,
    region_means,
    region_position,
    region_quantiles,
    region_sorted,
    thumbnail,
)
from fl_vmix.privacy import VisualMixer

KEY = hashlib.sha256(b"attacker-0").digest()


def _loop_regions(x: torch.Tensor, r: int):
    """Brute force: per (image, channel, region) the list of its values, row-major regions."""
    b, c, h, w = x.shape
    return [
        [[x[i, ch, y : y + r, z : z + r].flatten() for y in range(0, h, r) for z in range(0, w, r)] for ch in range(c)]
        for i in range(b)
    ]


def test_sorted_quantiles_and_means_match_brute_force_with_partial_regions():
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0))
    values, counts = region_sorted(x, 3)
    assert values.shape == (2, 3, 3, 2, 9) and counts.tolist() == [[9, 6], [9, 6], [3, 2]]
    means, quant = region_means(x, 3), region_quantiles(x, 3, 2)
    for i, image in enumerate(_loop_regions(x, 3)):
        for ch, regions in enumerate(image):
            for k, vals in enumerate(regions):
                ry, rx = divmod(k, 2)
                n = vals.numel()
                assert torch.equal(values[i, ch, ry, rx, :n], vals.sort().values)
                assert torch.isinf(values[i, ch, ry, rx, n:]).all()
                assert means[i, ch, ry, rx] == pytest.approx(float(vals.mean()), abs=1e-6)
                assert quant[i, ch, :, ry, rx].tolist() == [float(vals.min()), float(vals.max())]


def test_within_region_shuffle_keeps_every_invariant():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mixed = VisualMixer(KEY, region_size=8, block_sizes=(1,), target_ratio=None)(x, torch.arange(4))
    assert not torch.equal(mixed, x)
    assert torch.equal(region_sorted(mixed, 8)[0], region_sorted(x, 8)[0])
    assert torch.allclose(region_means(mixed, 8), region_means(x, 8), atol=1e-6)
    assert torch.allclose(thumbnail(mixed, 8), thumbnail(x, 8), atol=1e-6)
    # a region size the shuffle does not respect is not invariant
    assert not torch.equal(region_sorted(mixed, 4)[0], region_sorted(x, 4)[0])


def test_thumbnails():
    x = torch.rand(1, 2, 9, 9, generator=torch.Generator().manual_seed(2))
    means = region_means(x, 3)
    nearest, bilinear = thumbnail(x, 3, "nearest"), thumbnail(x, 3, "bilinear")
    assert torch.equal(nearest, broadcast_regions(means, 3, (9, 9)))
    # the centre pixel of each 3-px region carries that region's mean exactly
    assert torch.allclose(bilinear[..., 1::3, 1::3], means, atol=1e-6)
    # halfway between two centres: the average of the two means; beyond the outer centres: constant
    assert torch.allclose(bilinear[..., 1, 2], (2 * means[..., 0, 0] + means[..., 0, 1]) / 3, atol=1e-6)
    assert torch.allclose(bilinear[..., 0, 0], means[..., 0, 0], atol=1e-6)
    flat = torch.full((1, 1, 10, 6), 0.3)
    assert torch.allclose(thumbnail(flat, 4), flat) and thumbnail(flat, 4).shape == flat.shape


def test_position_inside_regions():
    pos = region_position(5, 6, 4)
    assert pos.shape == (2, 5, 6)
    assert pos[0, :, 0].tolist() == pytest.approx([1 / 8, 3 / 8, 5 / 8, 7 / 8, 1 / 2])  # last row: a 1-px region
    assert pos[1, 0].tolist() == pytest.approx([1 / 8, 3 / 8, 5 / 8, 7 / 8, 1 / 4, 3 / 4])


@pytest.mark.parametrize(
    ("images", "region", "match"),
    [
        (torch.rand(3, 8, 8), 4, r"\[B, C, H, W\]"),
        (torch.rand(1, 1, 8, 8), 0, "region_size"),
        (torch.rand(1, 1, 8, 8), 9, "exceeds"),
    ],
)
def test_bad_input_raises(images, region, match):
    with pytest.raises(ValueError, match=match):
        region_sorted(images, region)


def test_quantiles_need_two():
    with pytest.raises(ValueError, match="quantiles"):
        region_quantiles(torch.rand(1, 1, 8, 8), 4, 1)
