"""Tests for the per-image SSIM/PSNR wrappers: known values, monotonicity, conventions and input validation."""

from __future__ import annotations

import math
import re

import pytest
import torch

from fl_vmix.privacy.similarity import (
    METRICS,
    PSNR_CAP,
    capped_mean,
    get_metric,
    mean_ssim_psnr,
    psnr,
    ssim,
    ssim_window_size,
)


def _images(b: int = 4, c: int = 3, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    # Smooth-ish images (upsampled noise) so SSIM is meaningful, values inside (0.1, 0.8) to allow offsets.
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, c, h // 4 + 1, w // 4 + 1, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return 0.1 + 0.7 * x


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_identical_images_give_ssim_one_and_psnr_inf(c: int, size: int) -> None:
    x = _images(c=c, h=size, w=size)
    s, p = ssim(x, x.clone()), psnr(x, x.clone())
    assert s.shape == p.shape == (4,)
    torch.testing.assert_close(s, torch.ones(4))
    assert torch.isinf(p).all() and (p > 0).all()


def test_constant_offset_psnr_is_exact() -> None:
    x = _images()
    for offset, expected_db in [(0.1, 20.0), (0.01, 40.0), (0.05, -20 * math.log10(0.05))]:
        torch.testing.assert_close(psnr(x, x + offset), torch.full((4,), expected_db), atol=1e-3, rtol=0)


def test_ssim_decreases_with_noise_and_psnr_too() -> None:
    x = _images(b=2)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    scores = [(ssim(x, (x + s * noise).clamp(0, 1)), psnr(x, (x + s * noise).clamp(0, 1))) for s in (0.02, 0.1, 0.3)]
    for (s_lo, p_lo), (s_hi, p_hi) in zip(scores, scores[1:]):
        assert (s_hi < s_lo).all()
        assert (p_hi < p_lo).all()
    assert (scores[-1][0] < 0.5).all()


def test_per_image_values_are_independent_of_batch() -> None:
    x, y = _images(seed=0), _images(seed=1)
    torch.testing.assert_close(ssim(x, y)[1:2], ssim(x[1:2], y[1:2]))
    torch.testing.assert_close(psnr(x, y)[1:2], psnr(x[1:2], y[1:2]))


def test_uint8_matches_float() -> None:
    x8 = (_images(seed=0) * 255).round().to(torch.uint8)
    y8 = (_images(seed=1) * 255).round().to(torch.uint8)
    xf, yf = x8.float() / 255, y8.float() / 255
    torch.testing.assert_close(ssim(x8, y8), ssim(xf, yf))
    torch.testing.assert_close(psnr(x8, y8), psnr(xf, yf))
    torch.testing.assert_close(psnr(x8, yf), psnr(xf, yf))  # mixed dtypes


def test_registry_and_unknown_name() -> None:
    assert get_metric("ssim") is ssim and get_metric("psnr") is psnr
    assert set(METRICS) == {"ssim", "psnr"}
    with pytest.raises(ValueError, match=r"unknown metric 'lpips'.*\['psnr', 'ssim'\]"):
        get_metric("lpips")


def test_window_guard_for_small_images() -> None:
    assert ssim_window_size(1.5) == 11
    x = _images(h=8, w=8)
    with pytest.raises(ValueError, match=r"window .* 11 x 11.*sigma <= "):
        ssim(x, x)
    # The suggested sigma really fits: window of 7 px for an 8 px image.
    sigma = 3 / 3.5
    assert ssim_window_size(sigma) == 7
    torch.testing.assert_close(ssim(x, x, sigma=sigma), torch.ones(4))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(3, 28, 28), torch.rand(3, 28, 28), r"\[B, C, H, W\]"),
        (torch.rand(2, 1, 28, 28), torch.rand(2, 1, 32, 32), "same shape"),
        (torch.rand(2, 1, 28, 28) * 255, torch.rand(2, 1, 28, 28), r"must lie in \[0, 1\]"),
        (torch.randn(2, 1, 28, 28), torch.rand(2, 1, 28, 28), "normalisation"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.int64), torch.rand(2, 1, 28, 28), "dtype"),
    ],
)
def test_bad_inputs_raise(x: torch.Tensor, y: torch.Tensor, match: str) -> None:
    for fn in (ssim, psnr):
        with pytest.raises(ValueError, match=match):
            fn(x, y)


# ---------------------------------------------------------------------------------------------- independent oracles


