"""Keyed randomness bound to the data and to every setting, and bad input refused before anything changes."""

import dataclasses

import numpy as np
import pytest
import torch

from fl_vmix.privacy import MixParams, VisualMixer
from fl_vmix.privacy.methods import build_privacy_method

KEY = bytes(range(32))


def _images(batch: int = 2, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- the dataset


def test_one_id_in_two_datasets_gets_unrelated_permutations():
    # Same id and shape in two datasets (or splits): a known (clear, mixed) pair of one must not invert the other.
    mixer = VisualMixer(KEY, target_ratio=None, block_sizes=(1,))
    ramp = torch.arange(3 * 16 * 16, dtype=torch.float64).view(1, 3, 16, 16) / 1000
    cifar = mixer(ramp, [5], dataset="cifar10/train/aa")
    svhn = mixer(ramp, [5], dataset="svhn/train/bb")
    test_split = mixer(ramp, [5], dataset="cifar10/test/aa")
    assert not torch.equal(cifar, svhn) and not torch.equal(cifar, test_split)
    assert float((cifar == svhn).double().mean()) < 0.05  # unrelated: a few fixed points by chance
    # the key holder inverts with the dataset recorded in the parameters
    result = mixer.mix(ramp, [5], dataset="svhn/train/bb")
    assert result.params.dataset == "svhn/train/bb"
    assert torch.equal(mixer.invert(result.images, [5], params=result.params), ramp)
    assert torch.equal(mixer.invert(svhn, [5], dataset="svhn/train/bb"), ramp)
    with pytest.raises(ValueError, match="planned for dataset"):
        mixer.invert(result.images, [5], params=result.params, dataset="cifar10/train/aa")


def test_the_methods_bind_the_dataset():
    x, ids = _images(), torch.tensor([0, 1])
    for name, params in (("visualmixer", {}), ("pixel_dp_laplace", {"epsilon": 4.0})):
        method = build_privacy_method(name, key=KEY, **params)
        assert not torch.equal(method(x, ids, 0, "a/train/1"), method(x, ids, 0, "b/train/1"))
        assert torch.equal(method(x, ids, 0, "a/train/1"), method(x.clone(), ids, 0, "a/train/1"))
    with pytest.raises(ValueError, match="non-empty printable name"):
        build_privacy_method("mosaic")(x, ids, 0, "")


# ---------------------------------------------------------------------------------------- the settings

BASE = {
    "region_size": 8,
    "block_sizes": (2, 1),
    "target_vfe": None,
    "target_ratio": 3.0,
    "vfe_method": "corrected",
    "mode": "static",
    "permute_channels": False,
    "attention": None,
    "max_refinements": 8,
    "attention_temperature": 1.0,
}
CHANGES = {
    "region_size": 4,
    "block_sizes": (4, 1),
    "target_ratio": 3.5,
    "vfe_method": "reference",
    "mode": "dynamic",
    "permute_channels": True,
    "attention": torch.nn.Conv2d(3, 1, 8, stride=8),
    "max_refinements": 2,
    "attention_temperature": 0.5,
}


@pytest.mark.parametrize("field", sorted(CHANGES) + ["target_vfe"])
def test_two_settings_never_share_key_derived_numbers(field):
    # Every constructor setting (each field of VisualMixer but the key) is part of the subkey's context: two
    # mixers that differ in one of them draw unrelated words for the same image shape, id and epoch.
    other = {**BASE, field: CHANGES.get(field)}
    if field == "target_vfe":
        other = {**BASE, "target_vfe": 0.05, "target_ratio": None}
    a, b = VisualMixer(KEY, **BASE), VisualMixer(KEY, **other)
    assert a.context(32, 32, 3) != b.context(32, 32, 3)
    words = [m._layout(32, 32, 3, torch.device("cpu")).prf.words(np.arange(4), 0, 64) for m in (a, b)]
    assert not np.isin(words[0], words[1]).any()


def test_equal_settings_spelled_differently_share_the_context():
    assert VisualMixer(KEY, target_ratio=3).context(8, 8, 1) == VisualMixer(KEY, target_ratio=3.0).context(8, 8, 1)


# ---------------------------------------------------------------------------------------- bad input


def _refused(call, message: str, mixer: VisualMixer | None = None) -> None:
    before = None if mixer is None else mixer.last_params
    with pytest.raises(ValueError, match=message):
        call()
    if mixer is not None:
        assert mixer.last_params is before  # nothing recorded from the refused call


def test_duplicate_ids_in_one_batch_are_refused():
    mixer = VisualMixer(KEY)
    images = _images()
    kept = images.clone()
    _refused(lambda: mixer.mix(images, [4, 4]), "repeat within one batch", mixer)
    assert torch.equal(images, kept)
    _refused(
        lambda: build_privacy_method("pixel_dp_laplace", epsilon=1.0, key=KEY)(images, torch.tensor([4, 4])), "repeat"
    )


def test_uint64_id_that_aliases_minus_one_is_refused():
    mixer = VisualMixer(KEY, target_ratio=None)
    _refused(lambda: mixer.mix(_images(1), np.array([2**64 - 1], dtype=np.uint64)), r"\[0, 2\*\*63\)", mixer)
    _refused(lambda: mixer.mix(_images(1), [-1]), r"\[0, 2\*\*63\)", mixer)
    _refused(lambda: mixer.mix(_images(1), torch.tensor([-1])), r"\[0, 2\*\*63\)", mixer)
    assert mixer.mix(_images(1), np.array([2**63 - 1], dtype=np.uint64)).params.sample_ids.tolist() == [2**63 - 1]


def test_ids_of_2_to_the_64_or_more_are_a_value_error():
    _refused(lambda: VisualMixer(KEY).mix(_images(1), [2**70]), r"\[0, 2\*\*63\)")
    _refused(lambda: VisualMixer(KEY).mix(_images(1), 2**64), r"\[0, 2\*\*63\)")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_images_without_a_target_are_refused(value):
    images = _images(1)
    images[0, 0, 0, 0] = value
    mixer = VisualMixer(KEY, target_ratio=None)
    _refused(lambda: mixer.mix(images, [0]), "NaN or inf", mixer)


def test_static_mode_refuses_a_non_integer_epoch():
    mixer = VisualMixer(KEY, target_ratio=None)
    for epoch in ("x", 1.5, -1, True):
        _refused(lambda epoch=epoch: mixer.mix(_images(1), [0], epoch=epoch), "epoch must be an int", mixer)
    assert torch.equal(mixer(_images(1), [0], epoch=3), mixer(_images(1), [0]))  # static: any valid epoch


def test_permute_channels_must_be_a_bool():
    _refused(lambda: VisualMixer(KEY, permute_channels="no"), "permute_channels must be True or False")


def test_negative_max_refinements_is_refused():
    _refused(lambda: VisualMixer(KEY, max_refinements=-1), "max_refinements must be an int >= 0")


def test_zero_attention_temperature_is_refused():
    _refused(lambda: VisualMixer(KEY, attention_temperature=0), "attention_temperature must be a positive")


def test_out_of_range_levels_in_invert_are_a_value_error():
    mixer = VisualMixer(KEY)
    result = mixer.mix(_images(1), [0])
    bad = dataclasses.replace(result.params, levels=torch.full_like(result.params.levels, 2))
    kept = result.images.clone()
    _refused(lambda: mixer.invert(result.images, [0], params=bad), r"levels must lie in \[0, 2\)")
    _refused(lambda: mixer.replay(result.images, dataclasses.replace(bad, levels=bad.levels - 3)), "levels must lie")
    assert torch.equal(result.images, kept)
    assert torch.equal(
        mixer.invert(result.images, [0], params=MixParams(*dataclasses.astuple(result.params)[:3])), _images(1)
    )
