"""Per-image visual-similarity metrics (SSIM, PSNR) between a clean and a protected/reconstructed image.

Why per image: privacy evaluation compares every original image with its obfuscated (or attacker-reconstructed)
version, and the distribution over images matters (mean, worst case), so every metric returns a tensor ``[B]``.

The numerics are torchmetrics' maintained implementations; this module only fixes the conventions used across
fl_vmix and validates inputs so that a silently wrong call (normalised inputs, swapped shapes, images too small
for the SSIM window) fails loudly instead:

* images are ``[B, C, H, W]``; float tensors must lie in ``[0, 1]``; ``uint8`` tensors are divided by 255;
* ``data_range`` is always 1.0 (after the uint8 conversion);
* PSNR of two identical images is ``+inf`` (no cap): MSE is 0.  Means over images cap it at :data:`PSNR_CAP`
  (:func:`capped_mean`, :func:`mean_ssim_psnr`), since JSON and CSV have no infinity;
* SSIM uses the standard Gaussian window (sigma 1.5 -> 11 x 11 window, Wang et al. 2004), which fits 28 px
  MNIST-style images.  torchmetrics derives the window size from ``sigma`` (``2 * int(3.5 * sigma + 0.5) + 1``)
  and reflect-pads the image; images smaller than that window raise :class:`ValueError` that suggests a
  ``sigma`` whose window fits, rather than shrinking the window silently (SSIM values computed with different
  windows are not comparable).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["METRICS", "PSNR_CAP", "capped_mean", "get_metric", "mean_ssim_psnr", "psnr", "ssim", "ssim_window_size"]

PSNR_CAP = 100.0  # dB reported for identical images (PSNR is infinite there; JSON has no inf)

# Tolerance for float images slightly outside [0, 1] from float rounding (e.g. x * 255 / 255).
_RANGE_TOL = 1e-6


def ssim_window_size(sigma: float) -> int:
    """Side of the Gaussian window torchmetrics uses for ``sigma`` (its formula, so the size check matches it)."""
    return 2 * int(3.5 * sigma + 0.5) + 1


def _as_unit_float(x: Tensor, name: str) -> Tensor:
    """Validate one image batch and return it as floats in [0, 1] (uint8 divided by 255)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor")
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have shape [B, C, H, W], got {tuple(x.shape)}; add a batch/channel axis with unsqueeze"
        )
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}; pass float images in [0, 1] or uint8 images in [0, 255]")
    if x.numel() > 0:
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
            raise ValueError(
                f"{name} has values in [{lo:.4g}, {hi:.4g}] but float images must lie in [0, 1]; "
                "undo any mean/std normalisation (or divide uint8-range floats by 255) before computing metrics"
            )
    return x


def _prepare(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a pair of batches: same shape, both [0, 1] floats of a common dtype."""
    x = _as_unit_float(x, "x")
    y = _as_unit_float(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}; "
            "pair each image with its own protected/reconstructed version"
        )
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def ssim(x: Tensor, y: Tensor, *, sigma: float = 1.5) -> Tensor:
    """Structural similarity of each image pair, shape ``[B]`` (1.0 for identical images).

    Channels are treated independently and averaged (torchmetrics convention).  ``sigma`` is the Gaussian window
    width; the default 1.5 (11 x 11 window) is the standard SSIM setting and needs images of at least 11 px.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}; use the standard 1.5")
    x, y = _prepare(x, y)
    window = ssim_window_size(sigma)
    side = min(x.shape[-2:])
    if side < window:
        if side < 3:
            fix = "SSIM needs images of at least 3 x 3 px; upsample the images first"
        else:
            fix = f"pass sigma <= {((side - 1) // 2) / 3.5:.3g} (window {side - (1 - side % 2)} px) or upsample"
        raise ValueError(
            f"images are {tuple(x.shape[-2:])} px but the SSIM window for sigma={sigma} is {window} x {window}; {fix}"
        )
    from torchmetrics.functional.image import structural_similarity_index_measure  # ~1 s to import: only when used

    out = structural_similarity_index_measure(x, y, sigma=sigma, data_range=1.0, reduction="none")
    assert isinstance(out, Tensor)  # narrow the union type: no return_full_image/contrast requested
    return out


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image pair, shape ``[B]``; ``+inf`` for identical images.

    With data range 1, PSNR = -10 log10(MSE): a constant offset of 0.1 gives exactly 20 dB.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, y = _prepare(x, y)
    return peak_signal_noise_ratio(x, y, data_range=1.0, dim=(1, 2, 3), reduction="none")


METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ssim": ssim, "psnr": psnr}


def get_metric(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Look up a metric by name; unknown names raise ValueError listing the valid ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; valid names: {sorted(METRICS)}") from None


def capped_mean(values: Tensor) -> float:
    """Mean of per-image SSIM or PSNR values with PSNR capped at :data:`PSNR_CAP` (identical images)."""
    return float(values.double().clamp(max=PSNR_CAP).mean())


def mean_ssim_psnr(protected: Tensor, clear_uint8: Tensor, chunk: int = 2048) -> tuple[float, float]:
    """Mean SSIM and PSNR (capped at PSNR_CAP) of protected float images against their clear uint8 versions.

    NaN for an empty batch or images smaller than SSIM's 11 px window (SSIM is not defined there).
    """
    if len(protected) == 0 or min(protected.shape[-2:]) < ssim_window_size(1.5):
        return float("nan"), float("nan")
    ssims, psnrs = [], []
    for i in range(0, len(protected), chunk):
        clear = clear_uint8[i : i + chunk].float() / 255
        ssims.append(ssim(protected[i : i + chunk], clear))
        psnrs.append(psnr(protected[i : i + chunk], clear).clamp(max=PSNR_CAP))
    return float(torch.cat(ssims).mean()), float(torch.cat(psnrs).mean())