def _changed_inside(c: int, side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 pair equal everywhere except more than 10 px from the border, where y is x plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, c, side, side, generator=g, dtype=torch.float64)
    y = x.clone()
    inner = y[..., 11:-11, 11:-11]
    y[..., 11:-11, 11:-11] = (inner + 0.2 * torch.randn(inner.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("sigma", [1.5, 1.0])
@pytest.mark.parametrize("c", [1, 3])
def test_ssim_matches_scikit_image_on_interior_pixels(sigma: float, c: int) -> None:
    # A second implementation (scikit-image, Gaussian weights, population covariances as in Wang et al. 2004)
    # averages the SSIM map over the pixels whose window lies inside the image; torchmetrics averages over all
    # pixels after reflect-padding. The images differ only deep inside, so every pixel within the window radius of
    # the border sees identical content and scores exactly 1 in both: 1 - SSIM scales by interior / all pixels.
    from skimage.metrics import structural_similarity

    side = 40
    x, y = _changed_inside(c, side, seed=c)
    radius = (ssim_window_size(sigma) - 1) // 2
    interior = (side - 2 * radius) ** 2 / side**2
    expected = torch.tensor(
        [
            structural_similarity(
                a.numpy(), b.numpy(), channel_axis=0, gaussian_weights=True, sigma=sigma,
                use_sample_covariance=False, data_range=1.0,
            )
            for a, b in zip(x, y)
        ],
        dtype=torch.float64,
    )  # fmt: skip
    got = ssim(x, y, sigma=sigma)
    assert float((1 - expected).min()) > 0.02, "the change must lower SSIM clearly for the comparison to bite"
    torch.testing.assert_close(1 - got, (1 - expected) * interior, rtol=1e-9, atol=1e-12)
    # float32 inputs give the same values to float32 precision
    torch.testing.assert_close(ssim(x.float(), y.float(), sigma=sigma).double(), got, rtol=0, atol=2e-6)


@pytest.mark.parametrize(("a", "b"), [(0.2, 0.6), (0.9, 0.1), (0.5, 0.5)])
def test_ssim_of_two_constant_images_is_the_luminance_term(a: float, b: float) -> None:
    # Constant images have no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1) with
    # C1 = (0.01 * data_range)^2 and data_range 1 (the contrast-structure term is C2 / C2).
    x = torch.full((2, 3, 16, 16), a, dtype=torch.float64)
    y = torch.full((2, 3, 16, 16), b, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    torch.testing.assert_close(ssim(x, y), torch.full((2,), expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_psnr_is_minus_ten_log_mse_per_image() -> None:
    # Closed form with data range 1, each image with its own MSE: one pixel off by 0.5 in a 1 x 10 x 10 image.
    x = torch.zeros(2, 1, 10, 10, dtype=torch.float64)
    y = x.clone()
    y[0, 0, 3, 4] = 0.5
    y[1] = 0.25
    expected = torch.tensor([-10 * math.log10(0.25 / 100), -10 * math.log10(0.0625)], dtype=torch.float64)
    torch.testing.assert_close(psnr(x, y), expected, rtol=1e-6, atol=0)
    assert float(psnr(x[:1], y[:1])[0]) == pytest.approx(26.0206, abs=1e-4)


def test_capped_mean_caps_infinite_psnr_only() -> None:
    assert capped_mean(torch.tensor([float("inf"), 20.0])) == pytest.approx((PSNR_CAP + 20.0) / 2)
    assert capped_mean(torch.tensor([0.25, 0.75])) == pytest.approx(0.5)
    assert capped_mean(torch.tensor([150.0, 50.0], dtype=torch.float32)) == pytest.approx(75.0)


def test_mean_ssim_psnr_over_chunks_equals_one_pass() -> None:
    clear = (_images(b=5, seed=2) * 255).round().to(torch.uint8)
    protected = clear.float() / 255 + 0.05 * torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    protected = protected.clamp(0, 1)
    reference = clear.float() / 255
    mean_ssim, mean_psnr = mean_ssim_psnr(protected, clear, chunk=2)  # chunks of 2, 2 and 1 images
    assert mean_ssim == pytest.approx(float(ssim(protected, reference).mean()), rel=1e-6)
    assert mean_psnr == pytest.approx(float(psnr(protected, reference).mean()), rel=1e-6)
    # one image identical to its clear version: its PSNR counts as the cap, not as infinity
    protected[0] = reference[0]
    _, capped = mean_ssim_psnr(protected, clear, chunk=2)
    expected = (PSNR_CAP + float(psnr(protected[1:], reference[1:]).sum())) / 5
    assert capped == pytest.approx(expected, rel=1e-6)


def test_mean_ssim_psnr_is_nan_where_ssim_is_undefined() -> None:
    assert all(math.isnan(v) for v in mean_ssim_psnr(torch.rand(0, 3, 32, 32), torch.zeros(0, 3, 32, 32).byte()))
    small = torch.rand(2, 3, 10, 10)
    assert all(math.isnan(v) for v in mean_ssim_psnr(small, (small * 255).round().byte()))
    # 11 px is the smallest side the standard window fits
    fits = torch.rand(2, 3, 11, 11)
    assert not any(math.isnan(v) for v in mean_ssim_psnr(fits, (fits * 255).round().byte()))


def test_ssim_needs_a_positive_sigma() -> None:
    x = _images()
    for sigma in (0.0, -1.5):
        with pytest.raises(ValueError, match="sigma must be positive"):
            ssim(x, x, sigma=sigma)


def test_images_at_the_edge_of_the_value_range_are_accepted() -> None:
    # Rounding may leave values a hair outside [0, 1]; up to 1e-6 is tolerated, more is refused.
    x = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    x[..., 0, 0], x[..., 0, 1] = -1e-7, 1 + 1e-7
    assert torch.isfinite(psnr(x, x.clamp(0, 1))).all()
    x[..., 0, 0] = -1e-5
    with pytest.raises(ValueError, match="must lie in"):
        psnr(x, x)
    x[..., 0, 0], x[..., 0, 1] = 0.0, 1 + 1e-5
    with pytest.raises(ValueError, match="must lie in"):
        psnr(x, x)


def test_the_tolerance_itself_is_accepted() -> None:
    # Exactly -1e-6 and 1 + 1e-6 (float64) are inside the tolerance, not beyond it.
    x = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    x[..., 0, 0], x[..., 0, 1] = -1e-6, 1 + 1e-6
    assert torch.isfinite(psnr(x, x.clamp(0, 1))).all()


def test_a_single_value_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"x has values in \[2, 2\]"):
        psnr(torch.full((1, 1, 1, 1), 2.0), torch.zeros(1, 1, 1, 1))


def test_errors_name_the_argument_at_fault() -> None:
    good, bad = _images(b=1), _images(b=1) * 255
    with pytest.raises(ValueError, match=r"^x has values"):
        psnr(bad, good)
    with pytest.raises(ValueError, match=r"^y has values"):
        psnr(good, bad)
    with pytest.raises(ValueError, match=r"^y must have shape"):
        ssim(good, good[0])
    with pytest.raises(ValueError, match=r"^x has dtype"):
        ssim(good.to(torch.int32), good)


def test_mixed_float_types_are_compared_in_the_wider_one() -> None:
    x, y = _images(seed=1).double(), _images(seed=2).double()
    for fn in (ssim, psnr):
        torch.testing.assert_close(fn(x, y.float()), fn(x, y.float().double()))
        torch.testing.assert_close(fn(x.float(), y), fn(x.float().double(), y))
        assert fn(x, y.float()).dtype == torch.float64


@pytest.mark.parametrize("side", [3, 4, 7, 8, 9, 10])
def test_the_suggested_sigma_fits_the_image(side: int) -> None:
    # The message names the largest sigma (and its odd window) that fits; using it works.
    x = _images(b=1, h=side, w=side)
    with pytest.raises(ValueError, match=r"pass sigma <= ([\d.]+) \(window (\d+) px\)") as info:
        ssim(x, x)
    sigma_text, window = re.search(r"sigma <= ([\d.]+) \(window (\d+) px\)", str(info.value)).groups()
    expected_window = side if side % 2 else side - 1
    assert int(window) == expected_window
    assert ssim_window_size(float(sigma_text)) == expected_window
    torch.testing.assert_close(ssim(x, x, sigma=float(sigma_text)), torch.ones(1))


def test_images_under_three_pixels_are_told_to_upsample() -> None:
    x = _images(b=1, h=2, w=12)
    with pytest.raises(ValueError, match=r"; SSIM needs images of at least 3 x 3 px; upsample the images first$"):
        ssim(x, x)


def test_an_empty_batch_has_no_psnr_values() -> None:
    empty = torch.empty(0, 3, 16, 16)
    assert psnr(empty, empty).shape == (0,)
