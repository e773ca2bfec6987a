"""The operating-point comparison: cases whose answer is known."""

import pytest
import torch

from fl_vmix.evaluation.attacks.learned import LearnedAttackConfig
from fl_vmix.evaluation.operating_point import (
    PROTOTYPE,
    OperatingPointRow,
    ShuffleSetting,
    closest,
    measure,
    on_original_grid,
    resize,
    setting_factory,
)


def _images(n: int = 6, side: int = 16, seed: int = 0) -> torch.Tensor:
    # Smooth images (a blurred random field), so SSIM separates a shuffle from the clear image.
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, side // 4, side // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)


def test_one_pixel_regions_change_nothing_an_attacker_could_score():
    clear = _images()
    row = measure(ShuffleSetting("identity", 1, (1,)), clear, torch.arange(len(clear)))
    assert row.obfuscated_ssim == pytest.approx(1.0, abs=1e-6)
    assert row.thumbnail_ssim == pytest.approx(1.0, abs=1e-6)
    assert row.learned_ssim is None and row.region_original_px == 1.0


def test_larger_regions_hide_more():
    clear, ids = _images(side=32), torch.arange(6)
    small = measure(ShuffleSetting("r2", 2, (1,)), clear, ids)
    large = measure(ShuffleSetting("r8", 8, (1,)), clear, ids)
    assert large.obfuscated_ssim < small.obfuscated_ssim < 1.0


def test_the_prototype_shuffles_at_224_px_and_comes_back_to_the_original_grid():
    clear = _images(n=2, side=32)
    method = setting_factory(PROTOTYPE)(bytes(32))
    out = method(clear, torch.arange(2), 0)
    assert out.shape == clear.shape
    assert PROTOTYPE.region_on(32) == pytest.approx(16 * 32 / 224)
    # The shuffle moves values inside 16-px regions of the 224-px image: each region's mean survives, so the
    # 224-px region means, averaged back to 32 px, equal those of the clear image upsampled and shrunk.
    big = resize(clear, 224)
    shuffled = setting_factory(ShuffleSetting("big", 16, (2,)))(bytes(32))(big, torch.arange(2), 0)
    means = torch.nn.functional.avg_pool2d
    assert torch.allclose(means(shuffled, 16), means(big, 16), atol=1e-5)
    assert not torch.allclose(shuffled, big)


def test_a_native_setting_is_left_at_its_size():
    method = setting_factory(ShuffleSetting("native", 4, (1,)))(bytes(32))
    clear = _images(n=2, side=16)
    assert on_original_grid(ShuffleSetting("native", 4, (1,)), method) is method
    assert method(clear, torch.arange(2), 0).shape == clear.shape


def test_resize_keeps_a_constant_image_constant_both_ways():
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(resize(resize(flat, 224), 32), flat, atol=1e-6)
    assert resize(flat, 32) is flat


def test_closest_uses_the_scores_both_rows_have():
    ref = OperatingPointRow("ref", 2.3, 0.8, 0.7, None, None, None)
    near = OperatingPointRow("near", 2.0, 0.75, 0.72, 0.9, 10, 1.0)
    far = OperatingPointRow("far", 4.0, 0.4, 0.5, 0.79, 10, 1.0)
    assert closest(ref, [far, near]) is near
    with pytest.raises(ValueError, match="at least one"):
        closest(ref, [])


def test_the_learned_attack_needs_public_images():
    clear = _images()
    with pytest.raises(ValueError, match="public_images"):
        measure(ShuffleSetting("r2", 2, (1,)), clear, torch.arange(6), attack=LearnedAttackConfig(epochs=1))


def test_a_short_learned_attack_runs_and_reports_its_steps():
    clear, public = _images(n=4, side=16), _images(n=80, side=16, seed=1)
    attack = LearnedAttackConfig(epochs=1, batch_size=16, widths=(8, 16), chunk_size=40, validation_images=0)
    row = measure(ShuffleSetting("r4", 4, (1,)), clear, torch.arange(4), public_images=public, attack=attack)
    # two chunks of 40 public images, three batches of at most 16 each
    assert row.learned_steps == 6 and 0 < row.learned_ssim <= 1
