import logging

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from fl_vmix.privacy import VisualMixer
from fl_vmix.privacy.keyed import hash_fields, mix64, mix64_reference


def position_image(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Each value is its own flat position inside the image, so an output tells where it came from."""
    return torch.arange(channels * height * width, dtype=torch.float64).view(1, channels, height, width).repeat(batch, 1, 1, 1)


def smooth_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Natural-looking content (low-frequency) so that shuffling raises VFE, as on photographs."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)


def region_of(positions: torch.Tensor, height: int, width: int, region: int) -> torch.Tensor:
    pixel = positions % (height * width)
    return (pixel // width // region) * 1000 + (pixel % width // region)


SHAPES = [(1, 32, 32), (3, 32, 32), (3, 30, 29), (1, 28, 28), (3, 9, 17)]


@pytest.mark.parametrize("channels, height, width", SHAPES)
@pytest.mark.parametrize("permute_channels", [False, True])
@pytest.mark.parametrize("target_ratio", [None, 1.5])
def test_pixels_stay_in_region_and_nothing_is_lost(channels, height, width, permute_channels, target_ratio):
    region = 8
    mixer = VisualMixer("key", region_size=region, block_sizes=(4, 3, 1), target_ratio=target_ratio, permute_channels=permute_channels)
    images = position_image(2, channels, height, width)
    out = mixer(images, [3, 4]).long()
    expected_region = region_of(images.long(), height, width, region)
    assert torch.equal(region_of(out, height, width, region), expected_region)
    if not permute_channels:
        assert torch.equal(out // (height * width), images.long() // (height * width))
    # A permutation: every source position used exactly once per image.
    assert torch.equal(out.flatten(1).sort(1).values, images.long().flatten(1))


@pytest.mark.parametrize("permute_channels", [False, True])
def test_multiset_preserved_per_region_and_channel(permute_channels):
    images = torch.rand(3, 3, 32, 32)
    out = VisualMixer("k", permute_channels=permute_channels)(images, [0, 1, 2])

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
    out = VisualMixer("k", target_ratio=None)(images, [0]).long()
    within_plane = out % (32 * 32)
    assert not torch.equal(within_plane[0, 0], within_plane[0, 1])
    assert not torch.equal(within_plane[0, 1], within_plane[0, 2])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("channels, height, width", SHAPES)
@pytest.mark.parametrize("options", [dict(), dict(target_ratio=None), dict(permute_channels=True, mode="dynamic")])
def test_exact_inversion(dtype, channels, height, width, options):
    images = smooth_images(4, channels, height, width)
    images = (images * 255).round().to(torch.uint8) if dtype == torch.uint8 else images.to(dtype)
    mixer = VisualMixer("secret", region_size=8, block_sizes=(4, 2, 1), **options)
    ids = torch.tensor([10, 11, 12, 13])
    result = mixer.mix(images, ids, epoch=3)
    assert result.images.dtype == dtype and result.images.shape == images.shape
    assert torch.equal(mixer.invert(result.images, ids, epoch=3, params=result.params), images)
    # Replaying the parameters reproduces the obfuscation exactly.
    assert torch.equal(mixer.apply(images, result.params), result.images)


def test_invert_without_params_in_targeted_mode_needs_the_last_call():
    images = smooth_images(2, 3, 32, 32)
    mixer = VisualMixer("k", target_ratio=2.0)
    mixed = mixer(images, [0, 1])
    assert torch.equal(mixer.invert(mixed, [0, 1]), images)
    mixer(images, [5, 6])
    with pytest.raises(ValueError, match="MixParams"):
        mixer.invert(mixed, [0, 1])


def test_fixed_mode_inverts_from_key_and_ids_alone():
    images = smooth_images(2, 3, 32, 32)
    mixed = VisualMixer("k", target_ratio=None)(images, [7, 8])
    assert torch.equal(VisualMixer("k", target_ratio=None).invert(mixed, [7, 8]), images)


def test_deterministic_and_key_id_epoch_sensitive():
    images = smooth_images(2, 3, 32, 32)
    ids = [1, 2]
    first = VisualMixer("alice", mode="dynamic")(images, ids, epoch=0)
    again = VisualMixer("alice", mode="dynamic")(images, ids, epoch=0)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], VisualMixer("bob", mode="dynamic")(images, ids, epoch=0)[0])
    assert not torch.equal(first[0], VisualMixer("alice", mode="dynamic")(images, [3, 2], epoch=0)[0])
    assert not torch.equal(first[0], VisualMixer("alice", mode="dynamic")(images, ids, epoch=1)[0])
    static = VisualMixer("alice", mode="static")
    assert torch.equal(static(images, ids, epoch=0), static(images, ids, epoch=5))


def test_does_not_touch_or_depend_on_global_rng():
    images = smooth_images(2, 3, 32, 32)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = VisualMixer("k")(images, [0, 1])
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    torch.manual_seed(123)
    assert torch.equal(VisualMixer("k")(images, [0, 1]), a)


def test_hash_matches_unsigned_splitmix64():
    values = [0, 1, 2**31, 2**62 + 12345, -1, -(2**63)]
    got = mix64(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [mix64_reference(v) for v in values]
    # Golden values pin the stream: a change here changes every key's shuffles.
    assert hash_fields(42, 7, 3).item() == hash_fields(42, torch.tensor([7]), torch.tensor([3])).item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree():
    images = smooth_images(8, 3, 32, 32)
    mixer = VisualMixer("k", permute_channels=True)
    cpu = mixer(images, list(range(8)))
    cuda = mixer.to("cuda")(images.cuda(), list(range(8)))
    assert torch.equal(cpu, cuda.cpu())


def test_most_important_regions_refined_first():
    images = smooth_images(4, 3, 32, 32)
    images[:, :, :8, :8] = torch.rand(4, 3, 8, 8)  # a busy corner: highest local VFE
    mixer = VisualMixer("k", target_ratio=1.3)
    result = mixer.mix(images, [0, 1, 2, 3])
    from fl_vmix.privacy.vfe import vfe_map

    rank = torch.argsort(vfe_map(images, 8, "corrected").flatten(1), dim=1, descending=True, stable=True)
    by_rank = result.params.levels.gather(1, rank)
    assert torch.all(by_rank[:, 1:] <= by_rank[:, :-1]), "levels must not increase as importance falls"
    assert torch.all(result.report.reached)
    assert torch.all(result.report.achieved_vfe >= result.report.target_vfe)


@pytest.mark.parametrize("method", ["reference", "corrected"])
@pytest.mark.parametrize("target", [dict(target_ratio=2.0), dict(target_vfe=None, target_ratio=3.0)])
def test_target_reached_on_smooth_images(method, target):
    images = smooth_images(16, 3, 32, 32)
    kwargs = dict(target) if method == "corrected" else dict(target_ratio=1.05)
    result = VisualMixer("k", vfe_method=method, **kwargs).mix(images, list(range(16)))
    assert torch.all(result.report.reached)
    assert torch.all(result.report.achieved_vfe >= result.report.target_vfe * (1 - 1e-6))


def test_unreachable_target_uses_finest_and_is_reported(caplog):
    noise = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mixer = VisualMixer("k", target_ratio=3.0)
    with caplog.at_level(logging.WARNING, logger="fl_vmix.privacy"):
        result = mixer.mix(noise, [0, 1, 2])
    assert result.report.num_unreached == 3
    assert torch.all(result.params.levels == len(mixer.block_sizes) - 1)
    assert "below the target VFE" in caplog.text


def test_absolute_target():
    images = smooth_images(4, 3, 32, 32)
    result = VisualMixer("k", target_vfe=0.5, target_ratio=None).mix(images, [0, 1, 2, 3])
    assert torch.allclose(result.report.target_vfe, torch.full((4,), 0.5))
    assert torch.all(result.report.achieved_vfe[result.report.reached] >= 0.5)


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
    mixer = VisualMixer("k", target_ratio=1.5, attention=scorer)
    out = mixer(images, [0, 1, 2, 3])
    (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
    assert scorer.conv.weight.grad is not None and scorer.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():  # forward value is the hard shuffle, identical with or without grad
        assert torch.equal(mixer(images, [0, 1, 2, 3]), out.detach())


def test_transforms_v2_pipeline():
    mixer = VisualMixer("k", target_ratio=None)
    pipeline = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), mixer.as_transform(), v2.Normalize([0.5] * 3, [0.25] * 3)])
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
        VisualMixer("k")(images, ids)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_ratio=0.5), "target_ratio must be >= 1"),
        (dict(target_vfe=1.0), "not both"),
        (dict(target_vfe=-1.0, target_ratio=None), "positive"),
        (dict(block_sizes=(16,)), "block_sizes"),
        (dict(block_sizes=(2, 2)), "repeated"),
        (dict(region_size=0), "region_size"),
        (dict(vfe_method="entropy"), "vfe_method"),
        (dict(mode="weekly"), "mode"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisualMixer("k", **kwargs)


def test_bad_key():
    with pytest.raises(ValueError, match="key"):
        VisualMixer(3.5)
