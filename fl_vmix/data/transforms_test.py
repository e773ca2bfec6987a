"""Resize and augmentation of clear client images: shapes, values against independent oracles, reproducibility."""

import numpy as np
import pytest
import torch
from PIL import Image

from fl_vmix.data.transforms import augment, crop_flip, resize_images


def _images(n: int = 5, c: int = 3, side: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, side, side), dtype=np.uint8)


def test_resize_makes_the_asked_size_and_keeps_uint8():
    out = resize_images(_images(side=32), 224)
    assert out.shape == (5, 3, 224, 224) and out.dtype == np.uint8


def test_resize_to_the_same_size_or_none_is_the_identity():
    images = _images()
    assert resize_images(images, None) is images
    assert resize_images(images, 8) is images


def test_upsampling_matches_pil_bilinear_on_a_smooth_image():
    # A linear ramp: bilinear interpolation reproduces it exactly inside the image (PIL as the second opinion).
    ramp = np.tile(np.linspace(0, 248, 32).astype(np.uint8), (32, 1))
    images = np.stack([ramp] * 3)[None]
    ours = resize_images(images, 64)[0, 0].astype(int)
    pil = np.asarray(Image.fromarray(ramp).resize((64, 64), Image.BILINEAR)).astype(int)
    assert np.abs(ours[:, 2:-2] - pil[:, 2:-2]).max() <= 1


def test_resizing_works_in_chunks(monkeypatch):
    import fl_vmix.data.transforms as transforms

    images = _images(n=7, side=8)
    whole = resize_images(images, 16)
    monkeypatch.setattr(transforms, "RESIZE_CHUNK", 3)
    assert np.array_equal(resize_images(images, 16), whole)


def test_a_bad_size_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="dataset.image_size"):
        resize_images(_images(), 0)


def test_crop_flip_equals_a_per_image_reference():
    images = _images(n=6, side=8)
    out = crop_flip(images, seed=3, padding=2)
    # The same draws, replayed one image at a time with plain numpy.
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (6, 1), generator=g)[:, 0]
    dx = torch.randint(0, 5, (6, 1), generator=g)[:, 0]
    flip = (torch.rand(6, 1, generator=g) < 0.5)[:, 0]
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(6):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert np.array_equal(out[i], crop[:, :, ::-1] if flip[i] else crop)


def test_crop_flip_is_reproducible_and_changes_with_the_seed():
    images = _images(n=32, side=8)
    assert np.array_equal(crop_flip(images, 1), crop_flip(images, 1))
    assert not np.array_equal(crop_flip(images, 1), crop_flip(images, 2))
    assert crop_flip(images, 1).shape == images.shape


def test_augment_by_name():
    images = _images()
    assert augment(images, "none", 0) is images
    assert np.array_equal(augment(images, "crop_flip", 5), crop_flip(images, 5))
    with pytest.raises(ValueError, match="dataset.augment"):
        augment(images, "mixup", 0)
