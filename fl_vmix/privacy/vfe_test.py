import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_vmix.privacy.vfe import pixel_energy, vfe, vfe_map


def loop_vfe(image: np.ndarray, window: int, method: str) -> float:
    """Obviously-correct VFE: explicit loops over channels, windows and pixels of one [C, H, W] image."""
    channels, height, width = image.shape
    energies = []
    for c in range(channels):
        for top in range(0, height, window):
            for left in range(0, width, window):
                bottom, right = min(top + window, height), min(left + window, width)
                total = 0.0
                for i in range(top, bottom):
                    for j in range(left, right):
                        v = float(image[c, i, j])
                        if method == "reference":
                            right_value = float(image[c, i, j + 1]) if j + 1 < right else 0.0
                            below_value = float(image[c, i + 1, j]) if i + 1 < bottom else 0.0
                            total += (right_value - v) ** 2 + (below_value - v) ** 2
                        else:
                            if j + 1 < width:
                                total += (float(image[c, i, j + 1]) - v) ** 2
                            if i + 1 < height:
                                total += (float(image[c, i + 1, j]) - v) ** 2
                energies.append(total)
    return float(np.mean(energies))


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 13),
    width=st.integers(1, 13),
    channels=st.sampled_from([1, 3]),
    window=st.integers(1, 6),
    method=st.sampled_from(["reference", "corrected"]),
    seed=st.integers(0, 2**16),
)
def test_matches_loop_definition(height, width, channels, window, method, seed):
    rng = np.random.default_rng(seed)
    images = rng.random((2, channels, height, width))
    got = vfe(torch.from_numpy(images), window, method)
    expected = [loop_vfe(image, window, method) for image in images]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_image_closed_forms(value):
    images = torch.full((1, 3, 224, 224), value)
    # Reference: only the zero-padded last column and row of each 14x14 window contribute.
    assert vfe(images, 14, "reference").item() == pytest.approx(2 * 14 * value**2)
    assert vfe(images, 14, "corrected").item() == 0.0


def test_constant_half_is_seven_at_window_14():
    assert vfe(torch.full((1, 3, 224, 224), 0.5), 14).item() == pytest.approx(7.0)


@pytest.mark.parametrize("edge_column", [5, 8])  # inside a window, and on a window boundary
def test_vertical_edge_closed_forms(edge_column):
    height, width, window, low, high = 16, 16, 8, 0.2, 0.9
    images = torch.full((1, 1, height, width), low)
    images[..., edge_column:] = high
    n_windows = (height // window) * (width // window)
    corrected = height * (high - low) ** 2 / n_windows
    assert vfe(images, window, "corrected").item() == pytest.approx(corrected)
    # Reference: every window pays its padded border (window * (v_last_col^2 + ...)); the step only
    # counts when it lies inside a window.
    border = 0.0
    for top in range(0, height, window):
        for left in range(0, width, window):
            block = images[0, 0, top : top + window, left : left + window]
            border += float(block[:, -1].square().sum() + block[-1, :].square().sum())
    inside = height * (high - low) ** 2 if edge_column % window else 0.0
    assert vfe(images, window, "reference").item() == pytest.approx((border + inside) / n_windows)


def test_uint8_is_read_on_unit_scale():
    images = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    for method in ("reference", "corrected"):
        assert torch.allclose(vfe(images, 5, method), vfe(images.float() / 255, 5, method))


def test_map_shape_and_mean():
    images = torch.rand(3, 3, 30, 17)
    vmap = vfe_map(images, 8, "corrected")
    assert vmap.shape == (3, math.ceil(30 / 8), math.ceil(17 / 8))
    assert torch.allclose(vmap.mean(dim=(1, 2)), vfe(images, 8, "corrected"))


def test_shuffling_raises_corrected_vfe():
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    shuffled = smooth.flatten(2)[..., torch.randperm(32 * 32, generator=torch.Generator().manual_seed(0))].view_as(
        smooth
    )
    assert vfe(shuffled, 8, "corrected") > 10 * vfe(smooth, 8, "corrected")


@pytest.mark.parametrize(
    "images, window, method, message",
    [
        (torch.rand(3, 8, 8), 4, "reference", "shape"),
        (torch.rand(1, 3, 8, 8), 0, "reference", "window"),
        (torch.rand(1, 3, 8, 8), True, "reference", "window"),  # a bool is an int to Python, not a size
        (torch.rand(1, 3, 8, 8), 4.0, "reference", "window"),
        (torch.rand(1, 3, 8, 8), 4, "entropy", "unknown VFE method"),
        (torch.ones(1, 3, 8, 8, dtype=torch.int32), 4, "reference", "dtype"),
    ],
)
def test_bad_input(images, window, method, message):
    with pytest.raises(ValueError, match=message):
        vfe(images, window, method)


def test_default_definition_is_the_prototypes():
    # The paper's figures use the prototype's zero-padded definition; every entry point defaults to it.
    images = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(pixel_energy(images, 4), pixel_energy(images, 4, "reference"))
    assert torch.equal(vfe_map(images, 4), vfe_map(images, 4, "reference"))
    assert torch.equal(vfe(images, 4), vfe(images, 4, "reference"))
    assert not torch.equal(vfe(images, 4), vfe(images, 4, "corrected"))
