"""Tests for the per-image SSIM/PSNR wrappers: known values, monotonicity, conventions and input validation."""

from __future__ import annotations

import math

import pytest
import torch

from fl_vmix.privacy.similarity import METRICS, get_metric, psnr, ssim, ssim_window_size


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
