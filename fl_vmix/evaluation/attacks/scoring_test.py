import pytest
import torch

from fl_vmix.evaluation.attacks._testing import smooth_images
from fl_vmix.evaluation.attacks.jigsaw import random_block_permutation, shuffle_blocks
from fl_vmix.evaluation.attacks.scoring import match_to_references, score_reconstruction


@pytest.fixture
def pair():
    clear = smooth_images(3, 3, 16, seed=1)
    perm = random_block_permutation((3, 3, 2, 2), 4, torch.Generator().manual_seed(0))
    return clear, shuffle_blocks(clear, 8, 4, perm)


def test_recon_equal_to_clear_scores_perfect_against_clear_only(pair):
    clear, obfuscated = pair
    s = score_reconstruction(clear.clone(), clear, obfuscated)
    assert torch.allclose(s.ssim_to_clear, torch.ones(3), atol=1e-5)
    assert torch.isinf(s.psnr_to_clear).all()
    assert (s.ssim_to_obfuscated < 0.9).all() and torch.isfinite(s.psnr_to_obfuscated).all()


def test_recon_equal_to_obfuscated_scores_perfect_against_obfuscated_only(pair):
    clear, obfuscated = pair
    s = score_reconstruction(obfuscated.clone(), clear, obfuscated)
    assert torch.allclose(s.ssim_to_obfuscated, torch.ones(3), atol=1e-5)
    assert (s.ssim_to_clear < 0.9).all()
    summary = s.summary()
    assert summary["ssim_to_obfuscated"] > summary["ssim_to_clear"]


def test_without_obfuscated_reference_only_clear_fields():
    clear = smooth_images(2, 1, 12)
    s = score_reconstruction(clear * 0.9, clear)
    assert s.ssim_to_obfuscated is None and s.psnr_to_obfuscated is None
    assert set(s.summary()) == {"ssim_to_clear", "psnr_to_clear"}
    assert s.psnr_to_clear.shape == (2,)


def test_shape_mismatch_names_the_reference():
    clear = smooth_images(2, 1, 12)
    with pytest.raises(ValueError, match="obfuscated"):
        score_reconstruction(clear, clear, clear[:1])


def test_match_to_references_undoes_batch_order():
    clear = smooth_images(4, 3, 16, seed=3)
    shuffled = clear[torch.tensor([2, 0, 3, 1])]
    assert torch.equal(match_to_references(shuffled, clear), clear)
