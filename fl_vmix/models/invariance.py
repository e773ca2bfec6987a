"""A shuffle-invariant input stage: sort the values inside each image region.

VisualMixer hides an image by permuting pixels inside small regions, spatially and (optionally)
across colour channels. A model that first replaces every region by its *sorted* values sees the same
input whatever permutation was applied inside the region, so it is exactly invariant to that
obfuscation (at the price of discarding the within-region layout, which the shuffle destroys anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RegionSortInvariance", "region_sort"]


def _largest_value(dtype: torch.dtype) -> float | int:
    """A padding value that sorts after (or ties with) every real value of ``dtype``."""
    if dtype.is_floating_point:
        return float("inf")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).max


def region_sort(images: Tensor, region_size: int, sort_channels_jointly: bool = False) -> Tensor:
    """Sort the values of every ``region_size`` x ``region_size`` region and write them back row-major.

    Regions tile the image from the top-left corner; when H or W is not a multiple of
    ``region_size`` the regions on the bottom/right edge are smaller, and they are sorted among their
    own pixels only (no pixel is dropped or duplicated). Per channel (default) the output of a region
    holds that channel's values in ascending order along the region's rows; with
    ``sort_channels_jointly=True`` the values of all channels of the region are sorted together and
    written back channel-major (channel 0 gets the smallest), so the result is also invariant to
    moving values between channels inside the region.

    How partial regions are handled without a loop over regions: the image is padded to whole
    regions with a value that sorts last, each region is sorted, and the k-th valid position of a
    region (in row-major order) takes the k-th smallest value, via one ``gather`` whose index is the
    running count of valid positions. NaN inputs are not supported (NaN sorts after the padding).

    Args:
        images: ``[B, C, H, W]`` tensor (any real dtype).
        region_size: side of the square regions, >= 1.
        sort_channels_jointly: sort over all channels of a region together.

    Returns:
        Tensor of the same shape and dtype as ``images``.
    """
    if images.dim() != 4:
        raise ValueError(
            f"region_sort expects a [B, C, H, W] tensor, got shape {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0) for a single image"
        )
    if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size < 1:
        raise ValueError(f"region_size must be an integer >= 1, got {region_size!r}; pass e.g. region_size=4")
    batch, channels, height, width = images.shape
    r = region_size
    pad_h, pad_w = (-height) % r, (-width) % r
    padded_h, padded_w = height + pad_h, width + pad_w
    blocks_h, blocks_w = padded_h // r, padded_w // r

    padded = images
    if pad_h or pad_w:
        padded = F.pad(images, (0, pad_w, 0, pad_h), mode="constant", value=_largest_value(images.dtype))
    # [B, C, Hb, r, Wb, r] -> [B, Hb, Wb, C, r, r]: one row per region, then its (channel, row, col).
    windows = padded.reshape(batch, channels, blocks_h, r, blocks_w, r).permute(0, 2, 4, 1, 3, 5)
    group_shape = (
        (batch, blocks_h, blocks_w, 1, channels * r * r)
        if sort_channels_jointly
        else (batch, blocks_h, blocks_w, channels, r * r)
    )
    values = windows.reshape(group_shape).sort(dim=-1).values

    if pad_h or pad_w:
        rows = torch.arange(padded_h, device=images.device) < height
        cols = torch.arange(padded_w, device=images.device) < width
        valid = (rows[:, None] & cols[None, :]).reshape(blocks_h, r, blocks_w, r).permute(0, 2, 1, 3)
        if sort_channels_jointly:
            valid = valid.unsqueeze(2).expand(blocks_h, blocks_w, channels, r, r)
        valid = valid.reshape(1, blocks_h, blocks_w, 1, group_shape[-1])
        # k-th valid position (row-major inside the region) takes the k-th smallest value; padded
        # positions take anything (index 0) and are cropped below.
        rank = (valid.cumsum(dim=-1) - 1).clamp_(min=0)
        values = values.gather(-1, rank.expand_as(values))

    out = values.reshape(batch, blocks_h, blocks_w, channels, r, r).permute(0, 3, 1, 4, 2, 5)
    out = out.reshape(batch, channels, padded_h, padded_w)
    return out[:, :, :height, :width]


class RegionSortInvariance(nn.Module):
    """Input stage that makes a model invariant to pixel permutations inside each region.

    See :func:`region_sort` for the exact operation. Parameter-free, differentiable (through
    ``sort``/``gather``), and vectorised over batch, channels and regions.
    """

    def __init__(self, region_size: int, sort_channels_jointly: bool = False) -> None:
        super().__init__()
        if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size < 1:
            raise ValueError(
                f"region_size must be an integer >= 1, got {region_size!r}; pass e.g. RegionSortInvariance(4)"
            )
        self.region_size = region_size
        self.sort_channels_jointly = sort_channels_jointly

    def forward(self, images: Tensor) -> Tensor:
        return region_sort(images, self.region_size, self.sort_channels_jointly)

    def extra_repr(self) -> str:
        return f"region_size={self.region_size}, sort_channels_jointly={self.sort_channels_jointly}"
