"""Exact integer region energies for VFE targeting, identical on every device.

The mixer chooses each region's block size by comparing VFE values; a choice made from floating-point
sums could differ between CPU and CUDA (different summation orders, fused multiply-adds) and so change
an image's shuffle. The selection therefore runs on values quantised to 16-bit fixed point
(``q = round(x * 65535)``; uint8 ``k`` is ``257 k``, the same as the float ``k / 255``) and sums squared
differences in int64: exact, so every device chooses the same levels. Energies follow the VFE
definitions of :mod:`fl_vmix.privacy.vfe` with window = region size (``vfe = sum / (C * R * 65535^2)``),
up to the quantisation step of 1/65535.

CPU: Numba kernels (one pass per source map). Other devices: the same integer function in PyTorch.
"""

from __future__ import annotations

import numpy as np
import torch

from fl_vmix.privacy.permutations import ShuffleGeometry

SCALE = 65535  # quantisation: 16-bit fixed point for 0-1 images
UINT8_STEP = SCALE // 255  # uint8 k is quantised as 257 k, exactly the float k / 255
MAX_ABS = 4.0  # |x| bound that keeps int64 energy sums exact for any image size used here


def quantize(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` int32 fixed-point values (uint8 read as 0-1, as VFE reads them).

    Refuses NaN, infinite and out-of-range values with a message (one pass over the batch)."""
    if images.dtype == torch.uint8:
        return images.to(torch.int32) * UINT8_STEP
    flat = images.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        from fl_vmix.privacy._kernels import quantize_kernel, use_torch_threads

        use_torch_threads()

        out = np.empty(flat.numel(), dtype=np.int32)
        bad = quantize_kernel(flat.contiguous().numpy(), float(SCALE), MAX_ABS, out)
        quantised = torch.from_numpy(out).view(images.shape)
    else:
        wide = flat.double()
        bad = int((~(wide.abs() <= MAX_ABS)).sum())
        quantised = (
            torch.round(wide.clamp(-MAX_ABS, MAX_ABS).nan_to_num(0.0) * SCALE).to(torch.int32).view(images.shape)
        )
    if bad:
        finite = bool(torch.isfinite(flat).all())
        if not finite:
            raise ValueError("images contain NaN or inf: clean or clamp the input before mixing")
        peak = float(flat.abs().max())
        raise ValueError(
            f"images reach |x| = {peak:.4g}, but VFE targeting reads values in [-{MAX_ABS:g}, {MAX_ABS:g}] "
            "(0-1 floats, normalised floats or uint8): rescale the images before mixing"
        )
    return quantised


def identity_sources(batch: int, channels: int, pixels: int, device: torch.device) -> torch.Tensor:
    """The source map of the unshuffled batch, ``[1, B, C, P]``."""
    return torch.arange(batch * channels * pixels, device=device, dtype=torch.int32).view(1, batch, channels, pixels)


def region_energies(
    values: torch.Tensor, sources: torch.Tensor, geometry: ShuffleGeometry, reference: bool
) -> torch.Tensor:
    """Energy of every region under every source map: int64 ``[B, N, R]`` for ``sources`` ``[N, B, C, P]``,
    summed over channels. ``values`` is the flattened output of :func:`quantize`."""
    maps, batch = sources.shape[:2]
    if values.device.type == "cpu":
        from fl_vmix.privacy._kernels import energies_kernel, use_torch_threads  # Numba: on first CPU use

        use_torch_threads()
        out = np.empty((batch, maps, geometry.num_regions), dtype=np.int64)
        energies_kernel(values.numpy(), sources.numpy(), geometry.width, geometry.region, reference, out)
        return torch.from_numpy(out)
    return _region_energies_torch(values, sources, geometry, reference)


def _region_energies_torch(
    values: torch.Tensor, sources: torch.Tensor, geometry: ShuffleGeometry, reference: bool
) -> torch.Tensor:
    maps, batch, channels, _ = sources.shape
    height, width, region = geometry.height, geometry.width, geometry.region
    v = values.to(torch.int64)[sources.long()].view(maps, batch, channels, height, width)
    right = torch.zeros_like(v)
    right[..., :-1] = v[..., 1:]
    down = torch.zeros_like(v)
    down[..., :-1, :] = v[..., 1:, :]
    x = torch.arange(width, device=v.device)
    y = torch.arange(height, device=v.device).view(-1, 1)
    if reference:  # zero padding after every window's last column / row (and the image's)
        has_right = ((x + 1) % region != 0) & (x + 1 < width)
        has_down = ((y + 1) % region != 0) & (y + 1 < height)
        dx = right * has_right - v
        dy = down * has_down - v
    else:  # real neighbours only; nothing past the image
        dx = (right - v) * (x + 1 < width)
        dy = (down - v) * (y + 1 < height)
    energy = (dx * dx + dy * dy).sum(2)  # [N, B, H, W]
    ny, nx = geometry.grid
    energy = torch.nn.functional.pad(energy, (0, nx * region - width, 0, ny * region - height))
    per_region = energy.view(maps, batch, ny, region, nx, region).sum(dim=(3, 5)).view(maps, batch, -1)
    return per_region.transpose(0, 1).contiguous()


def selected_energies(
    values: torch.Tensor, sources: torch.Tensor, levels: torch.Tensor, geometry: ShuffleGeometry, reference: bool
) -> torch.Tensor:
    """Region energies ``[B, R]`` of the batch shuffled with each region at its level (``levels`` ``[B, R]``)."""
    if values.device.type == "cpu":
        from fl_vmix.privacy._kernels import selected_energies_kernel, use_torch_threads

        use_torch_threads()
        out = np.empty((sources.shape[1], geometry.num_regions), dtype=np.int64)
        selected_energies_kernel(
            values.numpy(),
            sources.numpy(),
            levels.to(torch.int64).contiguous().numpy(),
            geometry.width,
            geometry.region,
            reference,
            out,
        )
        return torch.from_numpy(out)
    return _selected_energies_torch(values, sources, levels, geometry, reference)


def _selected_energies_torch(
    values: torch.Tensor, sources: torch.Tensor, levels: torch.Tensor, geometry: ShuffleGeometry, reference: bool
) -> torch.Tensor:
    """:func:`selected_energies` on any device (the kernel's twin, tested equal to it on the CPU)."""
    return _region_energies_torch(values, select_sources(sources, levels, geometry).unsqueeze(0), geometry, reference)[
        :, 0
    ]


def take_selected(
    images: torch.Tensor, sources: torch.Tensor, levels: torch.Tensor, geometry: ShuffleGeometry
) -> torch.Tensor:
    """The batch shuffled with each region at its level: ``images`` gathered through the selected sources.
    Images that carry gradient take the differentiable gather (the compiled kernel only moves values)."""
    compiled = images.device.type == "cpu" and images.dtype in (torch.uint8, torch.float32, torch.float64)
    if compiled and not (images.requires_grad and torch.is_grad_enabled()):
        from fl_vmix.privacy._kernels import select_take_kernel, use_torch_threads

        use_torch_threads()
        out = torch.empty_like(images, memory_format=torch.contiguous_format)
        select_take_kernel(
            images.contiguous().view(-1).numpy(),
            sources.numpy(),
            levels.to(torch.int64).contiguous().numpy(),
            geometry.width,
            geometry.region,
            out.view(images.shape[0], images.shape[1], -1).numpy(),
        )
        return out
    source = select_sources(sources, levels, geometry)
    return images.reshape(-1).index_select(0, source.reshape(-1)).view_as(images)


def select_sources(sources: torch.Tensor, levels: torch.Tensor, geometry: ShuffleGeometry) -> torch.Tensor:
    """``[B, C, P]``: each region's sources at its level (``levels`` ``[B, R]`` indexes ``sources``' first dim)."""
    _, batch, channels, pixels = sources.shape
    region = torch.from_numpy(geometry.region_of_pixel).to(sources.device)
    level_of_pixel = levels.to(torch.int64)[:, region].unsqueeze(1).expand(batch, channels, pixels)
    return sources.gather(0, level_of_pixel.unsqueeze(0)).squeeze(0)
