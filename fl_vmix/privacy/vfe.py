"""Visual Feature Entropy (VFE): the privacy metric that drives VisualMixer.

VFE measures how much gradient energy an image carries inside small windows: a shuffled region has
many strong pixel-to-pixel jumps, a natural one has few. Two definitions are offered.

``"reference"`` reproduces the authors' prototype. For every channel ``c`` and every non-overlapping
``s x s`` window ``W`` (windows tile the image from the top-left; windows at the right/bottom edge are
partial when the size is not a multiple of ``s``), the window is zero-padded by one column on the right
and one row below (``P``) and its energy is

    E_ref(W) = sum_{i,j in W} (P[i, j+1] - W[i, j])^2 + (P[i+1, j] - W[i, j])^2

so the last column and the last row of every window are compared with zero. VFE is the mean of
``E_ref`` over all windows and channels. The padding makes border terms dominate: a constant image
``v`` scores ``2 * s * v^2`` (7.0 for ``v = 0.5``, ``s = 14``).

``"corrected"`` (ours) removes the padding artefact: differences are taken between real neighbours
over the whole image, so a pair that straddles two windows is counted, and nothing is compared with
the zero beyond the image border. Each pixel's forward differences are charged to the window the
pixel lies in:

    E_cor(W) = sum_{(i,j) in W} [j+1 < width] (x[i, j+1] - x[i, j])^2 + [i+1 < height] (x[i+1, j] - x[i, j])^2

and VFE is again the mean over windows and channels. A constant image scores 0; an image with one
vertical edge of height ``H`` and step ``d`` scores ``H * d^2 / n_windows`` per channel.

Both definitions are sums (not means) over a window, so their values scale with ``s^2`` and with the
square of the input range: compare VFE only between images of the same size, window and range. All
functions here work on ``[B, C, H, W]`` float tensors on any device and are vectorised over the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

VFEMethod = Literal["reference", "corrected"]
VFE_METHODS: tuple[str, ...] = ("reference", "corrected")


def _check_method(method: str) -> None:
    if method not in VFE_METHODS:
        raise ValueError(
            f"unknown VFE method {method!r}: use one of {', '.join(VFE_METHODS)} "
            "('reference' reproduces the authors' prototype, 'corrected' drops its zero-padding artefact)"
        )


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images are measured on the 0-1 scale, as the prototype did on ToTensor() output."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"VFE needs float or uint8 images, got dtype {images.dtype}: convert with .float()")
    return images


def _window_last(size: int, window: int, device: torch.device) -> torch.Tensor:
    """Indices of the last row/column of every window except the image's own last one."""
    if size - 1 <= window - 1:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.arange(window - 1, size - 1, window, device=device)


def _forward_difference(x: torch.Tensor, dim: int, window: int, method: VFEMethod) -> torch.Tensor:
    """``neighbour - x`` along ``dim`` (-1: right, -2: below) under the definition's border rule.

    The subtraction runs on the flattened tensor (one contiguous pass; the neighbour is ``step``
    values further on), then the few rows or columns where that crosses a border are fixed up.
    """
    size = x.shape[dim]
    step = 1 if dim == -1 else x.shape[-1]
    flat = x.reshape(-1)
    diff = torch.empty_like(flat)
    torch.sub(flat[step:], flat[:-step], out=diff[:-step])
    diff[-step:] = 0  # no neighbour past the end (uninitialised memory could hold NaN)
    diff = diff.view_as(x)
    if method == "reference":
        # The prototype pads every window with zeros: its last row/column is compared with 0, i.e.
        # there the difference is -x. A 0/1 mask over that dimension keeps both passes contiguous.
        inside = torch.ones(size, dtype=x.dtype, device=x.device)
        inside[_window_last(size, window, x.device)] = 0
        inside[-1] = 0
        shape = (size, 1) if dim == -2 else (size,)
        inside = inside.view(shape)
        diff.add_(x).mul_(inside).sub_(x)  # (neighbour * inside) - x
    else:
        diff.narrow(dim, size - 1, 1).zero_()
    return diff


def pixel_energy(images: torch.Tensor, window: int, method: VFEMethod = "reference") -> torch.Tensor:
    """Per-pixel gradient energy ``[B, C, H, W]`` whose window sums are the window energies of ``method``."""
    _check_method(method)
    x = _as_float(images)
    dx = _forward_difference(x, -1, window, method)
    dy = _forward_difference(x, -2, window, method)
    return dx.square_().addcmul_(dy, dy)


def window_sums(energy: torch.Tensor, window: int) -> torch.Tensor:
    """Sum ``[B, C, H, W]`` over non-overlapping ``window``-sized tiles (partial tiles at the edges)."""
    height, width = energy.shape[-2:]
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        energy = F.pad(energy, (0, pad_w, 0, pad_h))
    b, c, h, w = energy.shape
    return energy.view(b, c, h // window, window, w // window, window).sum(dim=(3, 5))


def _validate(images: torch.Tensor, window: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"images must have shape [B, C, H, W], got {images.dim()} dims {tuple(images.shape)}: "
            "add a batch dimension with images.unsqueeze(0)"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (pixels per window side), got {window!r}")


def vfe_map(images: torch.Tensor, window: int, method: VFEMethod = "reference") -> torch.Tensor:
    """Per-window VFE ``[B, ceil(H/s), ceil(W/s)]``: window energy averaged over channels.

    The mixer uses this map, computed with ``window = region_size``, as each region's local VFE.
    """
    _validate(images, window)
    return window_sums(pixel_energy(images, window, method), window).mean(dim=1)


def vfe(images: torch.Tensor, window: int, method: VFEMethod = "reference") -> torch.Tensor:
    """VFE of each image in ``[B, C, H, W]`` (float in any range, or uint8 read as 0-1): a tensor ``[B]``.

    See the module docstring for the two definitions. ``window`` is the window side ``s`` in pixels.
    """
    return vfe_map(images, window, method).mean(dim=(-2, -1))
