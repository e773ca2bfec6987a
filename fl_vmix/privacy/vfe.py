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


def _window_boundary_masks(height: int, width: int, window: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """1.0 where a pixel's right (resp. lower) neighbour lies inside the same window, else 0.0."""
    cols = torch.arange(width, device=device)
    rows = torch.arange(height, device=device)
    right_inside = ((cols + 1) % window != 0) & (cols + 1 < width)
    below_inside = ((rows + 1) % window != 0) & (rows + 1 < height)
    return right_inside.float().view(1, 1, 1, width), below_inside.float().view(1, 1, height, 1)


def pixel_energy(images: torch.Tensor, window: int, method: VFEMethod = "reference") -> torch.Tensor:
    """Per-pixel gradient energy ``[B, C, H, W]`` whose window sums are the window energies of ``method``."""
    _check_method(method)
    x = _as_float(images)
    height, width = x.shape[-2:]
    # Forward neighbours with a zero beyond the image: exactly the prototype's padding at the border.
    right = F.pad(x[..., :, 1:], (0, 1))
    below = F.pad(x[..., 1:, :], (0, 0, 0, 1))
    if method == "reference":
        right_mask, below_mask = _window_boundary_masks(height, width, window, x.device)
        # Inside a window the neighbour is real; on a window's last column/row it is the zero pad.
        dx = right * right_mask - x
        dy = below * below_mask - x
    else:
        # Real neighbours everywhere; the image's own last column/row has no forward difference.
        dx = right - x
        dy = below - x
        dx[..., :, -1] = 0
        dy[..., -1, :] = 0
    return dx.square_().add_(dy.square_())


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
