"""Keyed per-sample noise: 53-bit uniforms from word pairs, and the inverse CDFs, against closed forms and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from fl_vmix.privacy.keyed import KeyedPRF
from fl_vmix.privacy.noise import per_sample_noise, uniforms

KEY = bytes(range(32))


def test_uniforms_take_27_and_26_bits_of_a_word_pair_and_stay_inside_the_open_interval():
    top = 2**32 - 1
    words = np.array([[0, 0, top, top, 1 << 5, 1 << 6, 31, 63]], dtype=np.uint32)
    got = uniforms(words)
    assert got.dtype == np.float64 and got.shape == (1, 4)
    expected = [
        0.5 * 2.0**-53,  # the smallest value: half a step above 0
        1 - 2.0**-54,  # the largest: half a step below 1
        (2.0**26 + 1 + 0.5) * 2.0**-53,  # the lowest kept bit of each word
        0.5 * 2.0**-53,  # the dropped low bits (5 and 6 of them) do not count
    ]
    assert got[0].tolist() == expected


def own_uniforms(words: np.ndarray) -> np.ndarray:
    """53-bit uniforms written out with Python integers: (hi >> 5) * 2^26 + (lo >> 6), centred in its step."""
    pairs = words.reshape(-1, 2).tolist()
    return np.array([(((hi >> 5) << 26) + (lo >> 6) + 0.5) / 2.0**53 for hi, lo in pairs])


@pytest.mark.parametrize(("kind", "ppf"), [("gaussian", stats.norm.ppf), ("laplace", stats.laplace.ppf)])
def test_noise_is_the_inverse_cdf_of_the_keyed_uniforms(kind, ppf):
    prf = KeyedPRF(KEY, b"noise-oracle")
    ids = torch.tensor([3, 2**63 - 1, 2**40])
    noise = per_sample_noise(ids, (2, 3, 5), prf=prf, epoch=4, kind=kind, dtype=torch.float64)
    assert noise.shape == (3, 2, 3, 5) and noise.dtype == torch.float64
    words = prf.words(ids, 4, 2 * 30)  # two words per value, row-major over (2, 3, 5)
    for row, sample_words in zip(noise, words, strict=True):
        expected = ppf(own_uniforms(sample_words))
        np.testing.assert_allclose(row.flatten().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_noise_follows_the_sample_and_epoch_not_the_batch():
    prf = KeyedPRF(KEY, b"noise-batch")
    both = per_sample_noise(torch.tensor([8, 9]), (4, 4), prf=prf, epoch=1)
    assert torch.equal(both[1:], per_sample_noise(torch.tensor([9]), (4, 4), prf=prf, epoch=1))
    assert not torch.equal(both, per_sample_noise(torch.tensor([8, 9]), (4, 4), prf=prf, epoch=2))
    assert not torch.equal(both, per_sample_noise(torch.tensor([8, 9]), (4, 4), prf=prf))  # epoch 0 by default
    assert both.dtype == torch.float32 and both.device == torch.device("cpu")


def test_dtype_device_and_kind_arguments():
    prf = KeyedPRF(KEY, b"noise-args")
    ids = torch.tensor([1])
    wide = per_sample_noise(ids, (3,), prf=prf, kind="laplace", dtype=torch.float64)
    narrow = per_sample_noise(ids, (3,), prf=prf, kind="laplace", dtype=torch.float16, device="cpu")
    assert narrow.dtype == torch.float16 and torch.equal(narrow, wide.to(torch.float16))
    with pytest.raises(ValueError, match="unknown noise kind 'uniform'"):
        per_sample_noise(ids, (3,), prf=prf, kind="uniform")  # type: ignore[arg-type]
