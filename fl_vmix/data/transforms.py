"""What a client does to its clear images before protecting them: resize (``dataset.image_size``) and augment.

Both work on whole uint8 batches ``[N, C, H, W]`` with torch (no loop over images) and return uint8, so a
client's data keeps the form every privacy method expects. Order matters for privacy: a client augments and
resizes its *clear* images and then protects the result, so the model only ever sees protected images of the
size and augmentation it trains on (the authors' prototype also resized before shuffling).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "crop_flip")
CROP_PADDING = 4  # pixels of zero padding around a 32-px CIFAR image before the random crop (He et al. 2016)
RESIZE_CHUNK = 512  # images resized at once: bounds the float copy at 224 px to ~300 MB


def resize_images(images: np.ndarray, side: int | None) -> np.ndarray:
    """Bilinear resize of uint8 ``[N, C, H, W]`` to ``side`` x ``side`` (antialiased when shrinking); ``None``
    or the images' own size returns them unchanged. Values are rounded back to uint8."""
    if side is None or (images.shape[-2] == side and images.shape[-1] == side) or len(images) == 0:
        return images
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"image size must be a positive int (pixels), got {side!r}: set dataset.image_size=224")
    shrinking = side < min(images.shape[-2:])
    out = np.empty((*images.shape[:2], side, side), dtype=np.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):  # chunks of images, not single images
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + RESIZE_CHUNK])).float()
        big = F.interpolate(chunk, size=(side, side), mode="bilinear", align_corners=False, antialias=shrinking)
        out[start : start + RESIZE_CHUNK] = big.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def crop_flip(images: np.ndarray, seed: int, padding: int = CROP_PADDING) -> np.ndarray:
    """The standard CIFAR augmentation: zero-pad by ``padding``, take a random crop of the original size, flip
    horizontally with probability 1/2. One draw per image from a generator seeded by ``seed`` (a public seed:
    augmentation protects nothing), so a round's augmentation is reproducible and a resumed run repeats it."""
    if len(images) == 0:
        return images
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images))
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = dy + torch.arange(h)  # [n, h]
    cols = dx + torch.arange(w)  # [n, w]
    cols = torch.where(flip, cols.flip(1), cols)
    out = padded[
        torch.arange(n).view(n, 1, 1, 1),
        torch.arange(c).view(1, c, 1, 1),
        rows.view(n, 1, h, 1),
        cols.view(n, 1, 1, w),
    ]
    return out.numpy()


def augment(images: np.ndarray, name: str, seed: int) -> np.ndarray:
    """``images`` augmented by the named augmentation (``"none"`` returns them as they are)."""
    if name == "none":
        return images
    if name == "crop_flip":
        return crop_flip(images, seed)
    raise ValueError(f"unknown augmentation {name!r}: set dataset.augment to one of {', '.join(AUGMENTATIONS)}")
