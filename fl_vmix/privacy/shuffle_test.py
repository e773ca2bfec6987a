"""VisualMixer and block shuffle as registry methods: keys are required, and the report comes with the images."""

from __future__ import annotations

import pytest
import torch

from fl_vmix.privacy import VisualMixer
from fl_vmix.privacy.methods import build_privacy_method
from fl_vmix.privacy.shuffle import BlockShuffleMethod, VisualMixerMethod

KEY = bytes(range(32))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    # Smooth images: the clear VFE is low, so a 3x target is reachable for most of them.
    base = torch.rand(6, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(base, size=16, mode="bilinear", align_corners=False), torch.arange(6) + 40


@pytest.mark.parametrize("name", ["visualmixer", "block_shuffle"])
def test_keyed_methods_refuse_to_run_without_a_key(name: str) -> None:
    with pytest.raises(ValueError, match=r"needs the client's secret key.*key file.*FL_VMIX_KEY_DIR.*node_key"):
        build_privacy_method(name)
    for bad, fix in (
        (0, "must be bytes .*got int"),
        ("secret", "must be bytes .*got str"),
        (b"short", "16 to 64 bytes.*got 5"),
    ):
        with pytest.raises(ValueError, match=fix):
            build_privacy_method(name, key=bad)


def test_protect_returns_the_mixers_own_result() -> None:
    images, ids = _batch()
    method = VisualMixerMethod(KEY, region_size=8, block_sizes=(4, 2, 1), target_ratio=3.0)
    protected = method.protect(images, ids, 0)
    # An independent mixer with the same key and settings is the oracle.
    expected = VisualMixer(KEY, region_size=8, block_sizes=(4, 2, 1), target_ratio=3.0).mix(images, ids, 0)
    assert torch.equal(protected.images, expected.images)
    assert protected.report is not None and protected.params is not None
    assert torch.equal(protected.report.achieved_vfe, expected.report.achieved_vfe)
    assert protected.num_unreached == int((~expected.report.reached).sum())
    assert torch.equal(method(images, ids, 0), expected.images)


def test_an_unreachable_target_is_counted() -> None:
    images, ids = _batch()
    # 4-px blocks in 8-px regions cannot reach 50x the clear VFE: every image stays below it.
    protected = VisualMixerMethod(KEY, region_size=8, block_sizes=(4,), target_ratio=50.0).protect(images, ids, 0)
    assert protected.num_unreached == len(images)


def test_block_shuffle_is_one_block_size_without_a_target() -> None:
    images, ids = _batch()
    method = BlockShuffleMethod(KEY, region_size=8, block_size=2, permute_channels=False)
    protected = method.protect(images, ids, 0)
    assert method.params == {"region_size": 8, "block_size": 2, "mode": "static", "permute_channels": False}
    assert protected.num_unreached == 0 and protected.report is not None and protected.report.target_vfe is None
    # Every region keeps its values (a permutation of them), and the image changes.
    regions = protected.images.unfold(2, 8, 8).unfold(3, 8, 8).flatten(-2).sort(-1).values
    assert torch.equal(regions, images.unfold(2, 8, 8).unfold(3, 8, 8).flatten(-2).sort(-1).values)
    assert not torch.equal(protected.images, images)


def _mixer_settings(mixer: VisualMixer) -> dict[str, object]:
    return {
        "region_size": mixer.region_size,
        "block_sizes": tuple(mixer.block_sizes),
        "target_ratio": mixer.target_ratio,
        "target_vfe": mixer.target_vfe,
        "vfe_method": mixer.vfe_method,
        "mode": mixer.mode,
        "permute_channels": mixer.permute_channels,
    }


def test_the_defaults_are_the_papers_setting_and_reported() -> None:
    # Region 8, blocks 2 then 1, 3x the clear VFE, static, corrected VFE: the setting the README's results use.
    method = VisualMixerMethod(KEY)
    assert method.params == {
        "region_size": 8,
        "block_sizes": [2, 1],
        "target_ratio": 3.0,
        "target_vfe": None,
        "vfe_method": "corrected",
        "mode": "static",
        "permute_channels": False,
    }
    assert _mixer_settings(method.mixer) == {**method.params, "block_sizes": (2, 1)}
    block = BlockShuffleMethod(KEY)
    assert block.params == {"region_size": 8, "block_size": 1, "mode": "static", "permute_channels": True}
    assert _mixer_settings(block.mixer) == {
        "region_size": 8,
        "block_sizes": (1,),
        "target_ratio": None,
        "target_vfe": None,
        "vfe_method": "corrected",
        "mode": "static",
        "permute_channels": True,
    }


def test_every_setting_reaches_the_mixer() -> None:
    settings = {
        "region_size": 4,
        "block_sizes": [4, 2],
        "target_ratio": None,
        "target_vfe": 0.25,
        "vfe_method": "reference",
        "mode": "dynamic",
        "permute_channels": True,
    }
    method = VisualMixerMethod(KEY, **settings)
    assert method.params == settings
    assert _mixer_settings(method.mixer) == {**settings, "block_sizes": (4, 2)}
    block = BlockShuffleMethod(KEY, region_size=4, block_size=2, mode="dynamic", permute_channels=False)
    assert _mixer_settings(block.mixer) == {
        "region_size": 4,
        "block_sizes": (2,),
        "target_ratio": None,
        "target_vfe": None,
        "vfe_method": "corrected",
        "mode": "dynamic",
        "permute_channels": False,
    }


def test_a_missing_key_names_the_method() -> None:
    for cls in (VisualMixerMethod, BlockShuffleMethod):
        with pytest.raises(ValueError, match=f"^{cls.__name__} needs the client's secret key"):
            cls()
