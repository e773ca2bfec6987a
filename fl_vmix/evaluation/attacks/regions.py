"""What a within-region shuffle leaves intact, as tensors the attacks build on.

VisualMixer and the block shuffle move pixels only inside ``region_size`` regions (tiling from the
top-left; regions at the right/bottom border are smaller when the image side is not a multiple). So
every region keeps its per-channel *multiset* of values, hence its mean and its sorted values, whatever
the key. These helpers compute those invariants for any image and region size, vectorised over images,
channels and regions (no Python loop over any of them):

* :func:`region_sorted`: each region's values per channel in ascending order, with the count of valid
  values of each (partial) region;
* :func:`region_quantiles`: ``q`` evenly spaced order statistics of each region (a fixed-width summary
  of the sorted values that works for any region size);
* :func:`region_means` and :func:`thumbnail`: the region-mean image, broadcast (``"nearest"``) or
  bilinearly interpolated between the true region centres (``"bilinear"``), the baseline any learned
  reconstruction must beat;
* :func:`broadcast_regions` and :func:`region_position`: per-region values back to pixels, and each
  pixel's position inside its region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_region_size(images: Tensor, region_size: int) -> tuple[int, int]:
    """Validate ``[B, C, H, W]`` images and a region side; return the region grid ``(rows, cols)``."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, C, H, W] tensor, got {got}; add a batch dim with unsqueeze(0)")
    if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size < 1:
        raise ValueError(f"region_size must be a positive int (pixels), got {region_size!r}; e.g. 8")
    height, width = images.shape[-2:]
    if region_size > min(height, width):
        raise ValueError(
            f"region_size {region_size} exceeds the {height}x{width} image; use region_size <= {min(height, width)}"
        )
    return -(-height // region_size), -(-width // region_size)


def _windows(images: Tensor, region_size: int, fill: float) -> tuple[Tensor, Tensor]:
    """``[B, C, Ry, Rx, r*r]`` values of each region (padding = ``fill``) and valid counts ``[Ry, Rx]``."""
    rows, cols = check_region_size(images, region_size)
    b, c, h, w = images.shape
    r = region_size
    padded = F.pad(images, (0, cols * r - w, 0, rows * r - h), value=fill)
    windows = padded.reshape(b, c, rows, r, cols, r).permute(0, 1, 2, 4, 3, 5).reshape(b, c, rows, cols, r * r)
    heights = torch.clamp(h - torch.arange(rows, device=images.device) * r, max=r)
    widths = torch.clamp(w - torch.arange(cols, device=images.device) * r, max=r)
    return windows, heights.view(-1, 1) * widths.view(1, -1)


def region_sorted(images: Tensor, region_size: int) -> tuple[Tensor, Tensor]:
    """Sorted values of every region and channel, ``[B, C, Ry, Rx, r*r]``, and valid counts ``[Ry, Rx]``.

    Entries ``[..., :count]`` of a region are its values ascending; the rest (partial regions only)
    are ``+inf`` padding.
    """
    windows, counts = _windows(images, region_size, float("inf"))
    return windows.sort(dim=-1).values, counts


def region_quantiles(images: Tensor, region_size: int, quantiles: int) -> Tensor:
    """``quantiles`` evenly spaced order statistics (min to max) per region and channel, ``[B, C, q, Ry, Rx]``."""
    if isinstance(quantiles, bool) or not isinstance(quantiles, int) or quantiles < 2:
        raise ValueError(f"quantiles must be an int >= 2 (min and max at least), got {quantiles!r}; e.g. 16")
    values, counts = region_sorted(images, region_size)
    steps = torch.linspace(0, 1, quantiles, device=images.device, dtype=torch.float64)
    index = torch.round(steps.view(-1, 1, 1) * (counts.unsqueeze(0) - 1)).long()  # [q, Ry, Rx]
    index = index.permute(1, 2, 0).expand(*values.shape[:2], -1, -1, -1)
    return values.gather(-1, index).permute(0, 1, 4, 2, 3)


def region_means(images: Tensor, region_size: int) -> Tensor:
    """Per-channel mean of every region, ``[B, C, Ry, Rx]`` (partial regions average their own pixels)."""
    windows, counts = _windows(images, region_size, 0.0)
    return windows.sum(-1) / counts.to(images.dtype)


def broadcast_regions(per_region: Tensor, region_size: int, size: tuple[int, int]) -> Tensor:
    """``[..., Ry, Rx]`` per-region values to ``[..., H, W]``: each pixel takes its region's value."""
    out = per_region.repeat_interleave(region_size, dim=-2).repeat_interleave(region_size, dim=-1)
    return out[..., : size[0], : size[1]]


def _interpolation_matrix(length: int, region_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[length, regions]`` linear-interpolation weights between region centres (constant beyond the ends)."""
    starts = torch.arange(0, length, region_size, device=device, dtype=torch.float64)
    centres = starts + (torch.clamp(length - starts, max=region_size) - 1) / 2
    pixels = torch.arange(length, device=device, dtype=torch.float64)
    if centres.numel() == 1:
        return torch.ones(length, 1, device=device, dtype=dtype)
    right = torch.searchsorted(centres, pixels, right=True).clamp(1, centres.numel() - 1)
    left = right - 1
    frac = ((pixels - centres[left]) / (centres[right] - centres[left])).clamp(0, 1)
    weights = torch.zeros(length, centres.numel(), device=device, dtype=torch.float64)
    weights.scatter_(1, left.view(-1, 1), (1 - frac).view(-1, 1))
    weights.scatter_add_(1, right.view(-1, 1), frac.view(-1, 1))
    return weights.to(dtype)


def thumbnail(images: Tensor, region_size: int, mode: str = "bilinear") -> Tensor:
    """The region-mean image at full size: ``"nearest"`` (each pixel its region's mean) or ``"bilinear"``
    (means placed at the true region centres, linearly interpolated, constant beyond the outer centres).

    This is the picture every within-region shuffle leaks, whatever the key: the baseline a learned
    attack has to beat.
    """
    means = region_means(images, region_size)
    h, w = images.shape[-2:]
    if mode == "nearest":
        return broadcast_regions(means, region_size, (h, w))
    if mode != "bilinear":
        raise ValueError(f"thumbnail mode must be 'nearest' or 'bilinear', got {mode!r}")
    wy = _interpolation_matrix(h, region_size, images.device, images.dtype)
    wx = _interpolation_matrix(w, region_size, images.device, images.dtype)
    return torch.einsum("hy,bcyx,wx->bchw", wy, means, wx)


def region_position(height: int, width: int, region_size: int, device: torch.device | str | None = None) -> Tensor:
    """``[2, H, W]``: each pixel's row and column inside its region, scaled to (0, 1) by the region's own size."""

    def axis(length: int) -> Tensor:
        pixels = torch.arange(length, device=device)
        start = (pixels // region_size) * region_size
        extent = torch.clamp(length - start, max=region_size)
        return ((pixels - start).float() + 0.5) / extent.float()

    y, x = axis(height), axis(width)
    return torch.stack([y.view(-1, 1).expand(height, width), x.view(1, -1).expand(height, width)])
