"""Tests for the model registry and the region-sort invariance stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fl_vmix.models import MODELS, RegionSortInvariance, SmallCNN, build_model, count_parameters, region_sort


def _images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_every_model_maps_images_to_logits(name: str, channels: int, size: int) -> None:
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size, seed=0).eval()
    with torch.no_grad():
        logits = model(_images((2, channels, size, size)))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["resnet18", "shufflenet_v2", "mobilenet_v2"])
def test_large_images_keep_imagenet_stems_and_work(name: str) -> None:
    model = build_model(name, num_classes=3, in_channels=1, image_size=96, seed=0).eval()
    with torch.no_grad():
        assert model(_images((1, 1, 96, 96))).shape == (1, 3)


def test_small_input_stems_do_not_downsample() -> None:
    resnet = build_model("resnet18", 10, in_channels=1, image_size=28)
    assert resnet.conv1.stride == (1, 1) and resnet.conv1.in_channels == 1
    assert isinstance(resnet.maxpool, nn.Identity)
    shufflenet = build_model("shufflenet_v2", 10, image_size=32)
    assert shufflenet.conv1[0].stride == (1, 1) and isinstance(shufflenet.maxpool, nn.Identity)
    mobilenet = build_model("mobilenet_v2", 10, in_channels=1, image_size=32)
    assert mobilenet.features[0][0].stride == (1, 1) and mobilenet.features[0][0].in_channels == 1


def test_cnn_trains_one_step_and_is_opacus_compatible() -> None:
    from opacus.validators import ModuleValidator

    model = build_model("cnn", num_classes=10, in_channels=3, seed=0)
    assert isinstance(model, SmallCNN)
    assert 100_000 <= count_parameters(model) <= 300_000
    assert ModuleValidator.validate(model, strict=False) == []
    loss = nn.functional.cross_entropy(model(_images((4, 3, 32, 32))), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_seed_makes_initialisation_reproducible_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_model("cnn", 10, seed=7)
    second = build_model("cnn", 10, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    third = build_model("cnn", 10, seed=8)
    assert not torch.equal(first.classifier[1].weight, third.classifier[1].weight)


def test_count_parameters_respects_trainable_only() -> None:
    model = nn.Linear(3, 2)  # 8 parameters
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 6
    assert count_parameters(model, trainable_only=False) == 8


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'.*cnn.*mobilenet_v2.*resnet18.*shufflenet_v2"):
        build_model("vgg", num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 10, "in_channels": 0}, "in_channels"),
        ({"num_classes": 10, "image_size": 4}, "image_size"),
        ({"num_classes": 10, "invariant_region": 0}, "invariant_region"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("cnn", **kwargs)


def test_invariant_region_prepends_the_sort_stage() -> None:
    model = build_model("cnn", num_classes=5, in_channels=3, invariant_region=4, seed=0).eval()
    assert isinstance(model, nn.Sequential) and isinstance(model[0], RegionSortInvariance)
    assert model[0].region_size == 4
    images = _images((2, 3, 32, 32))
    shuffled = _permute_within_regions(images, 4, jointly=False, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(shuffled), model(images))


# --- region sort ------------------------------------------------------------------------------


def _permute_within_regions(images: torch.Tensor, region: int, jointly: bool, seed: int) -> torch.Tensor:
    """Random permutation of values inside every region (per channel, or across channels if jointly).

    Built with torch ops only: sort positions by (region id, random key) to get each region's
    positions in random order, and by (region id, position) to get them in row-major order; then
    position ident[k] receives the value at random[k]. Partial edge regions are just smaller groups.
    """
    batch, channels, height, width = images.shape
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(height)[:, None] // region
    cols = torch.arange(width)[None, :] // region
    region_id = (rows * (width // region + 1) + cols).to(torch.float64)  # [H, W]
    if jointly:
        region_id = region_id.expand(channels, height, width).reshape(1, -1).expand(batch, -1)
        flat = images.reshape(batch, -1)
    else:
        region_id = region_id.reshape(1, -1).expand(batch * channels, -1)
        flat = images.reshape(batch * channels, -1)
    random_key = torch.rand(flat.shape, generator=generator, dtype=torch.float64)
    random_order = torch.argsort(region_id * 2 + random_key, dim=1)
    identity_order = torch.argsort(region_id, dim=1, stable=True)
    permuted = torch.empty_like(flat)
    permuted.scatter_(1, identity_order, flat.gather(1, random_order))
    return permuted.reshape(images.shape)


def test_region_sort_small_example_with_partial_regions() -> None:
    image = torch.arange(9.0).flip(0).reshape(1, 1, 3, 3)  # [[8,7,6],[5,4,3],[2,1,0]]
    expected = torch.tensor([[4.0, 5.0, 3.0], [7.0, 8.0, 6.0], [1.0, 2.0, 0.0]]).reshape(1, 1, 3, 3)
    assert torch.equal(region_sort(image, 2), expected)


@pytest.mark.parametrize(("size", "region"), [((32, 32), 4), ((30, 30), 8), ((28, 31), 3), ((5, 7), 1)])
def test_region_sort_is_invariant_to_within_region_channel_permutations(size: tuple[int, int], region: int) -> None:
    images = _images((2, 3, *size))
    stage = RegionSortInvariance(region)
    shuffled = _permute_within_regions(images, region, jointly=False, seed=3)
    assert not torch.equal(shuffled, images) or region == 1
    assert torch.equal(stage(shuffled), stage(images))


@pytest.mark.parametrize(("size", "region"), [((32, 32), 4), ((30, 30), 8), ((9, 10), 4)])
def test_joint_region_sort_is_invariant_to_permutations_across_channels(size: tuple[int, int], region: int) -> None:
    images = _images((2, 3, *size))
    stage = RegionSortInvariance(region, sort_channels_jointly=True)
    shuffled = _permute_within_regions(images, region, jointly=True, seed=4)
    assert torch.equal(stage(shuffled), stage(images))
    # ...which the per-channel sort is not: values moved between channels.
    assert not torch.equal(RegionSortInvariance(region)(shuffled), RegionSortInvariance(region)(images))


@pytest.mark.parametrize("jointly", [False, True])
def test_region_sort_keeps_each_regions_values(jointly: bool) -> None:
    """Nothing dropped or duplicated: sorted output and input agree as multisets in every region."""
    images = _images((1, 3, 30, 30), seed=5)
    out = region_sort(images, 8, sort_channels_jointly=jointly)
    assert out.shape == images.shape
    for top in range(0, 30, 8):
        for left in range(0, 30, 8):
            block_in = images[:, :, top : top + 8, left : left + 8]
            block_out = out[:, :, top : top + 8, left : left + 8]
            if jointly:
                assert torch.equal(block_in.flatten().sort().values, block_out.flatten().sort().values)
                assert torch.equal(block_out.flatten(), block_out.flatten().sort().values)
            else:
                flat_in, flat_out = block_in.flatten(2), block_out.flatten(2)
                assert torch.equal(flat_in.sort(dim=-1).values, flat_out)


def test_region_sort_handles_integer_images_and_gradients() -> None:
    images = torch.randint(0, 256, (1, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = region_sort(images, 4)
    assert out.dtype == torch.uint8
    assert torch.equal(out.float(), region_sort(images.float(), 4))
    floats = _images((1, 1, 6, 6)).requires_grad_(True)
    region_sort(floats, 4).sum().backward()
    torch.testing.assert_close(floats.grad, torch.ones_like(floats))


def test_region_sort_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unsqueeze"):
        region_sort(torch.zeros(3, 8, 8), 2)
    with pytest.raises(ValueError, match="region_size"):
        RegionSortInvariance(0)


def test_resnet20_has_he_et_al_s_shape() -> None:
    model = build_model("resnet20", num_classes=10, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # the stem and 2 per block x 9 blocks: with the linear layer, 20 weighted layers
    assert [c.out_channels for c in convs[1::6]] == [16, 32, 64]
    # He et al. report 0.27M parameters (option A shortcuts); the two 1x1 projections add ~2.7k.
    assert 269_000 <= count_parameters(model) <= 275_000


def test_resnet50_at_224_px_keeps_its_imagenet_stem() -> None:
    model = build_model("resnet50", num_classes=10, image_size=224, seed=0)
    assert model.conv1.stride == (2, 2) and not isinstance(model.maxpool, nn.Identity)
    assert 23_000_000 <= count_parameters(model) <= 24_000_000
