"""Integer region energies: the compiled and PyTorch paths agree exactly, and both match float VFE."""

import numpy as np
import pytest
import torch

from fl_vmix.privacy import VisualMixer, vfe_map
from fl_vmix.privacy.keyed import KeyedPRF
from fl_vmix.privacy.permutations import ShuffleGeometry, sources
from fl_vmix.privacy.region_energy import (
    SCALE,
    _region_energies_torch,
    _selected_energies_torch,
    identity_sources,
    quantize,
    region_energies,
    select_sources,
    selected_energies,
    take_selected,
)

SHAPES = [(3, 32, 32, 8), (1, 28, 28, 8), (3, 30, 29, 8), (3, 9, 17, 8), (3, 20, 20, 16)]


def images_of(batch, channels, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, 5, 5, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
    return (smooth + 0.05 * torch.randn(batch, channels, height, width, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("channels, height, width, region", SHAPES)
@pytest.mark.parametrize("method", ["reference", "corrected"])
def test_clear_energies_match_the_float_vfe_definition(channels, height, width, region, method):
    images = images_of(3, channels, height, width)
    geometry = ShuffleGeometry(height, width, channels, region, (1,), False)
    values = quantize(images).view(-1)
    energy = region_energies(
        values,
        identity_sources(3, channels, geometry.pixels, torch.device("cpu")),
        geometry,
        reference=method == "reference",
    )[:, 0]
    expected = vfe_map(images.double(), region, method).flatten(1) * channels  # window energy summed over channels
    assert torch.allclose(energy.double() / SCALE**2, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("channels, height, width, region", SHAPES)
@pytest.mark.parametrize("reference", [True, False])
def test_compiled_and_torch_energies_are_identical(channels, height, width, region, reference):
    geometry = ShuffleGeometry(height, width, channels, region, (2, 1), True)
    words = KeyedPRF(bytes(range(16)), b"energy").words(np.arange(4), 0, geometry.words_per_sample)
    maps = sources(geometry, words, [0, 1], torch.device("cpu"))
    values = quantize(images_of(4, channels, height, width, seed=1)).view(-1)
    compiled = region_energies(values, maps, geometry, reference)
    vectorised = _region_energies_torch(values, maps, geometry, reference)
    assert compiled.dtype == vectorised.dtype == torch.int64
    assert torch.equal(compiled, vectorised)
    # a shuffled image is more energetic than the clear one
    clear = region_energies(
        values, identity_sources(4, channels, geometry.pixels, torch.device("cpu")), geometry, reference
    )
    assert bool((compiled[:, 1].sum(1) > clear[:, 0].sum(1)).all())


def test_selection_takes_each_region_from_its_level():
    geometry = ShuffleGeometry(16, 16, 2, 8, (4, 2, 1), False)
    maps = torch.arange(3 * 2 * 2 * 256, dtype=torch.int32).view(3, 2, 2, 256)
    levels = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    picked = select_sources(maps, levels, geometry)
    region = torch.from_numpy(geometry.region_of_pixel)
    for b in range(2):
        for c in range(2):
            assert torch.equal(picked[b, c], maps[levels[b, region], b, c, torch.arange(256)])


def test_quantisation_of_uint8_and_float_agree_and_levels_follow():
    images = (images_of(4, 3, 32, 32) * 255).round().to(torch.uint8)
    floats = images.float() / 255
    assert torch.equal(quantize(images), quantize(floats))
    mixer = VisualMixer(bytes(range(32)), target_ratio=2.5)
    from_uint8, from_float = mixer.mix(images, [0, 1, 2, 3]), mixer.mix(floats, [0, 1, 2, 3])
    assert torch.equal(from_uint8.params.levels, from_float.params.levels)
    assert torch.equal(from_uint8.images.float() / 255, from_float.images)


def test_values_out_of_range_are_refused():
    with pytest.raises(ValueError, match="rescale"):
        quantize(torch.full((1, 1, 8, 8), 200.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_quantisation_is_round_to_nearest_on_every_dtype(dtype):
    # Values exactly representable in every dtype: k / 8 quantises to k * 65535 / 8, rounded half to even.
    values = torch.tensor([0.0, 0.125, 0.5, 1.0, -0.25, 3.875, -4.0, 4.0], dtype=dtype).view(1, 1, 2, 4)
    expected = torch.tensor([0, 8192, 32768, 65535, -16384, 253948, -262140, 262140], dtype=torch.int32)
    # 0.125 * 65535 = 8191.875 -> 8192; 0.5 * 65535 = 32767.5 -> 32768 (even); 3.875 * 65535 = 253948.125
    got = quantize(values)
    assert got.dtype == torch.int32 and got.shape == values.shape
    assert got.flatten().tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_values_just_past_the_bound_are_refused_with_the_peak(dtype):
    images = torch.zeros(1, 1, 4, 4, dtype=dtype)
    images[0, 0, 1, 2] = -4.5
    with pytest.raises(ValueError, match=r"\|x\| = 4\.5, but VFE targeting reads values in \[-4, 4\]"):
        quantize(images)
    images[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(images)


def test_uint8_is_read_as_257_steps():
    assert quantize(torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)).flatten().tolist() == [
        0, 257, 32896, 65535,
    ]  # fmt: skip


def test_energy_of_a_known_image_in_integers():
    # One 4x4 region, 1 channel; a vertical step 0 -> 1 between columns 1 and 2 (values 0 and 65535).
    image = torch.zeros(1, 1, 4, 4)
    image[..., 2:] = 1.0
    geometry = ShuffleGeometry(4, 4, 1, 4, (1,), False)
    values = quantize(image).view(-1)
    identity = identity_sources(1, 1, 16, torch.device("cpu"))
    corrected = region_energies(values, identity, geometry, reference=False)
    reference = region_energies(values, identity, geometry, reference=True)
    step = 65535**2
    assert corrected.tolist() == [[[4 * step]]]  # four rows cross the step once
    # reference: zero padding right of column 3 and below row 3 adds the padded border: 4 + 2 ones on row 3's
    # right half, so 4 (the step) + 4 (right border) + 2 (bottom border under columns 2-3)
    assert reference.tolist() == [[[10 * step]]]
    assert torch.equal(_region_energies_torch(values, identity, geometry, True), reference)


@pytest.mark.parametrize("channels, height, width, region", SHAPES)
@pytest.mark.parametrize("reference", [True, False])
def test_selected_energies_compiled_and_torch_are_identical(channels, height, width, region, reference):
    geometry = ShuffleGeometry(height, width, channels, region, (4, 2, 1), True)
    words = KeyedPRF(bytes(range(16)), b"selected").words(np.arange(3), 0, geometry.words_per_sample)
    maps = sources(geometry, words, [0, 1, 2], torch.device("cpu"))
    values = quantize(images_of(3, channels, height, width, seed=2)).view(-1)
    levels = torch.randint(0, 3, (3, geometry.num_regions), generator=torch.Generator().manual_seed(5))
    compiled = selected_energies(values, maps, levels, geometry, reference)
    vectorised = _selected_energies_torch(values, maps, levels, geometry, reference)
    assert compiled.dtype == vectorised.dtype == torch.int64 and compiled.shape == (3, geometry.num_regions)
    assert torch.equal(compiled, vectorised)
    for narrow in (levels.to(torch.uint8), levels.to(torch.int32)):  # levels of any integer dtype
        assert torch.equal(selected_energies(values, maps, narrow, geometry, reference), compiled)
        assert torch.equal(_selected_energies_torch(values, maps, narrow, geometry, reference), compiled)
    if reference:  # zero padding at every window edge: a region's energy is its own level's, whatever its neighbours
        every = region_energies(values, maps, geometry, reference)  # [B, levels, R]
        assert torch.equal(compiled, every.gather(1, levels.unsqueeze(1)).squeeze(1))


def test_identity_sources_are_int32_offsets_of_the_flat_batch():
    identity = identity_sources(2, 3, 5, torch.device("cpu"))
    assert identity.dtype == torch.int32 and identity.shape == (1, 2, 3, 5)
    assert identity.flatten().tolist() == list(range(30))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.float16])
def test_take_selected_gathers_each_region_at_its_level_in_any_memory_layout(dtype):
    geometry = ShuffleGeometry(16, 16, 3, 8, (4, 2, 1), True)
    words = KeyedPRF(bytes(range(16)), b"take").words(np.arange(2), 0, geometry.words_per_sample)
    maps = sources(geometry, words, [0, 1, 2], torch.device("cpu"))
    levels = torch.tensor([[0, 1, 2, 1], [2, 0, 0, 1]])
    images = (images_of(2, 3, 16, 16, seed=4) * (255 if dtype == torch.uint8 else 1)).to(dtype)
    # Oracle: the flat batch indexed by the selected sources (select_sources is checked on its own above).
    expected = images.reshape(-1)[select_sources(maps, levels, geometry).reshape(-1).long()].view_as(images)
    assert torch.equal(take_selected(images, maps, levels, geometry), expected)
    channels_last = images.to(memory_format=torch.channels_last)  # strides of another layout, same values
    assert torch.equal(take_selected(channels_last, maps, levels, geometry), expected)


@pytest.mark.parametrize("reference", [True, False])
def test_compiled_energies_stay_exact_at_the_value_bound(reference):
    # The kernels sum squares in float64 per band of rows (exact below 2**53): the largest values quantize
    # lets through, alternating in sign, and regions taller than a band still give the integers of the twin.
    geometry = ShuffleGeometry(4500, 5, 1, 4500, (1,), False)
    bound = int(4.0 * SCALE)
    sign = torch.tensor([1, -1], dtype=torch.int32).repeat(4500 * 5 // 2 + 1)[: 4500 * 5]
    values = (sign * bound).view(1, 1, -1).expand(2, 1, -1).clone()
    values[1, 0, ::7] = 0  # some variety in the second image
    values = values.view(-1)
    maps = identity_sources(2, 1, geometry.pixels, torch.device("cpu"))
    compiled = region_energies(values, maps, geometry, reference)
    assert torch.equal(compiled, _region_energies_torch(values, maps, geometry, reference))
    assert int(compiled[0, 0, 0]) > 2**53  # beyond float64's exact integers as a whole
